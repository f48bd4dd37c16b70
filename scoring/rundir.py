"""The run directory: where each step writes, and how a finished run is told apart.

A run is finished only when its COMPLETE marker exists; the marker is written
last and removed first whenever a step rewrites outputs, so an interrupted run
never looks finished. Single files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from scoring.errors import ClipmemError

COMPLETE = "COMPLETE"


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    # fixed names: the output contract
    config = property(lambda self: self.path / "config.json")
    split = property(lambda self: self.path / "split.json")
    vocab = property(lambda self: self.path / "vocab.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    train_log = property(lambda self: self.path / "train_log.jsonl")
    samples = property(lambda self: self.path / "samples.parquet")
    data_root = property(lambda self: self.path / "data_root.json")
    skipped = property(lambda self: self.path / "skipped.jsonl")
    scores = property(lambda self: self.path / "scores.parquet")
    embeddings = property(lambda self: self.path / "embeddings.npz")
    layers = property(lambda self: self.path / "layers.parquet")
    layer_curves = property(lambda self: self.path / "layer_curves.parquet")
    metrics = property(lambda self: self.path / "metrics.json")
    experiment = property(lambda self: self.path / "experiment.json")  # only in runs made by `clipmem experiment`
    marker = property(lambda self: self.path / COMPLETE)
    data = property(lambda self: self.path / "data")

    def model_checkpoint(self, which: str) -> Path:
        return self.path / f"{which}.pt"

    def is_finished(self) -> bool:
        return self.marker.is_file()

    def require_finished(self) -> None:
        if not self.path.is_dir():
            raise ClipmemError(f"run directory {self.path} does not exist")
        if not self.is_finished():
            raise ClipmemError(f"{self.path} is not a finished run (no {COMPLETE} marker): run `clipmem score` on it")

    def mark_unfinished(self) -> None:
        self.marker.unlink(missing_ok=True)

    def mark_finished(self) -> None:
        write_json(self.marker, {"outputs": sorted(p.name for p in self.path.iterdir())})

    def prepare_new(self, overwrite: bool) -> None:
        """Make an empty run directory, refusing to clobber one unless asked."""
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                state = "a finished run" if self.is_finished() else "an unfinished run (use --resume to continue it)"
                raise ClipmemError(f"{self.path} already holds {state}; pass --overwrite to replace it")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def load_config(self):
        from scoring.config import RunConfig  # lazily: config pulls in torch, the backend reads run dirs without it

        if not self.config.is_file():
            raise ClipmemError(f"{self.path} has no config.json: create it with `clipmem split` or `clipmem run`")
        try:
            return RunConfig.from_json(json.loads(self.config.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ClipmemError(f"{self.config} is malformed ({exc})") from None

    def save_config(self, cfg) -> None:
        write_json(self.config, cfg.to_json())


def write_json(path: Path, obj) -> None:
    # a per-process temporary name: separate training jobs of one run write the same files at once
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def atomic_path(path: Path) -> Path:
    """A sibling temporary path to write to before os.replace(tmp, path)."""
    return path.with_name(path.name + ".tmp")
