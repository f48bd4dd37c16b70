"""f and g trained as separate jobs at once equal f and g trained together."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from run_fixtures import split_tiny_run
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.pipeline import train_step
from clipmem.scoring.rundir import RunDir


def state(run: RunDir, name: str) -> dict:
    return torch.load(run.model_checkpoint(name), map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def together(tmp_path_factory, tiny_data):
    run, cfg = split_tiny_run(tmp_path_factory.mktemp("jobs") / "together", tiny_data)
    planned = RunDir(run.path.parent / "planned")
    shutil.copytree(run.path, planned.path)  # the split alone, for the separate jobs
    train_step(run, cfg, show_progress=False)
    return run, planned, cfg


def test_two_concurrent_jobs_give_the_weights_of_one(together, tmp_path):
    run, planned, cfg = together
    jobs = RunDir(tmp_path / "jobs")
    shutil.copytree(planned.path, jobs.path)
    cfg.train.epochs = 2
    jobs.save_config(cfg)
    # the jobs train on as many torch threads as the in-process run did: bit-identical weights need the same
    # reduction order (the suite runs one thread per process under pytest-xdist, a new process takes every core)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    procs = [subprocess.Popen([sys.executable, "-m", "clipmem", "train", str(jobs.path), "--only", name],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for name in ("f", "g")]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    for name in ("f", "g"):
        a, b = state(run, name), state(jobs, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert (jobs.path / f"train_summary.{name}.json").is_file()
        assert (jobs.checkpoints / name).is_dir()


def test_only_names_a_model_of_the_run(together, tmp_path):
    _, planned, cfg = together
    with pytest.raises(ClipmemError, match="--only h: this run's models are f, g"):
        train_step(planned, cfg, show_progress=False, only=["h"])
