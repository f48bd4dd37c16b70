"""Export a run's training sets in open_clip's CSV format, for open_clip's own trainer."""

from __future__ import annotations

import csv
from pathlib import Path

from clipmem.scoring.columns import TRAINING_SPLITS
from clipmem.scoring.data.base import PairDataset
from clipmem.scoring.images import decode_rgb
from clipmem.scoring.rundir import atomic_write
from clipmem.scoring.splits import SplitPlan

TRAIN_SETS = {
    "train_f.csv": TRAINING_SPLITS["f"],
    "train_g.csv": TRAINING_SPLITS["g"],
    "extra.csv": ("extra",),
}


def write_open_clip_csv(dataset: PairDataset, ids: list[str], path: Path, all_captions: bool = True) -> int:
    """Tab-separated `filepath`/`title` rows with absolute image paths; one row per caption.

    Returns the number of rows. Written to a temporary name first, then renamed.
    """
    where = dataset.index_of()
    rows = 0
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["filepath", "title"])
        for sid in ids:
            i = where[sid]
            image = str((Path(dataset.root) / dataset.image_refs[i]).resolve())
            for caption in dataset.captions[i] if all_captions else dataset.captions[i][:1]:
                writer.writerow([image, caption])
                rows += 1
    return rows


def train_sets(plan: SplitPlan) -> dict[str, list[str]]:
    """File name -> sample ids: train_f.csv, train_g.csv (published) or train_fold{k}.csv (k-fold), and extra.csv."""
    if plan.folds is None:
        return {name: [sid for s in splits for sid in plan.ids[s]] for name, splits in TRAIN_SETS.items()}
    sets = {f"train_fold{k}.csv": [sid for j, fold in enumerate(plan.folds) if j != k for sid in fold]
            for k in range(len(plan.folds))}
    return {**sets, "extra.csv": list(plan.ids["extra"])}


def export_splits(dataset: PairDataset, plan: SplitPlan, out_dir: Path, all_captions: bool = True) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: write_open_clip_csv(dataset, ids, out_dir / name, all_captions)
            for name, ids in train_sets(plan).items()}


def export_run(run, out: Path | None = None) -> dict:
    """Export a run's splits (with its injected faults) plus the model config open_clip's trainer needs."""
    import json
    import shlex

    from clipmem.scoring.errors import ClipmemError
    from clipmem.scoring.models import resolve_config
    from clipmem.scoring.pipeline import open_planned

    if not run.split.is_file():
        raise ClipmemError(f"{run.path} has no split.json: run `clipmem split` first")
    cfg = run.load_config()
    dataset, plan = open_planned(cfg, run)
    folder = Path(out) if out else run.path / "export"
    folder.mkdir(parents=True, exist_ok=True)
    if not dataset.plain_files:
        dataset = materialise_images(dataset, plan, folder / "images")
    rows = export_splits(dataset, plan, folder)
    model_dir = folder / "model"
    model_dir.mkdir(exist_ok=True)
    # open_clip's trainer tokenises with the full vocabulary, so the exported config keeps it
    # a mean/std of the model's own travels in open_clip's preprocess_cfg, which CLIP(**model_cfg) would refuse
    model_cfg = resolve_config(cfg.train.model)
    preprocess = model_cfg.pop("preprocess_cfg", {})
    (model_dir / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    t = cfg.train
    commands = []
    for name in ("f", "g") if plan.folds is None else [f"fold{k}" for k in range(len(plan.folds))]:
        args = ["torchrun", "--nproc_per_node", "1", "-m", "open_clip_train.main",
                "--model", f"local-dir:{model_dir.resolve()}", "--train-data", str((folder / f"train_{name}.csv").resolve()),
                "--dataset-type", "csv", "--csv-img-key", "filepath", "--csv-caption-key", "title",
                "--batch-size", str(t.batch_size), "--epochs", str(t.epochs), "--lr", str(t.lr), "--wd", str(t.weight_decay),
                "--warmup", str(t.warmup_steps), "--seed", str(t.init_seed), "--workers", "4",
                "--logs", str((folder / "logs").resolve()), "--name", f"clipmem-{name}"]
        commands.append(shlex.join(args))
    return {"folder": folder, "rows": rows, "commands": commands}


def materialise_images(dataset: PairDataset, plan: SplitPlan, folder: Path) -> PairDataset:
    """Write the planned pairs' images (e.g. members of tar shards) once as PNG files."""
    from dataclasses import replace

    folder.mkdir(parents=True, exist_ok=True)
    planned = set(plan.split_of())
    refs = list(dataset.image_refs)
    for i, sid in enumerate(dataset.ids):
        if sid not in planned:
            continue
        name = f"{i:08d}.png"
        target = folder / name
        if not target.is_file():
            with atomic_write(target) as tmp:
                dataset.open_checked(i).convert("RGB").save(tmp, format="PNG")
        refs[i] = name
    return replace(dataset, root=folder, image_refs=refs, plain_files=True,
                   open_image=lambda ref: decode_rgb(folder / ref))
