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

from clipmem.scoring import distributed
from clipmem.scoring.attribution import layer_tables, tower_scores
from clipmem.scoring.columns import MEMORIZED, REASON, join_image_ref, split_image_ref
from clipmem.scoring.config import RunConfig
from clipmem.scoring.data.base import PairDataset, Problems, verify_images
from clipmem.scoring.data.inject import check_rates, inject_faults
from clipmem.scoring.data.sources import load_dataset
from clipmem.scoring.data.synthetic import write as write_synthetic
from clipmem.scoring.data.tensors import TensorCorpus, build_corpus
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.evaluate import utility, zero_shot_prompts
from clipmem.scoring.models import (Vocabulary, context_length_of, create_model, image_size_of, resolve_config,
                                    uncovered_words, with_vocabulary)
from clipmem.scoring.pretrained import apply_locks, describe, read_pretrained
from clipmem.scoring.rundir import RunDir, atomic_write, write_json, write_text_atomic
from clipmem.scoring.schemes import PUBLISHED_MODELS, configured_names, literal_models, model_names
from clipmem.scoring.score import (clean_embeddings, embeddings_arrays, mean_over_replicas, prepare_model,
                                   scale_scores, score_null, score_run, scored_rows)
from clipmem.scoring.significance import TAIL_METHOD, add_significance, flagged_by_truth, null_summary
from clipmem.scoring.sharding import check_shard, fingerprint, part_path, read_fingerprint, read_parts, resolve_count, write_part
from clipmem.scoring.splits import SCHEMES, SplitPlan, plan_kfold, plan_splits
from clipmem.scoring.train import fit_state_dict, load_model_weights, replica_config, save_model, train_models
from clipmem.scoring.trajectory import check_trackable, tracker_for, with_dynamics
from clipmem.scoring.why import NEIGHBOURS, explain_run


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
    check_scheme(cfg)
    problems = Problems(cfg.data.on_error)
    source = read_source(cfg, run, problems)
    dataset = verify_images(source, problems)
    if cfg.split.scheme == "kfold":
        plan = plan_kfold(dataset.ids, dataset.truth, cfg.split.sizes, cfg.split.folds, cfg.split.seed)
    else:
        plan = plan_splits(dataset.ids, dataset.truth, cfg.split.sizes, cfg.split.seed)
    # injected into the source as read, as every later step does (open_planned): donors are drawn over the
    # whole source, so leaving out unreadable images here would swap in other captions than training uses
    dataset = inject_faults(source, plan, cfg.data.inject, cfg.data.inject_seed)
    with atomic_write(run.skipped) as tmp, open(tmp, "w") as fh:
        for item in problems.skipped:
            fh.write(json.dumps(item) + "\n")
    write_samples(run, dataset, plan)
    write_text_atomic(run.split, json.dumps(plan.to_json(), indent=1))
    run.save_config(cfg)
    return plan.sizes()


def check_scheme(cfg: RunConfig) -> None:
    if cfg.split.scheme not in SCHEMES:
        raise ClipmemError(f"unknown split scheme '{cfg.split.scheme}'; known: {', '.join(SCHEMES)}")
    if cfg.split.scheme == "kfold" and cfg.split.folds < 2:
        raise ClipmemError(f"the kfold scheme needs --folds K with K >= 2, got {cfg.split.folds}")
    if cfg.split.scheme == "published" and cfg.split.folds:
        raise ClipmemError("--folds applies to --scheme kfold")


def write_samples(run: RunDir, dataset: PairDataset, plan: SplitPlan) -> None:
    """samples.parquet: every planned pair with its split, truth, captions and image location.

    `image_ref` is relative to `data_root` (data_root.json): the deepest folder
    holding every image, so the backend can serve images without knowing the
    source format. Refs of the form `SHARD.tar#MEMBER` point inside tar shards (scoring.columns).
    """
    import pandas as pd

    split_of = plan.split_of()
    keep = [i for i, sid in enumerate(dataset.ids) if sid in split_of]
    root = Path(dataset.root).resolve()
    located = [split_image_ref(dataset.image_refs[i]) for i in keep]  # (image file or shard, tar member)
    files = [os.path.normpath(os.path.join(root, file)) for file, _ in located]
    data_root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else str(root)
    refs = [join_image_ref(os.path.relpath(f, data_root), member) for f, (_, member) in zip(files, located)]
    frame = pd.DataFrame({
        "sample_id": [dataset.ids[i] for i in keep],
        "split": [split_of[dataset.ids[i]] for i in keep],
        "truth": [dataset.truth[i] for i in keep],
        "captions": [list(dataset.captions[i]) for i in keep],
        "image_ref": refs,
        "attributes": [json.dumps(dataset.attributes[i]) if dataset.attributes else "{}" for i in keep],
    })
    with atomic_write(run.samples) as tmp:
        frame.to_parquet(tmp, index=False)
    write_json(run.data_root, {"data_root": data_root, "kind": dataset.name})


def _has_synthetic_attributes(dataset: PairDataset) -> bool:
    return bool(dataset.attributes) and all("objects" in a for a in dataset.attributes[:50])


def load_corpus(run: RunDir, cfg: RunConfig, vocab: Vocabulary | None = None,
                vocab_from: Path | None = None) -> tuple[TensorCorpus, Vocabulary, dict]:
    """The run's pairs as tensors, their vocabulary and the model config that reads it. `vocab_from`: the file the
    given vocabulary came from when it is a pretrained model's (--pretrained), which must cover every text."""
    dataset, plan = open_planned(cfg, run)
    model_cfg = resolve_config(cfg.train.model)
    prompts = zero_shot_prompts() if _has_synthetic_attributes(dataset) else []
    if vocab_from is not None:
        check_covered(dataset, plan, cfg, vocab, vocab_from, prompts)
    corpus, vocab = build_corpus(
        dataset, plan, image_size_of(model_cfg), context_length_of(model_cfg),
        captions_per_image=cfg.train.captions_per_image, vocab=vocab,
        compact_vocab=cfg.train.compact_vocab, extra_texts=prompts,
    )
    corpus.remove(cfg.train.remove_ids)
    return corpus, vocab, with_vocabulary(model_cfg, vocab)


def check_covered(dataset: PairDataset, plan: SplitPlan, cfg: RunConfig, vocab: Vocabulary, source: Path,
                  prompts: list[str]) -> None:
    """Refuse, before training, captions that use words outside a pretrained text tower's compacted vocabulary."""
    where = dataset.index_of()
    k = cfg.train.captions_per_image
    texts = {t for ids in plan.ids.values() for sid in ids if sid in where
             for t in (dataset.captions[where[sid]][:k] if k > 0 else dataset.captions[where[sid]])}
    missing = uncovered_words(sorted(texts) + list(prompts), vocab)
    if missing:
        shown = ", ".join(f"'{w}'" for w in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                                              else "")
        raise ClipmemError(f"the vocabulary of the pretrained text tower ({source}, {vocab.size} tokens) lacks "
                           f"{len(missing)} words of this run's captions: {shown}; pretrain on captions that use "
                           "them, or start from a checkpoint with open_clip's full vocabulary")


def train_step(run: RunDir, cfg: RunConfig, resume: bool = False, show_progress: bool = True,
               only: list[str] | None = None) -> dict:
    """Train the run's models (f and g, or the K fold models); under torchrun, with DDP over the processes.

    Only rank 0 writes. At the end every rank's weights digest is gathered: the summary records
    them, and training fails if ranks disagree. `only` trains a subset as a job of its own (e.g. f
    and g at once on two machines): it steps through the same slots and draws, so the models equal
    those of one job training all; its checkpoints, log and summary carry the models' names. With
    cfg.train.replicas = R > 1 (--replicas) it trains R sets of the models one after the other
    (train.replica_config); replica r > 0 keeps its files apart (f.r{r}.pt, checkpoints/replica{r}/,
    train_log.r{r}.jsonl, train_summary.r{r}.json).
    """
    ctx = distributed.from_environment()
    device = distributed.device_for(ctx, cfg.train.device)
    owned = distributed.init(ctx, device)
    try:
        return _train(run, cfg, resume, show_progress, ctx, device, only)
    finally:
        if owned:
            distributed.shutdown(ctx)


def _train(run: RunDir, cfg: RunConfig, resume: bool, show_progress: bool, ctx, device,
           only: list[str] | None = None) -> dict:
    check_trackable(cfg.train, cfg.split.scheme, ctx.active, only)
    if ctx.is_main:
        run.mark_unfinished()
    if not run.split.is_file():
        raise ClipmemError(f"{run.path} has no split.json: run `clipmem split` first")
    vocab = Vocabulary.from_json(json.loads(run.vocab.read_text())) if resume and run.vocab.is_file() else None
    t0 = time.perf_counter()
    pretrained, vocab_from = None, None
    if cfg.train.pretrained is not None:
        pretrained = read_pretrained(cfg.train.pretrained, cfg.train.model, cfg.train.pretrained_sha256)
        if vocab is None:  # the text tower reads the vocabulary it was trained with
            vocab, vocab_from = pretrained.vocab, pretrained.vocab_file
    corpus, vocab, model_cfg = load_corpus(run, cfg, vocab, vocab_from)
    if ctx.is_main:
        write_json(run.vocab, vocab.to_json())
        write_json(run.path / "model_config.json", model_cfg)
        run.save_config(cfg)
        if corpus.truncated:
            print(f"note: {corpus.truncated} distinct captions exceed the context length and were truncated")
    names = model_names(corpus)
    replicas = cfg.train.replicas
    if only and replicas > 1:
        raise ClipmemError(f"--only trains some models of one set; {run.path} trains {replicas} replicas "
                           "(--replicas): train it in one job")
    prepared = {"prepare_seconds": round(time.perf_counter() - t0, 2)}
    summaries = [_train_replica(run, cfg, corpus, model_cfg, names, r, resume, show_progress, ctx, device, only,
                                prepared if r == 0 else {}, pretrained) for r in range(replicas)]
    summary = summaries[0]
    if replicas > 1:  # the run's summary: replica 0's, with the others' (each also in train_summary.r{r}.json)
        summary.update(replicas=replicas, replica_summaries=summaries[1:])
        if ctx.is_main:
            write_json(run.path / "train_summary.json", summary)
    return summary


def _train_replica(run: RunDir, cfg: RunConfig, corpus, model_cfg, names, replica: int, resume: bool,
                   show_progress: bool, ctx, device, only: list[str] | None, extra: dict, pretrained=None) -> dict:
    """Train one set of the run's models (replica 0: the run's own f and g; r > 0: --replicas) and save them.

    With `pretrained` (--pretrained) every model of every replica starts from its weights, towers locked as the
    recipe says; the replicas then differ only in their data draws."""
    train_cfg = replica_config(cfg.train, replica)
    suffix = "" if replica == 0 else f".r{replica}"
    checkpoints, log = run.checkpoints, run.path / f"train_log{suffix}.jsonl"
    summary_file = run.path / f"train_summary{suffix}.json"
    if replica:
        checkpoints = run.checkpoints / f"replica{replica}"
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise ClipmemError(f"--only {','.join(unknown)}: this run's models are {', '.join(names)}")
        names = [name for name in names if name in only]
        part = "+".join(names)
        checkpoints = run.checkpoints / part
        log, summary_file = run.path / f"train_log.{part}.jsonl", run.path / f"train_summary.{part}.json"
    models = {name: create_model(model_cfg, train_cfg.init_seed) for name in names}
    if pretrained is not None:
        for model in models.values():
            fit_state_dict(model, pretrained.state, pretrained.path)
    for model in models.values():
        apply_locks(model, train_cfg)
    tracker = tracker_for(run, cfg, corpus, device, resume) if replica == 0 and ctx.is_main else None
    summary = train_models(models, corpus, train_cfg, checkpoints, log, resume=resume,
                           show_progress=show_progress, ctx=ctx, device=device, tracker=tracker)
    digests = distributed.gather_objects(ctx, {name: distributed.weights_digest(m) for name, m in models.items()})
    summary.update(extra, **describe(train_cfg), **({"replica": replica} if replica else {}))
    if ctx.is_main:
        for name in names:
            save_model(run.model_checkpoint(name, replica), models[name], train_cfg.epochs, train_cfg.model)
        summary["weights_sha256"] = digests[0]
        if ctx.active:
            summary["rank_weights_sha256"] = digests
            summary["ranks_agree"] = all(d == digests[0] for d in digests)
        write_json(summary_file, summary)
        if not summary.get("ranks_agree", True):
            raise ClipmemError("distributed training ended with different weights on different ranks "
                               f"(see {summary_file})")
    return summary


def _load_models(run: RunDir, cfg: RunConfig, corpus, model_cfg, checkpoint_f, checkpoint_g, replica: int = 0):
    """The scheme's models with their weights (those of `replica`), and the file each came from."""
    names = model_names(corpus)
    if checkpoint_f is not None:
        if names != PUBLISHED_MODELS:
            raise ClipmemError(f"--checkpoint-f/--checkpoint-g import f and g of the published scheme; {run.path} "
                               f"uses the {cfg.split.scheme} scheme ({len(names)} models)")
        paths = {"f": Path(checkpoint_f), "g": Path(checkpoint_g)}
    else:
        paths = {name: run.model_checkpoint(name, replica) for name in names}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            raise ClipmemError(f"{run.path} has no trained models ({', '.join(missing)}): run `clipmem train` first")
    models = {}
    for name, path in paths.items():
        # locked as in training: a frozen BatchNorm (--lock-image-freeze-bn-stats) keeps other state-dict keys
        model = apply_locks(create_model(model_cfg, cfg.train.init_seed), cfg.train)
        load_model_weights(model, path)
        models[name] = model
    return models, paths


def score_step(run: RunDir, cfg: RunConfig, checkpoint_f: Path | None = None, checkpoint_g: Path | None = None,
               show_progress: bool = True, shard: int | None = None, num_shards: int | None = None,
               merge: bool = False) -> dict:
    """Score, embed and evaluate; finishes the run.

    With `shard`/`num_shards`: score that part of the scored pairs into RUN_DIR/score_parts (skipped
    when its file is current) and return; with `merge`: finish the run from all parts. Under
    torchrun (without those options) each rank scores the part of its rank and rank 0 merges.
    """
    check_shard(shard, num_shards)
    if merge and shard is not None:
        raise ClipmemError("--merge combines the parts of all shards; drop --shard")
    ctx = distributed.from_environment()
    if ctx.active and (merge or shard is not None):
        raise ClipmemError("under torchrun every rank scores the shard of its rank and rank 0 merges: "
                           "drop --shard, --num-shards and --merge")
    launched = ctx.active
    replicas = cfg.train.replicas
    if replicas > 1 and (launched or merge or shard is not None or checkpoint_f is not None):
        raise ClipmemError(f"{run.path} has {replicas} replicas (--replicas): score it in one process, without "
                           "--shard, --merge, torchrun or imported checkpoints (each scores one set of models)")
    if launched:
        shard, num_shards = ctx.rank, ctx.world_size
    t0 = time.perf_counter()
    vocab = Vocabulary.from_json(json.loads(run.vocab.read_text())) if run.vocab.is_file() else Vocabulary()
    corpus, vocab, model_cfg = load_corpus(run, cfg, vocab)
    models, paths = _load_models(run, cfg, corpus, model_cfg, checkpoint_f, checkpoint_g)
    device = distributed.device_for(ctx if launched else distributed.SINGLE, cfg.train.device)
    owned = launched and distributed.init(ctx, device, backend="gloo", long_timeout=True)
    try:
        run.mark_unfinished()
        scored = scored_rows(corpus)
        clean = null = None
        if shard is not None:
            if num_shards > len(scored):
                raise ClipmemError(f"--num-shards {num_shards} exceeds the {len(scored)} scored pairs of {run.path}")
            print_ = fingerprint(run, cfg, paths)
            path = part_path(run, shard, num_shards)
            skipped = path.is_file() and read_fingerprint(path) == print_
            if not skipped:
                part = distributed.share_bounds(len(scored), num_shards, shard)
                write_part(path, *_score_part(models, corpus, cfg, vocab, model_cfg, device, part), print_)
            if not launched:
                return {"part": str(path), "skipped": skipped, "shard": shard, "num_shards": num_shards,
                        "seconds": round(time.perf_counter() - t0, 2)}
            ctx.barrier()
            if not ctx.is_main:
                return {"part": str(path), "skipped": skipped, "shard": shard, "num_shards": num_shards}
            frame, per_pair = read_parts(run, num_shards, print_)
        elif merge:
            num_shards = resolve_count(run, num_shards)
            frame, per_pair = read_parts(run, num_shards, fingerprint(run, cfg, paths))
        else:
            frame, per_pair, clean, null = _score_replicas(run, cfg, corpus, models, vocab, model_cfg, device)
        if null is None and len(corpus.rows("extra")):
            # the null: once per run, by the process that finishes it, whatever scored the pairs
            null = score_null(models, corpus, cfg.score, cfg.train, device)
        score_seconds = time.perf_counter() - t0
        # the trajectory tracks clipmem's own f and g, not imported checkpoints
        frame, trajectory = with_dynamics(run, cfg, frame) if checkpoint_f is None else (frame, None)
        metrics = _finish(run, cfg, corpus, models, frame, per_pair, clean, null, device)
        if trajectory is not None:
            metrics["trajectory"] = trajectory
        metrics["scoring"] = {"pairs": len(frame), "views": cfg.score.views, "seconds": round(score_seconds, 2),
                              "pairs_per_s": round(len(frame) / score_seconds, 1),
                              **({"shards": num_shards} if num_shards else {}),
                              **({"replicas": replicas} if replicas > 1 else {})}
        metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        write_json(run.metrics, metrics)
        run.save_config(cfg)
        run.mark_finished()
        return metrics
    finally:
        if owned:
            distributed.shutdown(ctx)


def _score_replicas(run: RunDir, cfg: RunConfig, corpus, models: dict, vocab, model_cfg, device):
    """Every scored pair and the null in one process: (frame, per-pair layers, clean embeddings, null or None).

    With --replicas R > 1 each replica's models score the same views; the scores are the mean over replicas
    (score.mean_over_replicas) and the clean embeddings those of replica 0, whose models (`models`) the run's
    embeddings and utility use."""
    frames, layer_sets, nulls, clean = [], [], [], None
    for replica in range(cfg.train.replicas):
        these = models if replica == 0 else _load_models(run, cfg, corpus, model_cfg, None, None, replica)[0]
        result = score_run(these, corpus, cfg.score, cfg.train, device, embed=replica == 0)
        frame, per_pair = result.frame, {}
        if cfg.score.towers:
            frame, per_pair = tower_scores(these, corpus, result, cfg.score, cfg.train, context_length_of(model_cfg),
                                           vocab, device, layers=cfg.score.layers)
        if replica == 0:
            clean = result.clean
        frames.append(frame)
        layer_sets.append(per_pair)
        if len(corpus.rows("extra")):
            nulls.append(score_null(these, corpus, cfg.score, cfg.train, device, tables=result.tables))
    frame = mean_over_replicas(frames, spread=True)
    per_pair = {tower: np.mean([layers[tower] for layers in layer_sets], axis=0) if len(layer_sets) > 1
                else layer_sets[0][tower] for tower in layer_sets[0]}
    return frame, per_pair, clean, mean_over_replicas(nulls) if nulls else None


def _score_part(models, corpus, cfg: RunConfig, vocab, model_cfg, device, part: slice):
    """The per-pair scores of one contiguous part of the scored pairs (unscaled where it matters)."""
    result = score_run(models, corpus, cfg.score, cfg.train, device, part=part, embed=False)
    if not cfg.score.towers:
        return result.frame, {}
    return tower_scores(models, corpus, result, cfg.score, cfg.train, context_length_of(model_cfg), vocab, device,
                        layers=cfg.score.layers)


def _finish(run: RunDir, cfg: RunConfig, corpus, models: dict, frame, per_pair: dict, clean: dict | None,
            null, device) -> dict:
    """From the per-pair scores of every scored pair and the null: scaled scores with their significance, layer
    tables, embeddings and utility."""
    for model in models.values():  # outside inference mode: moved parameters stay ordinary tensors
        prepare_model(model, device)
    with torch.inference_mode():
        return _finish_outputs(run, cfg, corpus, models, frame, per_pair, clean, null, device)


def _significance(run: RunDir, cfg: RunConfig, scores, null) -> tuple[object, dict]:
    """scores with p, q, the flag and the view intervals added (null.parquet written), and metrics' "significance".

    A run without S_E pairs has no null: its scores keep no significance columns and the metrics say why."""
    if null is None:
        run.null.unlink(missing_ok=True)
        return scores, {"fdr": cfg.score.fdr, "null_pairs": 0,
                        "missing": "the run has no S_E pairs (extra = 0), so no null to test the scored pairs "
                                   "against: no p-values, q-values or memorized flags"}
    scores = add_significance(scores, null, cfg.score.fdr)
    with atomic_write(run.null) as tmp:
        null.to_parquet(tmp, index=False)
    return scores, {"fdr": cfg.score.fdr, "null_pairs": int(null["sample_id"].nunique()),
                    "flagged": int(scores[MEMORIZED].sum()), "flagged_by_truth": flagged_by_truth(scores),
                    "tail": TAIL_METHOD, "null": null_summary(null)}


def _finish_outputs(run: RunDir, cfg: RunConfig, corpus, models: dict, frame, per_pair: dict, clean: dict | None,
                    null, device) -> dict:
    t1 = time.perf_counter()
    scores, significance = _significance(run, cfg, scale_scores(frame), null)
    layers, curves = layer_tables(scores, per_pair, cfg.score.layer_curves_top_k)
    names = tuple(models)
    literal = literal_models(names)
    extra = corpus.rows("extra")
    embedded = torch.cat([scored_rows(corpus), extra])
    if clean is None:
        clean = {name: clean_embeddings(models[name], corpus, embedded, cfg.score, device)
                 for name in literal.values()}
    metrics = {}
    per_model = utility(models, corpus, clean, embedded, cfg, device)
    for key, name in literal.items():
        metrics[key] = per_model[name]
    if names != PUBLISHED_MODELS:
        metrics["scheme"] = {"name": cfg.split.scheme, "folds": len(names), "literal_models": literal}
        metrics["folds"] = per_model
    if cfg.score.towers:
        metrics["attribution"] = {"layers": cfg.score.layers}
    metrics["significance"] = significance
    t_why, cpu_why = time.perf_counter(), time.process_time()
    explained = explain_run(corpus, scores, clean, embedded, models, cfg.score, device)
    neighbours = None
    if explained is not None:
        scores, neighbours = explained
        # CPU seconds beside wall seconds: on a shared machine the wall time says more about the load than the step
        metrics["why"] = {"seconds": round(time.perf_counter() - t_why, 2),
                          "cpu_seconds": round(time.process_time() - cpu_why, 2), "neighbours": NEIGHBOURS,
                          "reasons": scores[REASON].value_counts().to_dict()}
    metrics["finish_seconds"] = round(time.perf_counter() - t1, 2)

    with atomic_write(run.scores) as tmp:
        scores.to_parquet(tmp, index=False)
    for table, path in ((layers, run.layers), (curves, run.layer_curves), (neighbours, run.neighbours)):
        if table is not None and len(table):
            with atomic_write(path) as tmp:
                table.to_parquet(tmp, index=False)
        else:
            path.unlink(missing_ok=True)
    # through a file object: given a name, np.savez would append .npz to the temporary one
    with atomic_write(run.embeddings) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **embeddings_arrays(corpus, {key: clean[name] for key, name in literal.items()}, embedded))
    return metrics


def run_all(run: RunDir, cfg: RunConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Every step, one after the other; with resume, finished steps are not redone."""
    timings = {}
    t = time.perf_counter()
    if not (resume and run.split.is_file()):
        split_step(run, cfg)
    timings["split_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    names = configured_names(cfg.split.scheme, cfg.split.folds)
    done = resume and all(run.model_checkpoint(name, r).is_file() for name in names for r in range(cfg.train.replicas))
    if not done:
        train_step(run, cfg, resume=resume, show_progress=show_progress)
    timings["train_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    metrics = score_step(run, cfg, show_progress=show_progress)
    timings["score_seconds"] = round(time.perf_counter() - t, 2)
    metrics["timings"] = timings
    with run.rewriting(run.metrics):  # scoring finished the run; its metrics gain the timings
        write_json(run.metrics, metrics)
    return metrics
