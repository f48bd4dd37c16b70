"""The run directory: where each step writes, and how a finished run is told apart.

A run is finished only when its COMPLETE marker exists; the marker is written
last and removed first whenever a step rewrites outputs, so an interrupted run
never looks finished. Single files are written to a temporary name and renamed.

The marker records the SHA-256 of every file of the run directory (its artifacts), and
each checkpoint has its SHA-256 beside it (`epoch_3.pt.sha256`, in `sha256sum` format),
so a file damaged on disk is refused when read back (resume, scoring, ingest) instead of
silently changing scores: neither `torch.load` nor Parquet checks its own bytes. Torch-free:
the backend verifies runs with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipmem.scoring.config import RunConfig
from clipmem.scoring.errors import ClipmemError

COMPLETE = "COMPLETE"
CHECKSUM_SUFFIX = ".sha256"
# written by a process that may still be running when the marker is written (the experiment
# runner's worker output), so never checksummed
UNCHECKED = frozenset({"worker.log"})


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
    null = property(lambda self: self.path / "null.parquet")  # the scores of S_E pairs: the null (columns.NULL_COLUMNS)
    layers = property(lambda self: self.path / "layers.parquet")
    layer_curves = property(lambda self: self.path / "layer_curves.parquet")
    # per scored pair its nearest images and captions under the model that did not train on it (columns.NEIGHBOUR_COLUMNS)
    neighbours = property(lambda self: self.path / "neighbours.parquet")
    # per pair and tracked epoch, the scores of runs trained with --track-epochs (columns.TRAJECTORY_COLUMNS)
    trajectory = property(lambda self: self.path / "trajectory.parquet")
    metrics = property(lambda self: self.path / "metrics.json")
    experiment = property(lambda self: self.path / "experiment.json")  # only in runs made by `clipmem experiment`
    marker = property(lambda self: self.path / COMPLETE)
    data = property(lambda self: self.path / "data")

    def model_checkpoint(self, which: str, replica: int = 0) -> Path:
        """The final weights of model `which`: f.pt; those of replica r > 0 (--replicas) f.r{r}.pt."""
        return self.path / (f"{which}.pt" if replica == 0 else f"{which}.r{replica}.pt")

    def is_finished(self) -> bool:
        return self.marker.is_file()

    def require_finished(self) -> None:
        if not self.path.is_dir():
            raise ClipmemError(f"run directory {self.path} does not exist")
        if not self.is_finished():
            raise ClipmemError(f"{self.path} is not a finished run (no {COMPLETE} marker): run `clipmem score` on it")

    def mark_unfinished(self) -> None:
        self.marker.unlink(missing_ok=True)

    def mark_finished(self, known: dict[str, str] | None = None) -> None:
        """Write the marker: the run's outputs and the SHA-256 of each of its artifacts. `known` holds checksums
        of files not written since they were taken (see `rewriting`), which are not read again."""
        known = known or {}
        write_json(self.marker, {"outputs": sorted(p.name for p in self.path.iterdir()),
                                 "sha256": {p.name: known.get(p.name) or file_sha256(p) for p in self.artifacts()}})

    @contextmanager
    def rewriting(self, *paths: Path) -> Iterator[None]:
        """Rewrite some files of a finished run: it is unfinished meanwhile, and afterwards its marker is
        written again hashing only those files (model files need not be read a second time)."""
        known = self.recorded_checksums() or {}
        for path in paths:
            known.pop(Path(path).name, None)
        self.mark_unfinished()
        yield
        self.mark_finished(known)

    def artifacts(self) -> list[Path]:
        """The files the marker vouches for: every plain file directly in the run directory but the
        marker, temporaries and logs still being written (folders such as data/ and checkpoints/ are not
        outputs of a finished run; checkpoints carry their own checksums)."""
        return sorted(p for p in self.path.iterdir()
                      if p.is_file() and p.name != COMPLETE and p.name not in UNCHECKED and not p.name.endswith(".tmp"))

    def recorded_checksums(self) -> dict[str, str] | None:
        """{file name: SHA-256} from the marker; None for a run finished by a clipmem that recorded none."""
        try:
            marker = json.loads(self.marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClipmemError(f"{self.marker} is unreadable or not JSON ({exc}): the run's files cannot be "
                               "verified") from None
        if not isinstance(marker, dict) or "sha256" not in marker:
            return None
        sums = marker["sha256"]
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            raise ClipmemError(f"{self.marker}: 'sha256' should map file names to checksums")
        return sums

    def verify(self, names) -> list[str]:
        """Check the named files (those present) against the marker's checksums; returns the names
        present but not verified because the marker records none for them (an older clipmem wrote it).
        Raises naming the first file whose bytes differ, or that the marker does not list."""
        sums = self.recorded_checksums()
        present = [name for name in names if (self.path / name).is_file()]
        if sums is None:
            return present
        for name in present:
            if name not in sums:
                raise ClipmemError(f"{self.path / name} has no checksum in {self.marker}: it was added after the "
                                   "run finished, so it cannot be verified")
            if file_sha256(self.path / name) != sums[name]:
                raise ClipmemError(f"{self.path / name} is corrupt: its SHA-256 differs from the one recorded in "
                                   f"{self.marker} when the run finished (damaged on disk, or changed since)")
        return []

    def prepare_new(self, overwrite: bool) -> None:
        """Make an empty run directory, refusing to clobber one unless asked."""
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                state = ("a finished run" if self.is_finished()
                         else f"an unfinished run (`clipmem run --out {self.path} --resume` continues it)"
                         if self.config.is_file() else "files but no run settings (config.json)")
                raise ClipmemError(f"{self.path} already holds {state}; pass --overwrite to replace it")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def load_config(self) -> RunConfig:
        if not self.config.is_file():
            raise ClipmemError(f"{self.path} has no config.json: create it with `clipmem split` or `clipmem run`")
        try:
            return RunConfig.from_json(json.loads(self.config.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ClipmemError(f"{self.config} is malformed ({exc})") from None

    def save_config(self, cfg: RunConfig) -> None:
        write_json(self.config, cfg.to_json())


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces: a model file need not fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: Path) -> None:
    """Record the SHA-256 of `path` beside it as `sha256sum` writes it, so `sha256sum -c` checks it too."""
    write_text_atomic(checksum_path(path), f"{file_sha256(path)}  {path.name}\n")


def verify_checksum(path: Path) -> bool:
    """Check `path` against the checksum beside it; False when it has none (written before clipmem recorded
    them, or by another program). Raises naming the file when its bytes differ."""
    recorded = checksum_path(path)
    if not recorded.is_file():
        return False
    expected = (recorded.read_text(errors="replace").split() or [""])[0]
    if file_sha256(path) != expected:
        raise ClipmemError(f"{path} is corrupt: its SHA-256 differs from the one recorded in {recorded.name} when it "
                           "was written")
    return True


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to: renamed onto `path` when the block succeeds, removed when it
    fails, so a reader sees the old file or the whole new one. The name is per process (separate training jobs
    of one run write the same files at once) and ends in .tmp, which `RunDir.artifacts` leaves out."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
