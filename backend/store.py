"""Writing and deleting whole runs with bulk loads.

Rows go in as bulk loads, never as ORM objects one by one: on PostgreSQL as COPY of CSV
that Arrow writes (its C++ writer is several times faster than formatting rows in
Python), on SQLite as executemany. A table with a row per pair gets its indexes built by sorting
rather than row by row: on PostgreSQL the run's rows are loaded into a partition of
their own and attached; on SQLite, when the new rows outnumber those already in the
table, its secondary indexes are dropped for the load and rebuilt (inside the same
transaction, so a failure restores them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import Connection, delete, func, select

from clipmem.backend.models import (PARTITIONED, EmbeddingBlock, Run, RunSnapshot, Tag, Thumbnail, TrajectoryPoint,
                                    partition_name)

CHUNK_ROWS = 100_000
Columns = dict[str, Sequence | np.ndarray]  # column name -> one value per row (JSON columns as JSON text)
ROW_COUNT = {"samples": Run.n_samples, "scores": Run.n_scored, "embedding_points": Run.n_embedded,
             "pair_neighbours": Run.n_neighbours}


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def bulk_insert(conn: Connection, table: str, columns: Columns) -> None:
    """Insert the rows given column by column, in the connection's transaction."""
    n = len(next(iter(columns.values())))
    for start in range(0, n, CHUNK_ROWS):
        chunk = {name: values[start:start + CHUNK_ROWS] for name, values in columns.items()}
        if is_postgresql(conn):
            _copy_csv(conn, table, chunk)
        else:
            rows = list(zip(*(v.tolist() if isinstance(v, np.ndarray) else v for v in chunk.values())))
            conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(chunk)}) VALUES ({', '.join('?' * len(chunk))})",
                                 rows)


def _copy_csv(conn: Connection, table: str, columns: Columns) -> None:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    arrays = {}
    for name, values in columns.items():
        if len(values) and isinstance(values[0], bytes):
            values = ["\\x" + v.hex() for v in values]  # bytea's text form
        arrays[name] = pa.array(values)
    sink = pa.BufferOutputStream()
    # every value quoted: an unquoted empty field would be NULL, a quoted one is the empty string
    pa_csv.write_csv(pa.table(arrays), sink, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(sink.getvalue().to_pybytes())


def load_run_rows(conn: Connection, table: str, run_id: int, columns: Columns) -> None:
    """Bulk-load one run's rows into a per-pair table (samples, scores, embedding_points or pair_neighbours)."""
    n_rows = len(next(iter(columns.values())))
    if is_postgresql(conn):
        partition = partition_name(table, run_id)
        conn.exec_driver_sql(f"CREATE TABLE {partition} (LIKE {table} INCLUDING DEFAULTS)")
        bulk_insert(conn, partition, columns)
        # ATTACH builds each index of the parent on the partition (a partial one with its predicate, so the
        # nulls of optional scores get no entries); the builds sort in memory when they can
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
        conn.exec_driver_sql(f"ALTER TABLE {table} ATTACH PARTITION {partition} FOR VALUES IN ({int(run_id)})")
        conn.exec_driver_sql(f"ANALYZE {partition}")
        return
    existing = conn.execute(select(func.coalesce(func.sum(ROW_COUNT[table]), 0)).where(Run.id != run_id)).scalar_one()
    indexes = next(m.__table__.indexes for m in PARTITIONED if m.__tablename__ == table)
    rebuild = n_rows > existing
    if rebuild:
        for index in indexes:
            index.drop(conn)
    bulk_insert(conn, table, columns)
    if rebuild:
        for index in indexes:
            index.create(conn)


def delete_run(conn: Connection, run_id: int) -> None:
    """Remove a run and everything it owns, children first."""
    for model in (Tag, Thumbnail, TrajectoryPoint, EmbeddingBlock, RunSnapshot):
        conn.execute(delete(model).where(model.run_id == run_id))
    for model in reversed(PARTITIONED):  # samples last: the others reference it
        table = model.__tablename__
        if is_postgresql(conn):
            partition = partition_name(table, run_id)
            if conn.exec_driver_sql(f"SELECT to_regclass('{partition}')").scalar() is not None:
                # a partition that foreign keys point at must be detached before it can be dropped
                conn.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {partition}")
                conn.exec_driver_sql(f"DROP TABLE {partition}")
        else:
            conn.execute(delete(model).where(model.run_id == run_id))
    conn.execute(delete(Run).where(Run.id == run_id))
