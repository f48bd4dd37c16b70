"""Sharded scoring: score parts of the scored pairs in separate processes, then merge.

`clipmem score RUN_DIR --shard I --num-shards N` scores the I-th of N contiguous parts of
the scored pairs — the per-view alignments of every model, the baselines, tower, swap and
per-pair LayerMem values: all the per-pair work — and writes it to
RUN_DIR/score_parts/part-{I:05d}-of-{N:05d}.parquet. `clipmem score RUN_DIR --merge`
concatenates the parts in order, scales the scores over the whole set, aggregates the
layer tables, embeds the scored and S_E pairs and measures utility: the cheap rest.

Each part records a fingerprint of what it was computed from (score and training
settings, split plan, vocabulary, model checkpoints); a rerun skips a part whose file
holds the current fingerprint, and the merge refuses parts with another one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.rundir import atomic_write

PARTS_DIR = "score_parts"
PART_NAME = re.compile(r"^part-(\d{5,})-of-(\d{5,})\.parquet$")
FINGERPRINT_KEY = b"clipmem_fingerprint"
LAYER_PREFIX = "layers_"  # per-pair LayerMem per block, kept in parts only


def parts_dir(run) -> Path:
    return run.path / PARTS_DIR


def part_path(run, index: int, count: int) -> Path:
    return parts_dir(run) / f"part-{index:05d}-of-{count:05d}.parquet"


def check_shard(index: int | None, count: int | None) -> None:
    if (index is None) != (count is None):
        raise ClipmemError("give --shard and --num-shards together")
    if count is not None and (count < 1 or not 0 <= index < count):
        raise ClipmemError(f"--shard must lie in [0, --num-shards) and --num-shards be >= 1 (got {index}, {count})")


def fingerprint(run, cfg, checkpoints: dict[str, Path]) -> str:
    """What a part's values depend on: settings, split plan, vocabulary and the models' files."""
    def file_id(path: Path) -> list:
        stat = Path(path).stat()
        return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]

    # batching does not change a part's values, nor does the FDR (applied when the parts are merged)
    score = {k: v for k, v in asdict(cfg.score).items() if k not in ("batch_size", "fdr")}
    # replicas: sharded scoring scores one set of models (score_step refuses --replicas R > 1 with shards)
    train = {k: v for k, v in asdict(cfg.train).items() if k not in ("device", "keep_checkpoints", "replicas")}
    content = {
        "score": score,
        "train": train,
        "data": asdict(cfg.data),
        "split": hashlib.sha256(run.split.read_bytes()).hexdigest(),
        "vocab": hashlib.sha256(run.vocab.read_bytes()).hexdigest() if run.vocab.is_file() else None,
        "models": {name: file_id(path) for name, path in checkpoints.items()},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def read_fingerprint(path: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # a damaged or foreign file: recompute it
        return None
    value = meta.get(FINGERPRINT_KEY)
    return value.decode() if value else None


def write_part(path: Path, frame: pd.DataFrame, per_pair_layers: dict[str, np.ndarray], print_: str) -> None:
    """Write a part atomically, with its per-pair layer values (one list per pair) and fingerprint."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.copy()
    for tower, values in per_pair_layers.items():  # (blocks, N)
        frame[LAYER_PREFIX + tower] = list(np.asarray(values).T)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), FINGERPRINT_KEY: print_.encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)


def part_counts(run) -> set[int]:
    """The shard counts N of the part files present."""
    folder = parts_dir(run)
    if not folder.is_dir():
        return set()
    return {int(m.group(2)) for p in folder.iterdir() if (m := PART_NAME.match(p.name))}


def resolve_count(run, count: int | None) -> int:
    if count is not None:
        return count
    found = part_counts(run)
    if not found:
        raise ClipmemError(f"{parts_dir(run)} holds no score parts: run `clipmem score {run.path} --shard I "
                           "--num-shards N` for every I first")
    if len(found) > 1:
        raise ClipmemError(f"{parts_dir(run)} holds parts of {len(found)} different shard counts "
                           f"({', '.join(map(str, sorted(found)))}); say which with --num-shards")
    return found.pop()


def read_parts(run, count: int, print_: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """All parts in order as one frame (layer lists removed) and the per-pair layer values {tower: (blocks, N)}."""
    paths = [part_path(run, i, count) for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        names = ", ".join(paths[i].name for i in missing[:10]) + (f" and {len(missing) - 10} more"
                                                                  if len(missing) > 10 else "")
        raise ClipmemError(f"cannot merge: {len(missing)} of {count} score parts are missing in {parts_dir(run)}: "
                           f"{names}; run `clipmem score {run.path} --shard I --num-shards {count}` for "
                           f"I = {', '.join(map(str, missing[:10]))}")
    stale = [p.name for p in paths if read_fingerprint(p) != print_]
    if stale:
        raise ClipmemError(f"cannot merge: score part(s) {', '.join(stale[:10])} were computed from other settings, "
                           "split, vocabulary or models than the run has now; rerun those shards")
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    layer_cols = [c for c in frame.columns if c.startswith(LAYER_PREFIX)]
    per_pair = {c[len(LAYER_PREFIX):]: np.stack(frame[c].to_numpy()).T for c in layer_cols} if len(frame) else {}
    return frame.drop(columns=layer_cols), per_pair
