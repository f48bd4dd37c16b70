"""Scoring throughput against the bare forward passes it cannot avoid.

Scoring n views of N pairs under f and g needs 2·N·n image encodings and the
text encodings of the captions; the bare figure times exactly those encoder
calls on ready-made tensors (no augmentation, no caption lookup, no bookkeeping).
The ratio shows what the scorer adds on top of the model's own cost.

    .venv/bin/python bench/score_throughput.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipmem.scoring.attribution import attribute  # noqa: E402
from clipmem.scoring.models import Vocabulary, context_length_of, create_model  # noqa: E402
from clipmem.scoring.pipeline import load_corpus  # noqa: E402
from clipmem.scoring.rundir import RunDir  # noqa: E402
from clipmem.scoring.columns import SCORED_SPLITS  # noqa: E402
from clipmem.scoring.score import score_run  # noqa: E402
from clipmem.scoring.schemes import PUBLISHED_MODELS  # noqa: E402
from clipmem.scoring.train import load_model_weights  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_throughput.json")
    args = parser.parse_args()
    run = RunDir(args.run_dir)
    cfg = run.load_config()
    corpus, vocab, model_cfg = load_corpus(run, cfg, Vocabulary.from_json(json.loads(run.vocab.read_text())))
    models = {}
    for name in PUBLISHED_MODELS:
        models[name] = create_model(model_cfg, 0).eval()
        load_model_weights(models[name], run.model_checkpoint(name))
    device = torch.device("cpu")
    n_pairs = sum(len(corpus.rows(s)) for s in SCORED_SPLITS)
    n_images = n_pairs * cfg.score.views
    bs = cfg.score.batch_size

    def time_scoring() -> float:
        t = time.perf_counter()
        score_run(models, corpus, cfg.score, cfg.train, device)
        return time.perf_counter() - t

    images = torch.randn(n_images, 3, corpus.pixels.shape[2], corpus.pixels.shape[3])
    texts = corpus.tokens

    def time_bare() -> float:
        t = time.perf_counter()
        for model in models.values():
            for s in range(0, n_images, bs):
                model.encode_image(images[s:s + bs], normalize=True)
            for s in range(0, len(texts), bs):
                model.encode_text(texts[s:s + bs], normalize=True)
        return time.perf_counter() - t

    result = score_run(models, corpus, cfg.score, cfg.train, device)

    def time_attribution(layers: bool) -> float:
        t = time.perf_counter()
        attribute(models, corpus, result, cfg.score, cfg.train, context_length_of(model_cfg), vocab, device,
                  layers=layers)
        return time.perf_counter() - t

    time_scoring(), time_bare(), time_attribution(True)  # warm-up
    scoring = min(time_scoring() for _ in range(args.repeats))
    bare = min(time_bare() for _ in range(args.repeats))
    towers = min(time_attribution(False) for _ in range(args.repeats))
    layers = min(time_attribution(True) for _ in range(args.repeats))
    results = {
        "pairs": n_pairs, "views": cfg.score.views, "image_encodings": 2 * n_images,
        "text_encodings": 2 * len(texts),
        "scoring_seconds": scoring, "scoring_pairs_per_s": n_pairs / scoring,
        "bare_seconds": bare, "bare_pairs_per_s": n_pairs / bare, "ratio_scoring_to_bare": bare / scoring,
        "threads": torch.get_num_threads(),
        "tower_scores_seconds": towers, "tower_scores_ms_per_pair": 1000 * towers / n_pairs,
        "towers_and_layers_seconds": layers, "towers_and_layers_ms_per_pair": 1000 * layers / n_pairs,
        "clipmem_ms_per_pair": 1000 * scoring / n_pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("| step | seconds | pairs/s |\n|---|---|---|")
    print(f"| bare encoder forward passes | {bare:.2f} | {n_pairs / bare:.0f} |")
    print(f"| full scoring (views, alignments, contrastive, baselines, embeddings) | {scoring:.2f} | "
          f"{n_pairs / scoring:.0f} |")
    print(f"ratio scoring/bare throughput: {bare / scoring:.2f}")
    print("\n| extra per pair | ms | relative to CLIPMem scoring |\n|---|---|---|")
    print(f"| CLIPMem scoring | {1000 * scoring / n_pairs:.2f} | 1.00 |")
    print(f"| + tower scores and swap check | {1000 * towers / n_pairs:.2f} | {towers / scoring:.2f} |")
    print(f"| + tower scores, swap check and layer curves | {1000 * layers / n_pairs:.2f} | {layers / scoring:.2f} |")


if __name__ == "__main__":
    main()
