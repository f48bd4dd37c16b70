"""Run snapshots: whole-run arrays as Arrow IPC bytes in blocks (see backend.models.RunSnapshot)."""

from __future__ import annotations

import io

from sqlalchemy import Connection, insert, select

from clipmem.backend.models import RunSnapshot

BLOCK_BYTES = 4 * 1024 * 1024
SCORES = "scores"
EMBEDDING_ROWS = "embedding_rows"


def write_snapshot(conn: Connection, run_id: int, name: str, table) -> None:
    """Store a pyarrow Table under `name` for the run."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = memoryview(sink.getvalue())
    conn.execute(insert(RunSnapshot), [
        {"run_id": run_id, "name": name, "block_index": k, "data": bytes(data[start:start + BLOCK_BYTES])}
        for k, start in enumerate(range(0, len(data), BLOCK_BYTES))])


def read_snapshot(conn: Connection, run_id: int, name: str):
    """The pyarrow Table stored under `name`, or None when the run has none.

    Blocks are streamed from the database into Arrow's reader one at a time, so memory holds the
    table once, not the table plus a copy of its bytes."""
    import pyarrow as pa

    blocks = conn.execute(select(RunSnapshot.data).where(RunSnapshot.run_id == run_id, RunSnapshot.name == name)
                          .order_by(RunSnapshot.block_index).execution_options(yield_per=1)).scalars()
    stream = _BlockStream(iter(blocks))
    if stream.peek() is None:
        return None
    return pa.ipc.open_stream(pa.PythonFile(io.BufferedReader(stream, BLOCK_BYTES), mode="r")).read_all()


class _BlockStream(io.RawIOBase):
    """A readable file over an iterator of byte blocks."""

    def __init__(self, blocks):
        self._blocks = blocks
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def peek(self) -> bytes | None:
        if not self._current:
            self._current = memoryview(next(self._blocks, b""))
        return bytes(self._current[:1]) or None

    def readinto(self, target) -> int:
        while not self._current:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._current = memoryview(block)
        n = min(len(target), len(self._current))
        target[:n] = self._current[:n]
        self._current = self._current[n:]
        return n
