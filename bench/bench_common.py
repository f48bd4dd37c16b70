"""What the backend benchmarks share: the machine they ran on, a PostgreSQL schema of their own, the loop over
the databases asked for, and where results go. Imported by the scripts beside it (bench/ is first on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_average_start": round(os.getloadavg()[0], 2)}


def postgres_schema(base: str, prefix: str = "clipmem_bench") -> tuple[str, Callable[[], None]]:
    """A fresh schema on the PostgreSQL server at `base`: (URL whose search_path is that schema, drop())."""
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))

    def drop():
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}", drop


def each_database(only: str | None, postgres: str | None, sqlite_url: str,
                  measure: Callable[[str, str], dict]) -> dict:
    """{kind: measure(kind, url)} for SQLite and PostgreSQL, or the one `only` names; PostgreSQL in a schema of
    its own, dropped afterwards, and left out with a line when no URL is given."""
    out = {}
    if only in (None, "sqlite"):
        out["sqlite"] = measure("sqlite", sqlite_url)
    if only in (None, "postgresql"):
        if not postgres:
            print("no PostgreSQL URL (--postgres or CLIPMEM_TEST_DATABASE_URL): PostgreSQL skipped", flush=True)
        else:
            url, drop = postgres_schema(postgres)
            try:
                out["postgresql"] = measure("postgresql", url)
            finally:
                drop()
    return out


def write_results(name: str, label: str, results: dict, table: str) -> None:
    """bench/results/NAME[-LABEL].json and .md, and the table on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"-{label}" if label else ""
    (RESULTS / f"{name}{suffix}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{name}{suffix}.md").write_text(table)
    print(table)
