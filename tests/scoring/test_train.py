import json

import pytest
import torch

from scoring.config import TrainConfig
from scoring.errors import ClipmemError
from scoring.train import latest_checkpoint, load_training_state, lr_at, slot_tables
from scoring.pipeline import load_corpus
from scoring.rundir import RunDir


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(99, 100, cfg) < 0.01


def test_slots_pair_candidates_with_independents(tiny_run):
    run, cfg = tiny_run
    corpus, _, _ = load_corpus(run, cfg, vocab=None)
    f_rows, g_rows = slot_tables(corpus)
    n_shared = len(corpus.rows("shared"))
    assert torch.equal(f_rows[:n_shared], g_rows[:n_shared])
    assert {corpus.split[r] for r in f_rows[n_shared:].tolist()} == {"candidate"}
    assert {corpus.split[r] for r in g_rows[n_shared:].tolist()} == {"independent"}


def test_training_log_and_checkpoints(tiny_run):
    run, cfg = tiny_run
    log = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, cfg.train.epochs + 1))
    assert log[-1]["loss_f"] < log[0]["loss_f"] and log[-1]["loss_g"] < log[0]["loss_g"]
    kept = sorted(p.name for p in run.checkpoints.glob("epoch_*.pt"))
    assert kept == [f"epoch_{cfg.train.epochs - 1}.pt", f"epoch_{cfg.train.epochs}.pt"]
    f = torch.load(run.model_checkpoint("f"), weights_only=True)
    assert set(f) == {"epoch", "name", "state_dict"}


def test_resume_matches_uninterrupted(tmp_path, tiny_data):
    """Interrupted after epoch 2 of 4 and resumed, training ends on the same weights."""
    from dataclasses import replace

    from run_fixtures import tiny_run_config
    from scoring.pipeline import split_step, train_step

    run = RunDir(tmp_path / "run")
    run.prepare_new(False)
    cfg = tiny_run_config(tiny_data, epochs=4)
    cfg.train = replace(cfg.train, keep_checkpoints=4)
    split_step(run, cfg)
    train_step(run, cfg, show_progress=False)
    straight = torch.load(run.model_checkpoint("g"), weights_only=True)["state_dict"]
    for name in ("epoch_3.pt", "epoch_4.pt", "f.pt", "g.pt"):
        (run.checkpoints / name if name.startswith("epoch") else run.path / name).unlink()
    train_step(run, cfg, resume=True, show_progress=False)
    resumed = torch.load(run.model_checkpoint("g"), weights_only=True)["state_dict"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "epoch_3.pt"
    bad.write_bytes(b"not a checkpoint")
    assert latest_checkpoint(tmp_path) == bad
    with pytest.raises(ClipmemError, match="epoch_3.pt is corrupt"):
        load_training_state(bad)
