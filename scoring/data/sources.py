"""Open a source by its kind: the one place that knows every reader."""

from __future__ import annotations

from pathlib import Path

from clipmem.scoring.config import SourceOptions
from clipmem.scoring.data.base import PairDataset, Problems
from clipmem.scoring.data.coco import read_coco
from clipmem.scoring.data.csvfile import read_csv
from clipmem.scoring.data.folder import read_folder
from clipmem.scoring.data.shards import read_shards
from clipmem.scoring.errors import ClipmemError

SOURCE_KINDS = ("synthetic", "folder", "coco", "csv", "webdataset")


def load_dataset(kind: str, path: Path | str | None, options: SourceOptions = SourceOptions(),
                 problems: Problems | None = None) -> PairDataset:
    """Open a source by kind; bad items are handled by `problems` (default: fail)."""
    problems = problems or Problems("fail")
    if kind not in SOURCE_KINDS:
        raise ClipmemError(f"unknown dataset kind '{kind}'; known: {', '.join(SOURCE_KINDS)}")
    if path is None:
        raise ClipmemError(f"--data PATH is required for --dataset {kind}")
    path = Path(path)
    if kind != "webdataset" and not path.exists():
        raise ClipmemError(f"--data {path} does not exist")
    if kind in ("folder", "synthetic"):
        dataset = read_folder(path, problems, name=kind)
    elif kind == "coco":
        dataset = read_coco(path, Path(options.coco_images) if options.coco_images else None, problems)
    elif kind == "csv":
        dataset = read_csv(path, options, problems)
    else:
        dataset = read_shards(str(path), options, problems)
    if not dataset.ids:
        raise ClipmemError(f"{path} holds no usable pairs: the dataset is empty")
    dataset.skipped = problems.skipped
    return dataset
