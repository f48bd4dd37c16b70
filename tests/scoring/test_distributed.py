"""Training under torchrun: 2 CPU processes (gloo) end with identical weights, close to 1-process training.

Found on this machine (tiny data, 2 epochs, 12 steps): 2-process and 1-process weights differ by at most
~1e-4 (the global loss is summed in another order), and the per-epoch losses agree to ~1e-6; not bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from run_fixtures import tiny_run_config
from clipmem.scoring.distributed import share_bounds, share_sizes, weights_digest
from clipmem.scoring.models import create_model
from clipmem.scoring.pipeline import split_step, train_step
from clipmem.scoring.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_shares_cover_a_batch_in_order():
    for n in (0, 1, 5, 85, 128):
        for parts in (2, 3):
            bounds = [share_bounds(n, parts, r) for r in range(parts)]
            assert bounds[0].start == 0 and bounds[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(bounds, bounds[1:]))
            assert [b.stop - b.start for b in bounds] == share_sizes(n, parts)
            assert max(share_sizes(n, parts)) - min(share_sizes(n, parts)) <= 1


def _split(tmp_path, tiny_data, name, **split):
    run = RunDir(tmp_path / name)
    run.prepare_new(False)
    cfg = tiny_run_config(tiny_data, epochs=2, seed=5)
    # 720 slots in batches of 127: the tail batch splits 43 / 42, so shares of unequal size are exercised
    cfg.train = replace(cfg.train, batch_size=127)
    cfg.split = replace(cfg.split, **split)
    split_step(run, cfg)
    return run, cfg


def _weights(run: RunDir, name: str) -> dict:
    return torch.load(run.model_checkpoint(name), weights_only=True)["state_dict"]


@pytest.mark.parametrize("scheme, models", [
    ({}, ("f", "g")),
    ({"scheme": "kfold", "folds": 3}, ("fold0", "fold1", "fold2")),
])
def test_two_processes_agree_and_track_one(tmp_path, tiny_data, scheme, models):
    single, cfg = _split(tmp_path, tiny_data, "single", **scheme)
    train_step(single, cfg, show_progress=False)
    run = RunDir(tmp_path / "ddp")
    shutil.copytree(single.path, run.path, ignore=shutil.ignore_patterns("*.pt", "checkpoints", "train_*"))

    proc = torchrun("-m", "clipmem", "train", run.path, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stdout
    summary = json.loads((run.path / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_agree"] is True
    assert summary["rank_weights_sha256"][0] == summary["rank_weights_sha256"][1]
    model_cfg = json.loads((run.path / "model_config.json").read_text())
    for name in models:
        model = create_model(model_cfg, 0)
        model.load_state_dict(_weights(run, name))
        assert weights_digest(model) == summary["weights_sha256"][name]  # rank 0's file = every rank's weights
        one, two = _weights(single, name), _weights(run, name)
        assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-3, name
    log_one = [json.loads(line) for line in single.train_log.read_text().splitlines()]
    log_two = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    for a, b in zip(log_one, log_two, strict=True):
        for name in models:
            assert b[f"loss_{name}"] == pytest.approx(a[f"loss_{name}"], abs=1e-4)


def test_clipmem_train_under_torchrun_resumes(tmp_path, tiny_data):
    """`clipmem train` (here via python -m clipmem) detects torchrun; --resume continues on every rank."""
    run, cfg = _split(tmp_path, tiny_data, "run")
    cfg.train = replace(cfg.train, epochs=1)
    run.save_config(cfg)
    assert torchrun("-m", "clipmem", "train", run.path).returncode == 0
    cfg.train = replace(cfg.train, epochs=2)
    run.save_config(cfg)
    proc = torchrun("-m", "clipmem", "train", run.path, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained f and g") == 1  # rank 0 reports
    log = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert json.loads((run.path / "train_summary.json").read_text())["ranks_agree"] is True
