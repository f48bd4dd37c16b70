"""Shared fixtures: a tiny synthetic dataset and one tiny finished run, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

import scoring  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)
import torch  # noqa: I001
from scoring.config import DataConfig, RunConfig, SplitConfig, TrainConfig
from scoring.data.synthetic import SynthConfig, write
from scoring.splits import SplitSizes

torch.set_num_threads(2)

TINY_SYNTH = SynthConfig(n_pairs=900, seed=3, faults={"swapped": 0.05, "vague": 0.01, "atypical": 0.02})
TINY_SIZES = SplitSizes(shared=600, candidate=120, independent=120, extra=60)


def tiny_run_config(data_path: Path, epochs: int = 25, seed: int = 0) -> RunConfig:
    return RunConfig(
        data=DataConfig(kind="folder", path=str(data_path)),
        split=SplitConfig(sizes=TINY_SIZES, seed=seed),
        train=TrainConfig(model="clipmem-tiny", epochs=epochs, batch_size=128, warmup_steps=10,
                          init_seed=seed, data_seed=seed),
    )


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
