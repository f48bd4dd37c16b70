"""Shared fixtures: a tiny synthetic dataset and one tiny finished run, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipmem.scoring.runtime import keep_freed_memory, prefer_passive_openmp  # noqa: I001

prefer_passive_openmp()  # first: it only takes effect before torch loads
keep_freed_memory()
import torch  # noqa: I001
from run_fixtures import TINY_SYNTH, tiny_run_config
from clipmem.scoring.data.synthetic import write

# one torch thread per process when pytest-xdist runs the suite in two (make test), two in a single process
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
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
