"""Backend fixtures: databases (SQLite, and PostgreSQL when CLIPMEM_TEST_DATABASE_URL is set), small
contract-following run directories, and an API client over a database holding them.

Every test that takes `database_url` (directly or through `db`/`client`) runs once per database. On
PostgreSQL each test session works in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from clipmem.backend.db import make_engine, migrate
from clipmem.backend.ingest import ingest
from clipmem.backend.synthetic_run import write_synthetic_run
from tests.prerequisites import skip_or_fail

PG_ENV = "CLIPMEM_TEST_DATABASE_URL"
# sizes of the standard fake runs: (candidate, independent, shared, extra)
SIZES = (120, 100, 150, 40)


def _postgres_schema_url(base: str):
    schema = f"clipmem_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    return admin, schema, f"{base}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A migrated, empty database per session and kind. PostgreSQL without its URL, or unreachable, is skipped
    locally and fails the run under CI (tests/prerequisites.py)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'clipmem.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        skip_or_fail(f"{PG_ENV} is not set: the PostgreSQL half of the backend tests is skipped")
    try:
        admin, schema, url = _postgres_schema_url(base)
    except OperationalError as exc:
        skip_or_fail(f"PostgreSQL at {PG_ENV} is unreachable ({str(exc.orig).strip().splitlines()[0]}): "
                     "the PostgreSQL half of the backend tests is skipped")
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def fake_runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories following scoring's contract. alpha and beta share sample ids (for comparisons)."""
    root = tmp_path_factory.mktemp("runs")
    c, i, s, e = SIZES
    return {
        "alpha": write_synthetic_run(root / "alpha", c, i, s, e, seed=1),
        "beta": write_synthetic_run(root / "beta", c, i, s, e, seed=2),
        "shards": write_synthetic_run(root / "shards", 30, 30, 40, 10, seed=3, images="tar"),
        # optional score columns, and sample ids with '/' and spaces, as folder datasets have
        "mem": write_synthetic_run(root / "mem", 40, 40, 40, 10, seed=4, optional_scores=True,
                                   id_format="mem/set a/{:04d}.png"),
        # significance (issue 15): null.parquet, p- and q-values, memorized flags, intervals
        "sig": write_synthetic_run(root / "sig", 120, 100, 40, 80, seed=7, optional_scores=True, significance=True),
    }


@dataclass
class Database:
    url: str
    engine: Engine


@pytest.fixture(scope="session")
def db(database_url, fake_runs) -> Database:
    """The database with every fake run ingested under its directory name. Tests must not change these
    runs (tags they add are removed again); tests that delete or replace ingest runs of their own."""
    engine = make_engine(database_url)
    migrate(engine)
    for path in fake_runs.values():
        ingest(engine, path)
    yield Database(database_url, engine)
    engine.dispose()


@pytest.fixture(scope="session")
def client(db):
    from fastapi.testclient import TestClient

    from clipmem.backend.api.app import create_app
    from clipmem.backend.settings import Settings

    with TestClient(create_app(Settings(database_url=db.url, api_token=None))) as test_client:
        yield test_client

