"""A live backend for the dashboard's tests: the session's tiny scored run and two small made-up runs without
per-tower scores (sharing their sample ids, so they can be compared), ingested into a temporary SQLite
database and served by `clipmem serve` on a free port."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from clipmem.backend.synthetic_run import write_synthetic_run
from tests.frontend.stack import backend, ingest

APP = Path(__file__).resolve().parents[2] / "frontend" / "app.py"
TINY = "tiny"      # the real tiny run (tests/conftest.py), scored by the pipeline, with per-tower scores
PLAIN = "plain"    # made-up runs (backend.synthetic_run) with the required scores only
PLAIN_B = "plain-b"  # the same sample ids as PLAIN, other scores, as scored before the evidence of why a pair is
#                      memorized (no reason, miscaption or neighbours); ingested last, so the newest run
# PLAIN's config.json says it was fine-tuned from a base with the text tower locked (as --pretrained FILE
# --lock-text writes it); TINY was trained from scratch
PLAIN_BASE_SHA256 = "3f7a9c1d" + "0123456789abcdef" * 3 + "8e2b5a6f"
PLAIN_TRAIN = {"pretrained": "/models/bases/base-seed7.pt", "pretrained_sha256": PLAIN_BASE_SHA256,
               "lock_text": True, "lock_text_unlocked_layers": 0}


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("frontend_stack")


@pytest.fixture(scope="session")
def database_url(stack_dir, tiny_run) -> str:
    from clipmem.backend.synthetic_run import write_synthetic_run

    url = f"sqlite:///{stack_dir / 'clipmem.frontend.db'}"
    run, _ = tiny_run
    ingest(run.path, url, TINY, stack_dir / "ingest.log")
    for name, seed in ((PLAIN, 5), (PLAIN_B, 6)):
        made_up = write_synthetic_run(stack_dir / name, n_candidate=60, n_independent=60, n_shared=100, n_extra=20,
                                      seed=seed, train=PLAIN_TRAIN if name == PLAIN else None,
                                      evidence=name != PLAIN_B)
        ingest(made_up, url, name, stack_dir / "ingest.log")
    return url


def probability(value: float) -> str:
    """A p- or q-value as the pages print it: 3 decimals, 2 significant digits below 0.001."""
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


@dataclass(frozen=True)
class RunFiles:
    scores: pd.DataFrame
    null: pd.DataFrame
    layers: pd.DataFrame
    fdr: float  # the FDR the run was scored at


@pytest.fixture(scope="session")
def tiny_files(tiny_run) -> RunFiles:
    """The tiny run's own files read with pandas, and the FDR it was run at. What the pages show of
    significance is checked against these, not against the backend that serves them."""
    run, cfg = tiny_run
    return RunFiles(pd.read_parquet(run.scores), pd.read_parquet(run.null), pd.read_parquet(run.layers),
                    cfg.score.fdr)


@pytest.fixture(scope="session")
def api_url(database_url, stack_dir) -> str:
    with backend(database_url, stack_dir) as url:
        yield url


@pytest.fixture(scope="session")
def api(api_url) -> httpx.Client:
    """Direct access to the test backend, to check what the pages show against it."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


READ_TOKEN, WRITE_TOKEN = "read-s3cret", "write-s3cret"
KEPT = "locked-run"  # the locked backend's run that no test deletes


@dataclass
class LockedBackend:
    """A backend with a read and a write token, over a database of its own (tests delete runs from it)."""

    url: str
    database_url: str

    def add_run(self, name: str, seed: int) -> str:
        """Ingest a small made-up run under `name` (while the backend serves the same database)."""
        from clipmem.backend.db import make_engine
        from clipmem.backend.ingest import ingest as ingest_run
        from clipmem.backend.synthetic_run import write_synthetic_run

        engine = make_engine(self.database_url)
        try:
            ingest_run(engine, write_synthetic_run(Path(tempfile.mkdtemp(prefix=f"{name}-")), 30, 30, 30, 10,
                                                   seed=seed), name=name)
        finally:
            engine.dispose()
        return name

    def get(self, path: str, token: str = READ_TOKEN) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture(scope="session")
def locked_backend(tmp_path_factory) -> LockedBackend:
    root = tmp_path_factory.mktemp("locked_stack")
    url = f"sqlite:///{root / 'locked.db'}"
    ingest(write_synthetic_run(root / KEPT, n_candidate=60, n_independent=60, n_shared=100, n_extra=20, seed=9), url,
           KEPT, root / "ingest.log")
    with backend(url, root, token=READ_TOKEN, write_token=WRITE_TOKEN) as served:
        yield LockedBackend(served, url)


@pytest.fixture()
def locked_env(locked_backend, monkeypatch) -> LockedBackend:
    """The dashboard's environment pointed at the locked backend, with empty caches."""
    monkeypatch.setenv("CLIPMEM_API_URL", locked_backend.url)
    st.cache_data.clear()
    yield locked_backend
    st.cache_data.clear()


@pytest.fixture()
def app_env(api_url):
    """The dashboard's environment pointed at the test backend, with empty caches."""
    saved = {k: os.environ.get(k) for k in ("CLIPMEM_API_URL", "CLIPMEM_API_TOKEN", "CLIPMEM_API_WRITE_TOKEN")}
    os.environ["CLIPMEM_API_URL"] = api_url
    st.cache_data.clear()
    yield api_url
    st.cache_data.clear()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def open_page(app_env):
    """open_page(page, **query_params) -> a finished AppTest run of that page ("explore", "sample", ...)."""

    def _open(page: str, **params: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params.update(params)
        at.run()
        if page != "explore":
            at.query_params.update(params)  # a page switch keeps the URL's params in the browser
            at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return _open
