"""Engines, sessions and schema migrations for SQLite and PostgreSQL.

SQLite gets real transactions (BEGIN issued by SQLAlchemy, so DDL and bulk inserts
roll back together), WAL so the API reads while an ingest writes, and foreign keys on.
A write session (`session_factory(engine, write=True)`) takes SQLite's write lock when its
transaction begins, so concurrent writers queue for the busy timeout instead of failing.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from clipmem.scoring.errors import ClipmemError

MIGRATIONS = Path(__file__).parent / "migrations"
RUN_PARTITION = re.compile(r"^(samples|scores|embedding_points|pair_neighbours)_run_\d+$")
# execution option marking the connections of write sessions (SQLite begins them with BEGIN IMMEDIATE)
WRITE_LOCK = "clipmem_write_lock"


def make_engine(url: str, bulk_write: bool = False) -> Engine:
    """An engine for `url`; `bulk_write` gives SQLite a large page cache for ingest."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ClipmemError(f"database URL '{url}' is not a valid SQLAlchemy URL "
                           "(e.g. sqlite:///clipmem.db or postgresql+psycopg://user@host/db)") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise ClipmemError(f"database URL '{url}': folder {folder} does not exist")
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine, cache_kib=1_000_000 if bulk_write else 16_000,
                          journal="DELETE" if bulk_write else "WAL", foreign_keys=not bulk_write)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)
    raise ClipmemError(f"database URL '{url}': only sqlite and postgresql are supported")


def _configure_sqlite(engine: Engine, cache_kib: int, journal: str = "WAL", foreign_keys: bool = True) -> None:
    """Pragmas for every connection. Serving uses WAL, so readers never wait for an ingest. A bulk
    ingest asks for a rollback journal instead: WAL writes every new page twice (to the log, then to
    the database at the checkpoint), a rollback journal only the few pages that existed before, and it
    is as crash-safe. SQLite refuses the switch while another connection (a running server) has the
    file open, and the ingest then stays in WAL; the next server start turns WAL back on. A bulk ingest
    also skips the per-row foreign-key lookups (a million of them for the scores alone): it writes the keys
    it has just created, and deleting a run removes its children explicitly (store.delete_run)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # let SQLAlchemy, not the sqlite3 module, decide where transactions begin
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            cursor.execute(f"PRAGMA journal_mode={journal}")
        except sqlite3.OperationalError:
            pass  # another connection has the file open: keep its journal mode rather than wait
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA threads=4")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # A deferred BEGIN takes a read snapshot at the first SELECT; a write in the same transaction
        # must then upgrade it, and in WAL mode that fails at once with "database is locked" (the busy
        # timeout is not consulted) when another writer committed since the snapshot. A write transaction
        # therefore takes the write lock up front, waiting up to busy_timeout for the current writer.
        # Readers keep the deferred BEGIN, so they never wait for writers.
        write = connection.get_execution_options().get(WRITE_LOCK, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def session_factory(engine: Engine, write: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`; `write` ones hold the database's write lock for their whole transaction
    on SQLite (BEGIN IMMEDIATE; PostgreSQL's row locks need nothing more), so use them for requests that
    write and keep reads on the plain ones."""
    bind = engine.execution_options(**{WRITE_LOCK: True}) if write else engine
    return sessionmaker(bind, expire_on_commit=False)


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "head")


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Alembic's filter for comparing the database with the models: per-run partitions (PostgreSQL), and
    the foreign keys PostgreSQL clones onto each of them, are made by ingest, not by migrations."""
    if not reflected:
        return True
    if type_ == "table":
        return not RUN_PARTITION.match(name or "")
    if type_ == "foreign_key_constraint":
        return not RUN_PARTITION.match(obj.referred_table.name)
    return True
