"""The pipeline steps behind the CLI: split, train, score (with evaluation), run.

Each step reads the run directory's config.json, does its work, and writes its
outputs atomically; `score` writes the COMPLETE marker last.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from scoring.attribution import attribute
from scoring.config import RunConfig
from scoring.data import PairDataset, load_dataset
from scoring.data.base import Problems, verify_images
from scoring.data.inject import check_rates, inject_faults
from scoring.data.synthetic import write as write_synthetic
from scoring.data.tensors import TensorCorpus, build_corpus
from scoring.errors import ClipmemError
from scoring.evaluate import linear_probe, probe_labels, retrieval, zero_shot, zero_shot_prompts
from scoring.models import (Vocabulary, context_length_of, create_model, image_size_of, resolve_config,
                            with_vocabulary)
from scoring.rundir import RunDir, atomic_path, write_json
from scoring.score import embeddings_arrays, encode_images, score_run
from scoring.splits import SplitPlan, plan_splits
from scoring.train import MODELS, load_model_weights, pick_device, save_model, train_pair


def read_source(cfg: RunConfig, run: RunDir, problems: Problems | None = None) -> PairDataset:
    """The run's source as read; the built-in set is generated into RUN_DIR/data on first use."""
    path = cfg.data.path
    if cfg.data.kind == "synthetic" and path is None:
        if not (run.data / "metadata.jsonl").is_file():
            write_synthetic(cfg.data.synth, run.data)
        path = run.data
    return load_dataset(cfg.data.kind, path, cfg.data.options, problems or Problems(cfg.data.on_error))


def open_planned(cfg: RunConfig, run: RunDir) -> tuple[PairDataset, SplitPlan]:
    """The dataset as the run sees it (injected faults applied) and its split plan."""
    dataset = read_source(cfg, run)
    plan = SplitPlan.load(run.split)
    return inject_faults(dataset, plan, cfg.data.inject, cfg.data.inject_seed), plan


def split_step(run: RunDir, cfg: RunConfig) -> dict[str, int]:
    """Read and check the source, plan the split, inject faults; writes split.json and samples.parquet."""
    check_rates(cfg.data.inject)
    problems = Problems(cfg.data.on_error)
    dataset = verify_images(read_source(cfg, run, problems), problems)
    plan = plan_splits(dataset.ids, dataset.truth, cfg.split.sizes, cfg.split.seed)
    dataset = inject_faults(dataset, plan, cfg.data.inject, cfg.data.inject_seed)
    with open(atomic_path(run.skipped), "w") as fh:
        for item in problems.skipped:
            fh.write(json.dumps(item) + "\n")
    atomic_path(run.skipped).replace(run.skipped)
    write_samples(run, dataset, plan)
    plan.save(run.split)
    run.save_config(cfg)
    return plan.sizes()


def write_samples(run: RunDir, dataset: PairDataset, plan: SplitPlan) -> None:
    """samples.parquet: every planned pair with its split, truth, captions and image location.

    `image_ref` is relative to `data_root` (data_root.json): the deepest folder
    holding every image, so the backend can serve images without knowing the
    source format. Refs of the form `SHARD#MEMBER` point inside tar shards.
    """
    import pandas as pd

    split_of = plan.split_of()
    keep = [i for i, sid in enumerate(dataset.ids) if sid in split_of]
    root = Path(dataset.root).resolve()
    files = [os.path.normpath(os.path.join(root, dataset.image_refs[i].split("#")[0])) for i in keep]
    data_root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else str(root)
    refs = [os.path.relpath(f, data_root) + ("#" + dataset.image_refs[i].split("#", 1)[1]
                                               if "#" in dataset.image_refs[i] else "")
            for f, i in zip(files, keep)]
    frame = pd.DataFrame({
        "sample_id": [dataset.ids[i] for i in keep],
        "split": [split_of[dataset.ids[i]] for i in keep],
        "truth": [dataset.truth[i] for i in keep],
        "captions": [list(dataset.captions[i]) for i in keep],
        "image_ref": refs,
        "attributes": [json.dumps(dataset.attributes[i]) if dataset.attributes else "{}" for i in keep],
    })
    tmp = atomic_path(run.samples)
    frame.to_parquet(tmp, index=False)
    tmp.replace(run.samples)
    write_json(run.data_root, {"data_root": data_root, "kind": dataset.name})


def _has_synthetic_attributes(dataset: PairDataset) -> bool:
    return bool(dataset.attributes) and all("objects" in a for a in dataset.attributes[:50])


def load_corpus(run: RunDir, cfg: RunConfig, vocab: Vocabulary | None = None) -> tuple[TensorCorpus, Vocabulary, dict]:
    dataset, plan = open_planned(cfg, run)
    model_cfg = resolve_config(cfg.train.model)
    prompts = zero_shot_prompts() if _has_synthetic_attributes(dataset) else []
    corpus, vocab = build_corpus(
        dataset, plan, image_size_of(model_cfg), context_length_of(model_cfg),
        captions_per_image=cfg.train.captions_per_image, vocab=vocab,
        compact_vocab=cfg.train.compact_vocab, extra_texts=prompts,
    )
    corpus.remove(cfg.train.remove_ids)
    return corpus, vocab, with_vocabulary(model_cfg, vocab)


def train_step(run: RunDir, cfg: RunConfig, resume: bool = False, show_progress: bool = True) -> dict:
    run.mark_unfinished()
    if not run.split.is_file():
        raise ClipmemError(f"{run.path} has no split.json: run `clipmem split` first")
    vocab = Vocabulary.from_json(json.loads(run.vocab.read_text())) if resume and run.vocab.is_file() else None
    t0 = time.perf_counter()
    corpus, vocab, model_cfg = load_corpus(run, cfg, vocab)
    write_json(run.vocab, vocab.to_json())
    write_json(run.path / "model_config.json", model_cfg)
    run.save_config(cfg)
    if corpus.truncated:
        print(f"note: {corpus.truncated} distinct captions exceed the context length and were truncated")
    models = {name: create_model(model_cfg, cfg.train.init_seed) for name in MODELS}
    prep_seconds = time.perf_counter() - t0
    summary = train_pair(models, corpus, cfg.train, run.checkpoints, run.train_log, resume=resume,
                         show_progress=show_progress)
    for name in MODELS:
        save_model(run.model_checkpoint(name), models[name], cfg.train.epochs, cfg.train.model)
    summary["prepare_seconds"] = round(prep_seconds, 2)
    write_json(run.path / "train_summary.json", summary)
    return summary


def score_step(run: RunDir, cfg: RunConfig, checkpoint_f: Path | None = None, checkpoint_g: Path | None = None,
               show_progress: bool = True) -> dict:
    """Score, embed and evaluate; finishes the run."""
    run.mark_unfinished()
    t0 = time.perf_counter()
    if checkpoint_f is None and not run.model_checkpoint("f").is_file():
        raise ClipmemError(f"{run.path} has no trained models (f.pt, g.pt): run `clipmem train` first")
    vocab = Vocabulary.from_json(json.loads(run.vocab.read_text())) if run.vocab.is_file() else Vocabulary()
    corpus, vocab, model_cfg = load_corpus(run, cfg, vocab)
    models = {}
    for name, given in (("f", checkpoint_f), ("g", checkpoint_g)):
        model = create_model(model_cfg, cfg.train.init_seed)
        load_model_weights(model, Path(given) if given else run.model_checkpoint(name))
        models[name] = model
    device = pick_device(cfg.train.device)
    result = score_run(models, corpus, cfg.score, cfg.train, device)
    scores, emb, embedded = result.frame, result.clean, result.embedded
    score_seconds = time.perf_counter() - t0
    layers = curves = None
    if cfg.score.towers:
        t1 = time.perf_counter()
        scores, layers, curves = attribute(models, corpus, result, cfg.score, cfg.train, context_length_of(model_cfg),
                                           vocab, device, layers=cfg.score.layers,
                                           top_k_curves=cfg.score.layer_curves_top_k)
        attribution_seconds = time.perf_counter() - t1

    metrics = {name: evaluate_model(models[name], corpus, emb[name], embedded, cfg, device) for name in MODELS}
    metrics["scoring"] = {"pairs": len(scores), "views": cfg.score.views, "seconds": round(score_seconds, 2),
                          "pairs_per_s": round(len(scores) / score_seconds, 1)}
    if cfg.score.towers:
        metrics["attribution"] = {"seconds": round(attribution_seconds, 2), "layers": cfg.score.layers}
    metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    tmp = atomic_path(run.scores)
    scores.to_parquet(tmp, index=False)
    tmp.replace(run.scores)
    for frame, path in ((layers, run.layers), (curves, run.layer_curves)):
        if frame is not None and len(frame):
            frame.to_parquet(atomic_path(path), index=False)
            atomic_path(path).replace(path)
        else:
            path.unlink(missing_ok=True)
    tmp = run.embeddings.with_name("embeddings.tmp.npz")
    np.savez(tmp, **embeddings_arrays(corpus, emb, embedded))
    tmp.replace(run.embeddings)
    write_json(run.metrics, metrics)
    run.save_config(cfg)
    run.mark_finished()
    return metrics


def evaluate_model(model, corpus: TensorCorpus, emb, embedded: torch.Tensor, cfg: RunConfig, device) -> dict:
    """Retrieval and zero-shot accuracy on S_E with this model's clean embeddings."""
    extra = [i for i, r in enumerate(embedded.tolist()) if corpus.split[r] == "extra"]
    if not extra:
        return {}
    image = emb.image[extra]
    rows = embedded[extra]
    caption_sets = [set(x for x in corpus.caption_index[r].tolist() if x >= 0) for r in rows.tolist()]
    out = retrieval(image, emb.caption_table, caption_sets)
    prompts = zero_shot_prompts()
    text_id = {t: j for j, t in enumerate(corpus.caption_texts)}
    if all(p in text_id for p in prompts):
        prompt_emb = emb.caption_table[[text_id[p] for p in prompts]]
        out.update(zero_shot(image, prompt_emb, [corpus.attributes[r] for r in rows.tolist()]))
    # linear probe: fitted on the clean image embeddings of S_S (which both models trained on), tested on S_E
    labels = probe_labels(corpus.attributes, cfg.data.options.label_key)
    if labels:
        shared = corpus.rows("shared")
        train_x = encode_images(model, corpus.pixels[shared], cfg.score.batch_size, device)
        for label, values in labels.items():
            accuracy = linear_probe(train_x, [values[r] for r in shared.tolist()], image,
                                    [values[r] for r in rows.tolist()])
            if accuracy is not None:
                out[f"probe_{label}"] = accuracy
    return out


def run_all(run: RunDir, cfg: RunConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Every step, one after the other; with resume, finished steps are not redone."""
    timings = {}
    t = time.perf_counter()
    if not (resume and run.split.is_file()):
        split_step(run, cfg)
    timings["split_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    done = resume and run.model_checkpoint("f").is_file() and run.model_checkpoint("g").is_file()
    if not done:
        train_step(run, cfg, resume=resume, show_progress=show_progress)
    timings["train_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    metrics = score_step(run, cfg, show_progress=show_progress)
    timings["score_seconds"] = round(time.perf_counter() - t, 2)
    metrics["timings"] = timings
    write_json(run.metrics, metrics)
    return metrics
