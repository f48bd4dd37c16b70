"""In-memory copies of a run's score columns and embedding matrices, for whole-run computations.

A run's scores and embeddings never change after ingest (a re-ingested run gets a new
id, and ids are never reused), so the API can keep them as NumPy arrays keyed by run
id without invalidation. Counts, histograms and nearest neighbours read every pair of
a run; doing that over arrays takes milliseconds where a SQL scan of a million rows
takes seconds. The arrays are loaded from the run's snapshots and embedding blocks (a
few large reads). Both caches are bounded in bytes and drop the least recently used run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection, select

from clipmem.backend.models import EmbeddingBlock, Run
from clipmem.backend.snapshots import EMBEDDING_ROWS, SCORES, read_snapshot
from clipmem.scoring.columns import FLAG_COLUMNS, REASON


@dataclass
class ScoreFrame:
    """One run's scored pairs, in pair_index order, from the run's snapshot."""

    pair_index: np.ndarray          # int64
    split_code: np.ndarray          # integer codes into split_values
    split_values: tuple[str, ...]
    truth_code: np.ndarray          # integer codes into truth_values
    truth_values: tuple[str, ...]
    caption_search: object          # pyarrow string array: lower-cased captions joined by newlines
    scores: dict[str, np.ndarray]   # float64 per score column the run has
    # bool per flag column (scoring.columns.FLAG_COLUMNS) the run has
    flags: dict[str, np.ndarray] = field(default_factory=dict)
    # each pair's reason (scoring.columns.REASONS) as integer codes into reason_values; None when the run has none
    reason_code: np.ndarray | None = None
    reason_values: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.pair_index)

    @property
    def nbytes(self) -> int:
        return (self.pair_index.nbytes + self.split_code.nbytes + self.truth_code.nbytes
                + self.caption_search.nbytes + sum(v.nbytes for v in (*self.scores.values(), *self.flags.values()))
                + (self.reason_code.nbytes if self.reason_code is not None else 0))

    def codes(self, field: str, values: list[str]) -> np.ndarray:
        known = {"split": self.split_values, "truth": self.truth_values, REASON: self.reason_values}[field]
        return np.array([known.index(v) for v in values if v in known], dtype=np.int64)

    def caption_contains(self, text: str) -> np.ndarray:
        import pyarrow.compute as pc

        return np.asarray(pc.match_substring(self.caption_search, text))

    @classmethod
    def load(cls, conn: Connection, run: Run) -> "ScoreFrame":
        table = read_snapshot(conn, run.id, SCORES)
        split, truth = table.column("split").combine_chunks(), table.column("truth").combine_chunks()
        # snapshots of runs scored (or ingested) before issue 18 have no reason column
        reason = table.column(REASON).combine_chunks() if REASON in table.column_names else None
        return cls(pair_index=table.column("pair_index").to_numpy(),
                   split_code=split.indices.to_numpy(), split_values=tuple(split.dictionary.to_pylist()),
                   truth_code=truth.indices.to_numpy(), truth_values=tuple(truth.dictionary.to_pylist()),
                   caption_search=table.column("caption_search").combine_chunks(),
                   scores={name: table.column(name).to_numpy() for name in run.score_names},
                   flags={name: table.column(name).to_numpy(zero_copy_only=False)
                          for name in FLAG_COLUMNS if name in table.column_names},
                   reason_code=reason.indices.to_numpy() if reason is not None else None,
                   reason_values=tuple(reason.dictionary.to_pylist()) if reason is not None else ())


@dataclass
class EmbeddingSet:
    """One run's embeddings: for each literal model (f, g) and modality, an (N, D) float32 matrix whose
    row r belongs to the pair at pair_index[r]."""

    matrices: dict[tuple[str, str], np.ndarray]
    pair_index: np.ndarray  # int64, by embedding row

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.matrices.values()) + self.pair_index.nbytes

    @classmethod
    def load(cls, conn: Connection, run: Run) -> "EmbeddingSet":
        n, dim = run.n_embedded, run.embedding_dim
        matrices = {}
        for model in ("f", "g"):
            for modality in ("image", "text"):
                matrix = np.empty((n, dim), dtype=np.float32)
                rows = conn.execute(select(EmbeddingBlock.first_row, EmbeddingBlock.n_rows, EmbeddingBlock.data)
                                    .where(EmbeddingBlock.run_id == run.id, EmbeddingBlock.model == model,
                                           EmbeddingBlock.modality == modality)
                                    .order_by(EmbeddingBlock.block_index).execution_options(yield_per=1))
                for first, count, data in rows:
                    matrix[first:first + count] = np.frombuffer(data, dtype="<f2").reshape(count, dim)
                matrices[(model, modality)] = matrix
        pair_index = read_snapshot(conn, run.id, EMBEDDING_ROWS).column("pair_index").to_numpy()
        return cls(matrices=matrices, pair_index=pair_index)


class RunCache:
    """Per-run values built on first use, kept until `budget_bytes` forces out the least recently used."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._items: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, run_id: int, build: Callable[[], object]):
        with self._lock:
            if run_id in self._items:
                self._items.move_to_end(run_id)
                return self._items[run_id]
            loading = self._loading.setdefault(run_id, threading.Lock())
        with loading:  # one build per run even when many requests ask at once
            with self._lock:
                if run_id in self._items:
                    return self._items[run_id]
            value = build()
            with self._lock:
                self._items[run_id] = value
                self._loading.pop(run_id, None)
                while len(self._items) > 1 and sum(v.nbytes for v in self._items.values()) > self.budget:
                    self._items.popitem(last=False)
            return value

    def discard(self, run_id: int) -> None:
        with self._lock:
            self._items.pop(run_id, None)
