"""Shared fixtures: a tiny synthetic dataset and one tiny finished run, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipmem.scoring.runtime import keep_freed_memory, prefer_passive_openmp  # noqa: I001

prefer_passive_openmp()  # first: it only takes effect before torch loads
keep_freed_memory()
# one torch thread per process when pytest-xdist runs the suite in two (make test), two in a single process. Set
# through the environment, which torch reads when it loads, rather than by importing torch here: a pytest that
# collects only torch-free tests (the child runs of test_prerequisites.py) then never spends the seconds loading it
os.environ["OMP_NUM_THREADS"] = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
from run_fixtures import TINY_SYNTH, tiny_run_config  # noqa: E402

@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from clipmem.scoring.data.synthetic import write

    return write(TINY_SYNTH, tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """A finished tiny run: (RunDir, RunConfig)."""
    from clipmem.scoring.pipeline import run_all
    from clipmem.scoring.rundir import RunDir

    run = RunDir(tmp_path_factory.mktemp("runs") / "tiny")
    cfg = tiny_run_config(tiny_data)
    run.prepare_new(overwrite=False)
    run_all(run, cfg, show_progress=False)
    return run, cfg
