"""CLIPMem over training time (issue 19, scoring/trajectory.py): --track-epochs scores f and g during training
without changing it, its last epoch's rows are the final scores, a resumed training continues the trajectory, and
the per-pair summaries are the ones defined in docs/trajectory.md."""

import math
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from clipmem.cli import app
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.models import create_model
from clipmem.scoring.pipeline import load_corpus, run_all, train_step
from clipmem.scoring.report import memorization_epochs
from clipmem.scoring.trajectory import epoch_rows, pair_dynamics, parse_track_epochs
from run_fixtures import split_tiny_run

EPOCHS = 2
KEY = ["sample_id", "epoch", "null_for"]


def plan(path, tiny_data, **train):
    run, cfg = split_tiny_run(path, tiny_data, epochs=EPOCHS)
    cfg.train = replace(cfg.train, **train)
    # the per-encoder scores take most of the scoring time and have nothing to do with the trajectory
    cfg.score = replace(cfg.score, towers=False, layers=False)
    return run, cfg


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_data):
    """A finished tiny run tracked at every epoch, its checkpoints all kept."""
    run, cfg = plan(tmp_path_factory.mktemp("tracked") / "run", tiny_data, track_epochs=[1, 2],
                    keep_checkpoints=EPOCHS)
    run_all(run, cfg, show_progress=False)
    return run, cfg


def state(run, name):
    return torch.load(run.model_checkpoint(name), weights_only=True)["state_dict"]


def test_tracking_leaves_the_trained_weights_bit_identical(tracked, tmp_path, tiny_data):
    run, _ = tracked
    plain, cfg = plan(tmp_path / "plain", tiny_data)
    train_step(plain, cfg, show_progress=False)
    assert not plain.trajectory.exists()
    for name in ("f", "g"):
        a, b = state(run, name), state(plain, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_the_last_epochs_rows_are_the_final_scores(tracked):
    """The same views, captions and weights as the final scoring: equal to the last bit on the CPU here (the text
    embeddings are encoded in other batches than the final scoring's, which BLAS may round differently, hence a
    float tolerance rather than equality)."""
    run, _ = tracked
    trajectory = pd.read_parquet(run.trajectory)
    assert not trajectory.duplicated(KEY).any()
    scores = pd.read_parquet(run.scores)
    last = trajectory[(trajectory["epoch"] == EPOCHS) & trajectory["null_for"].isna()].set_index("sample_id")
    assert set(last.index) == set(scores["sample_id"])
    last = last.loc[scores["sample_id"]]
    for column in ("align_f", "align_g", "clipmem_raw", "clipmem_contrastive_raw"):
        np.testing.assert_allclose(last[column], scores[column], rtol=0, atol=1e-6, err_msg=column)
    null = pd.read_parquet(run.null).set_index(["sample_id", "null_for"])
    rows = trajectory[(trajectory["epoch"] == EPOCHS) & trajectory["null_for"].notna()]
    rows = rows.set_index(["sample_id", "null_for"]).loc[null.index]
    np.testing.assert_allclose(rows["clipmem_raw"], null["clipmem_raw"], rtol=0, atol=1e-6)
    # the first epoch differs: the trajectory moves
    first = trajectory[(trajectory["epoch"] == 1) & trajectory["null_for"].isna()].set_index("sample_id")
    assert not np.allclose(first.loc[scores["sample_id"], "align_f"], scores["align_f"], atol=1e-3)


def test_scoring_in_training_puts_modes_and_random_state_back(tracked):
    """Scoring needs evaluation mode; the training must find each module as it left it (a frozen part stays in
    evaluation mode), and the global random stream where it was. f and g with the same weights (as at epoch 0)
    give every pair, scored or null, raw 0 exactly: the start of mem_auc's curve."""
    run, cfg = tracked
    corpus, _, model_cfg = load_corpus(run, cfg)
    models = {name: create_model(model_cfg, cfg.train.init_seed).train() for name in ("f", "g")}
    models["g"].visual.eval()
    modes = {name: [m.training for m in model.modules()] for name, model in models.items()}
    assert any(modes["f"]) and not all(modes["g"])
    rng = torch.get_rng_state()
    rows = epoch_rows(models, corpus, cfg.score, cfg.train, torch.device("cpu"), epoch=0)
    assert {name: [m.training for m in model.modules()] for name, model in models.items()} == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert (rows["clipmem_raw"] == 0).all() and (rows["clipmem_contrastive_raw"] == 0).all()
    assert rows["null_for"].isna().sum() == len(pd.read_parquet(run.scores)) and rows["null_for"].notna().any()


def test_resume_continues_the_trajectory_without_duplicates(tracked, tmp_path):
    """Killed after epoch 1's checkpoint, with epoch 2's rows written (a kill between the rows and the checkpoint)
    and epoch 1's rows lost: the resumed training scores epoch 1 from its checkpoint, drops the stale epoch 2 rows
    and scores epoch 2 again, to the same values."""
    run, cfg = tracked
    straight = pd.read_parquet(run.trajectory).sort_values(KEY, na_position="first").reset_index(drop=True)
    copy = type(run)(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    (copy.checkpoints / f"epoch_{EPOCHS}.pt").unlink()
    for name in ("f", "g"):
        copy.model_checkpoint(name).unlink()
    rows = pd.read_parquet(copy.trajectory)
    rows[rows["epoch"] != 1].to_parquet(copy.trajectory, index=False)
    train_step(copy, cfg, resume=True, show_progress=False)
    resumed = pd.read_parquet(copy.trajectory)
    assert not resumed.duplicated(KEY).any()
    resumed = resumed.sort_values(KEY, na_position="first").reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, straight)


def constructed_trajectory():
    """Two scored pairs tracked at epochs 10, 20, 40 of 40, and a null of 21 pairs per direction.

    Candidate null at epochs 10 and 40: 0.00, 0.01, ..., 0.20, whose 95% quantile is the 20th value (position
    0.95 * 20 = 19), 0.19; at epoch 20: 0.00, 0.02, ..., 0.40, quantile 0.38. The independent null is 1 higher."""
    rows = []
    for epoch, step in ((10, 0.01), (20, 0.02), (40, 0.01)):
        for i in range(21):
            for key, offset in (("candidate", 0.0), ("independent", 1.0)):
                rows.append({"sample_id": f"e{i}", "epoch": epoch, "null_for": key, "clipmem_raw": offset + i * step})
    for sid, raws in (("a", (0.1, 0.5, 0.3)), ("b", (0.5, 0.5, 0.5))):
        for epoch, raw in zip((10, 20, 40), raws):
            rows.append({"sample_id": sid, "epoch": epoch, "null_for": None, "clipmem_raw": raw})
    return pd.DataFrame(rows)


def test_dynamics_against_hand_computed_values():
    """Pair a (candidate) raw 0.1, 0.5, 0.3: above its direction's threshold (0.19, 0.38, 0.19) first at epoch 20;
    area over fractions 0, 0.25, 0.5, 1 of raw 0, 0.1, 0.5, 0.3: 0.25 * 0.05 + 0.25 * 0.3 + 0.5 * 0.4 = 0.2875;
    variability sqrt((0.04 + 0.04 + 0) / 3). Pair b (independent) raw 0.5 throughout stays below its direction's
    thresholds (1.19, 1.38, 1.19), though above the candidate ones: never memorized; area 0.0625 + 0.125 + 0.25."""
    scores = pd.DataFrame({"sample_id": ["b", "a"], "split": ["independent", "candidate"]})
    out = pair_dynamics(scores, constructed_trajectory(), epochs=40)
    assert list(out.index) == [0, 1]
    b, a = out.iloc[0], out.iloc[1]
    assert a["mem_epoch"] == 20 and math.isnan(b["mem_epoch"])
    assert a["mem_auc"] == pytest.approx(0.2875) and b["mem_auc"] == pytest.approx(0.4375)
    assert a["mem_variability"] == pytest.approx(math.sqrt(0.08 / 3)) and b["mem_variability"] == pytest.approx(0)
    # the same curve over 80 epochs at epochs 20, 40, 80 has the same area: it is over the fraction of training
    doubled = constructed_trajectory().assign(epoch=lambda t: t["epoch"] * 2)
    assert pair_dynamics(scores, doubled, epochs=80)["mem_auc"].tolist() == pytest.approx([0.4375, 0.2875])
    # without null rows (a run without S_E pairs) no pair has a memorization epoch
    trajectory = constructed_trajectory()
    alone = pair_dynamics(scores, trajectory[trajectory["null_for"].isna()], epochs=40)
    assert alone["mem_epoch"].isna().all() and alone["mem_auc"].tolist() == pytest.approx([0.4375, 0.2875])


def test_report_median_memorization_epoch_per_tag():
    scores = pd.DataFrame({"truth": ["swapped"] * 4 + ["clean"] * 3,
                           "mem_epoch": [8, 16, 24, np.nan, np.nan, np.nan, 40]})
    rows = {row["truth"]: row for row in memorization_epochs(scores)}
    assert rows["swapped"] == {"truth": "swapped", "pairs": 4, "memorized": 3, "fraction": 0.75,
                               "median_mem_epoch": 16.0}
    assert rows["clean"]["memorized"] == 1 and rows["clean"]["median_mem_epoch"] == 40.0
    assert memorization_epochs(scores.drop(columns="mem_epoch")) == []


def test_track_epochs_parsing():
    assert parse_track_epochs("8,16, 24,32", 40) == [8, 16, 24, 32, 40]
    assert parse_track_epochs("5,5,1", 10) == [1, 5, 10]  # repeats dropped, the last epoch added
    assert parse_track_epochs("every:15", 40) == [15, 30, 40]
    assert parse_track_epochs("every:3", 3) == [3]
    for text, message in (("0", "epoch 0 is outside 1..40"), ("41", "epoch 41 is outside 1..40"),
                          ("5,x", "'x' is not an epoch number"), ("", "'' is not an epoch number"),
                          ("every:0", "every:K needs a whole number"), ("every:two", "every:K needs a whole number"),
                          ("every:41", "K = 41 is beyond the run's 40 epochs")):
        with pytest.raises(ClipmemError, match=message):
            parse_track_epochs(text, 40)


@pytest.mark.parametrize("extra, message", [
    (["--track-epochs", "9"], "--track-epochs: epoch 9 is outside 1..3"),
    (["--track-epochs", "2", "--scheme", "kfold", "--folds", "3"], "not the kfold scheme's fold models"),
    (["--track-epochs", "every:1", "--replicas", "2"], "not 2 replicas (--replicas)"),
])
def test_run_refuses_before_writing_anything(tmp_path, extra, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--out", str(out), "--model", "clipmem-tiny", "--epochs", "3", *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_train_refuses_tracking_separate_jobs(tmp_path, tiny_data):
    run, cfg = plan(tmp_path / "run", tiny_data, track_epochs=[EPOCHS])
    with pytest.raises(ClipmemError, match="train them in one job, without --only"):
        train_step(run, cfg, only=["f"], show_progress=False)
