"""Scoring throughput against the bare forward passes it cannot avoid, stage by stage.

The scorer of a finished run (what `clipmem score` computes per pair) runs in four stages:

  clipmem  score_run: the caption table, n augmented views of the N scored pairs and the clean
           images of the scored and S_E pairs, under every model
  null     score_null: n views of the E pairs of S_E under every model (their captions are table entries)
  towers   draw_tower_views + tower_similarities with LayerMem hooks: two augmented views per
           (pair, view) and the distinct texts among the two text views, under every model
  swap     swap_check: the clean S_S images under f and g (their first captions and the view captions
           are table entries)

"Needed" encodings are these passes, each input encoded once per model: an encoding another stage
already made (the caption table) is not counted again, so a stage that repeats one shows the
repeat as overhead. The bare figure times exactly the needed encoder calls, batch by batch with
the scorer's batch size, on ready-made tensors (images already augmented, tokens already gathered):
no augmentation, no caption lookup, no hooks, no bookkeeping. ratio = bare seconds / scorer seconds
(1.0: the scorer adds nothing to the model's own cost), per stage and in total.

Bare and scorer repeats of each stage alternate, so load from other processes on a shared machine
falls on both alike; the table shows the fastest repeat of each, and the total ratio is also given
as the median of the per-repeat ratios.

The process runs with the malloc settings the `clipmem` command applies (scoring.runtime.keep_freed_memory),
for the bare passes and the scorer alike; `--malloc-defaults` measures both under glibc's defaults.

    .venv/bin/python bench/score_throughput.py RUN_DIR [--repeats 3] [--malloc-defaults]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipmem.scoring.attribution import draw_tower_views, swap_check, tower_similarities_each  # noqa: E402
from clipmem.scoring.columns import SCORED_SPLITS  # noqa: E402
from clipmem.scoring.models import Vocabulary, context_length_of, create_model  # noqa: E402
from clipmem.scoring.pipeline import load_corpus  # noqa: E402
from clipmem.scoring.rundir import RunDir  # noqa: E402
from clipmem.scoring.runtime import keep_freed_memory  # noqa: E402
from clipmem.scoring.schemes import PUBLISHED_MODELS  # noqa: E402
from clipmem.scoring.score import score_null, score_run, scored_rows, view_draws  # noqa: E402
from clipmem.scoring.train import load_model_weights  # noqa: E402
from clipmem.scoring.transform import augment, normalize  # noqa: E402

STAGES = ("clipmem", "null", "towers", "swap")


def needed_encodings(corpus, cfg, context_length: int, vocab) -> dict[str, dict]:
    """Per stage, the encoder inputs one model needs: {"images": [(kind, count)], "texts": token tensor}."""
    n = cfg.score.views
    scored = scored_rows(corpus)
    extra = corpus.rows("extra")
    views = draw_tower_views(corpus, scored, cfg.score, cfg.train, context_length, vocab)
    tower_texts = torch.unique(torch.cat(views.text_tokens), dim=0)
    empty = corpus.tokens[:0]
    return {
        "clipmem": {"images": [("views", len(scored) * n), ("clean", len(scored) + len(extra))],
                    "texts": corpus.tokens},
        "null": {"images": [("views", len(extra) * n)], "texts": empty},
        "towers": {"images": [("views", len(scored) * n), ("views", len(scored) * n)], "texts": tower_texts},
        "swap": {"images": [("clean", len(corpus.rows("shared")))], "texts": empty},
    }


def bare_encoder(models: dict, corpus, cfg, stage: dict):
    """The stage's needed encoder calls on ready-made inputs: returns a function that runs them once."""
    bs = cfg.score.batch_size
    pixels = corpus.pixels[:bs]
    max_shift = cfg.train.augment.max_shift if cfg.train.augment.enabled else 0
    # one ready batch per kind, in the layout the scorer hands the towers; its content does not change the cost
    params, _ = view_draws(corpus, scored_rows(corpus), cfg.score, cfg.train)
    ready = {"views": augment(pixels, params.select(slice(0, len(pixels))), max_shift),
             "clean": normalize(pixels)}
    texts = stage["texts"]

    def run() -> None:
        for model in models.values():
            for kind, count in stage["images"]:
                for s in range(0, count, bs):
                    model.encode_image(ready[kind][: min(bs, count - s)], normalize=True)
            for s in range(0, len(texts), bs):
                model.encode_text(texts[s:s + bs], normalize=True)
    return run


def scorer_stages(models: dict, corpus, cfg, context_length: int, vocab, device) -> dict:
    """Each stage of the scorer as a function that runs it once (the towers and swap reuse one score_run)."""
    result = score_run(models, corpus, cfg.score, cfg.train, device)

    def towers() -> None:
        views = draw_tower_views(corpus, scored_rows(corpus), cfg.score, cfg.train, context_length, vocab)
        tower_similarities_each(models, corpus, result.scored, views, cfg.score, device, layers=True)

    return {
        "clipmem": lambda: score_run(models, corpus, cfg.score, cfg.train, device),
        "null": lambda: score_null(models, corpus, cfg.score, cfg.train, device, tables=result.tables),
        "towers": towers,
        "swap": lambda: swap_check(models, corpus, result, cfg.score, device),
    }


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@torch.inference_mode()
def measure(models, corpus, cfg, context_length, vocab, repeats: int) -> dict:
    device = torch.device("cpu")
    needed = needed_encodings(corpus, cfg, context_length, vocab)
    bare = {s: bare_encoder(models, corpus, cfg, needed[s]) for s in STAGES}
    scorer = scorer_stages(models, corpus, cfg, context_length, vocab, device)
    for s in STAGES:  # warm-up
        bare[s](), scorer[s]()
    times = {s: {"bare": [], "scorer": []} for s in STAGES}
    for _ in range(repeats):
        for s in STAGES:
            times[s]["bare"].append(seconds(bare[s]))
            times[s]["scorer"].append(seconds(scorer[s]))
    stages = {}
    for s in STAGES:
        b, c = min(times[s]["bare"]), min(times[s]["scorer"])
        stages[s] = {
            "image_encodings": len(models) * sum(count for _, count in needed[s]["images"]),
            "text_encodings": len(models) * len(needed[s]["texts"]),
            "bare_seconds": b, "scorer_seconds": c, "ratio": b / c,
            "bare_repeats": times[s]["bare"], "scorer_repeats": times[s]["scorer"],
        }
    per_repeat = [sum(times[s]["bare"][r] for s in STAGES) / sum(times[s]["scorer"][r] for s in STAGES)
                  for r in range(repeats)]
    bare_total = sum(v["bare_seconds"] for v in stages.values())
    scorer_total = sum(v["scorer_seconds"] for v in stages.values())
    return {"stages": stages, "bare_seconds": bare_total, "scorer_seconds": scorer_total,
            "ratio": bare_total / scorer_total, "ratio_median_of_repeats": statistics.median(per_repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_throughput.json")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="keep glibc's malloc defaults instead of the settings the clipmem command applies")
    args = parser.parse_args()
    malloc_tuned = not args.malloc_defaults and keep_freed_memory()
    run = RunDir(args.run_dir)
    cfg = run.load_config()
    corpus, vocab, model_cfg = load_corpus(run, cfg, Vocabulary.from_json(json.loads(run.vocab.read_text())))
    models = {}
    for name in PUBLISHED_MODELS:
        models[name] = create_model(model_cfg, 0).eval()
        load_model_weights(models[name], run.model_checkpoint(name))
    n_pairs = sum(len(corpus.rows(s)) for s in SCORED_SPLITS)
    load_start = os.getloadavg()[0]
    results = measure(models, corpus, cfg, context_length_of(model_cfg), vocab, args.repeats)
    results.update({"pairs": n_pairs, "null_pairs": len(corpus.rows("extra")), "views": cfg.score.views,
                    "batch_size": cfg.score.batch_size, "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "load_average_start": round(load_start, 2),
                    "load_average_end": round(os.getloadavg()[0], 2), "repeats": args.repeats,
                    "malloc_tuned": malloc_tuned})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{n_pairs} scored pairs, {results['null_pairs']} null pairs, {cfg.score.views} views, "
          f"{len(models)} models; {results['threads']} threads; load average {results['load_average_start']} "
          f"-> {results['load_average_end']}; fastest of {args.repeats}; "
          f"malloc {'as the clipmem command sets it' if malloc_tuned else 'glibc defaults'}")
    print("\n| stage | image encodings | text encodings | bare s | scorer s | ratio bare/scorer |\n|---|---|---|---|---|---|")
    for s, v in results["stages"].items():
        print(f"| {s} | {v['image_encodings']:,} | {v['text_encodings']:,} | {v['bare_seconds']:.2f} | "
              f"{v['scorer_seconds']:.2f} | {v['ratio']:.2f} |")
    print(f"| total | | | {results['bare_seconds']:.2f} | {results['scorer_seconds']:.2f} | {results['ratio']:.2f} "
          f"(median of repeats {results['ratio_median_of_repeats']:.2f}) |")
    print(f"\nscorer: {n_pairs / results['scorer_seconds']:.0f} scored pairs/s with null, towers, swap and LayerMem")


if __name__ == "__main__":
    main()
