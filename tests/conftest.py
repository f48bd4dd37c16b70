"""Shared fixtures: a tiny synthetic dataset and one tiny finished run, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

import scoring  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)
import torch  # noqa: I001
from run_fixtures import TINY_SYNTH, tiny_run_config
from scoring.data.synthetic import write

torch.set_num_threads(2)

@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write(TINY_SYNTH, tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """A finished tiny run: (RunDir, RunConfig)."""
    from scoring.pipeline import run_all
    from scoring.rundir import RunDir

    run = RunDir(tmp_path_factory.mktemp("runs") / "tiny")
    cfg = tiny_run_config(tiny_data)
    run.prepare_new(overwrite=False)
    run_all(run, cfg, show_progress=False)
    return run, cfg
