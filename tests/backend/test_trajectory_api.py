"""CLIPMem over training time (issue 19) through the backend: trajectory.parquet and the dynamics columns ingested,
served per pair, per truth tag and epoch, and as the training-dynamics map; every answer checked against the run's
own Parquet files read with pandas; runs trained without --track-epochs served as unavailable; damaged trajectories
refused at ingest."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text

from clipmem.backend.ingest import ingest
from clipmem.backend.models import Run
from clipmem.backend.rundir import read_run
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.rundir import RunDir
from tests.backend.rewrites import rewritten
from tests.backend.test_ingest import fresh_engine  # noqa: F401 (a fixture: an empty database of its own)

TRACKED = [2, 5, 9, 12]
NAME = "traj"


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("traj") / NAME, 60, 50, 40, 30, seed=91, significance=True,
                               tracked=TRACKED)


@pytest.fixture(scope="module")
def traj(db, client, tracked_run):
    ingest(db.engine, tracked_run)
    yield NAME
    client.delete(f"/runs/{NAME}")


def parquet(path):
    """(trajectory.parquet's scored rows with truth and split, its null rows, scores.parquet)."""
    rows = pd.read_parquet(RunDir(path).trajectory)
    scores = pd.read_parquet(RunDir(path).scores)
    scored = rows[rows["null_for"].isna()].merge(scores[["sample_id", "truth", "split"]], on="sample_id")
    return scored, rows[rows["null_for"].notna()], scores


def p95_by_hand(null: pd.DataFrame, epoch: int, key: str) -> float:
    """The 95th percentile by sorting: linear interpolation between the order statistics around 0.95 (n - 1)."""
    values = np.sort(null.loc[(null["epoch"] == epoch) & (null["null_for"] == key), "clipmem_raw"].to_numpy())
    at = 0.95 * (len(values) - 1)
    low = int(np.floor(at))
    return float(values[low] + (at - low) * (values[min(low + 1, len(values) - 1)] - values[low]))


def test_ingest_stores_the_trajectory_and_the_dynamics(db, traj, tracked_run):
    scored, null, scores = parquet(tracked_run)
    with db.engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.name == traj)).one()
        stored = pd.DataFrame(conn.execute(text(
            "SELECT s.sample_id, t.epoch, t.null_for, t.align_f, t.align_g, t.clipmem_raw, t.clipmem_contrastive_raw "
            "FROM trajectory_points t JOIN samples s ON s.run_id = t.run_id AND s.pair_index = t.pair_index "
            "WHERE t.run_id = :r"), {"r": run.id}).all())
        dynamics = pd.DataFrame(conn.execute(text(
            "SELECT s.sample_id, c.mem_epoch, c.mem_auc, c.mem_variability FROM scores c JOIN samples s ON "
            "s.run_id = c.run_id AND s.pair_index = c.pair_index WHERE c.run_id = :r"), {"r": run.id}).all())
    assert run.tracked_epochs == TRACKED
    written = pd.read_parquet(RunDir(tracked_run).trajectory)
    assert len(stored) == len(written) == (110 + 2 * 30) * len(TRACKED)
    key = ["sample_id", "epoch", "null_for"]
    pd.testing.assert_frame_equal(stored.sort_values(key, ignore_index=True),
                                  written.sort_values(key, ignore_index=True), check_dtype=False)
    expected = scores[["sample_id", "mem_epoch", "mem_auc", "mem_variability"]]
    pd.testing.assert_frame_equal(dynamics.sort_values("sample_id", ignore_index=True),
                                  expected.sort_values("sample_id", ignore_index=True), check_dtype=False)
    assert 0 < dynamics["mem_epoch"].notna().sum() < len(dynamics)  # never-memorized pairs are stored as NULL


def test_a_pairs_trajectory_is_its_rows_ending_at_its_scores(client, traj, tracked_run):
    scored, null, scores = parquet(tracked_run)
    for sid in scores["sample_id"].iloc[[0, 7, 70, 109]]:
        body = client.get(f"/runs/{traj}/samples/{sid}/trajectory").json()
        mine = scored[scored["sample_id"] == sid].sort_values("epoch")
        final = scores[scores["sample_id"] == sid].iloc[0]
        assert body["available"] is True and body["null_for"] == final["split"]
        assert [p["epoch"] for p in body["points"]] == TRACKED
        for name in ("align_f", "align_g", "clipmem_raw", "clipmem_contrastive_raw"):
            assert [p[name] for p in body["points"]] == pytest.approx(mine[name].tolist())
            assert body["points"][-1][name] == pytest.approx(final[name])  # the last epoch is the final scoring
        limits = [p95_by_hand(null, e, final["split"]) for e in TRACKED]
        assert [p["null_p95"] for p in body["points"]] == pytest.approx(limits)
        above = [e for e, raw, limit in zip(TRACKED, mine["clipmem_raw"], limits) if raw > limit]
        assert body["mem_epoch"] == (above[0] if above else None)
        assert body["mem_variability"] == pytest.approx(float(np.std(mine["clipmem_raw"])))
        assert body["mem_auc"] == pytest.approx(final["mem_auc"])


def test_the_run_summary_is_the_pandas_means_per_tag_and_epoch(client, traj, tracked_run):
    scored, null, _ = parquet(tracked_run)
    body = client.get(f"/runs/{traj}/trajectory").json()
    assert body["available"] is True and body["epochs"] == TRACKED
    got = {(c["truth"], c["epoch"]): c for c in body["curves"]}
    expected = pd.concat([scored.assign(truth="all"), scored]).groupby(["truth", "epoch"])
    assert set(got) == set(expected.groups)
    assert body["curves"][0]["truth"] == "all"
    for (truth, epoch), rows in expected:
        curve = got[(truth, epoch)]
        assert curve["pairs"] == len(rows)
        assert curve["clipmem_raw"]["estimate"] == pytest.approx(rows["clipmem_raw"].mean())
        assert curve["align_f"] == pytest.approx(rows["align_f"].mean())
        assert curve["align_g"] == pytest.approx(rows["align_g"].mean())
        if len(rows) >= 20:  # a bootstrap interval of a mean is about +- 1.96 standard errors
            half = (curve["clipmem_raw"]["hi"] - curve["clipmem_raw"]["lo"]) / 2
            assert half == pytest.approx(1.96 * rows["clipmem_raw"].std() / np.sqrt(len(rows)), rel=0.2)
    assert [(n["epoch"], n["null_for"]) for n in body["null"]] == [(e, k) for e in TRACKED
                                                                   for k in ("candidate", "independent")]
    for n in body["null"]:
        assert n["pairs"] == 30 and n["p95"] == pytest.approx(p95_by_hand(null, n["epoch"], n["null_for"]))


def test_the_dynamics_map_is_mean_and_spread_over_epochs(client, traj, tracked_run):
    scored, _, scores = parquet(tracked_run)
    body = client.get(f"/runs/{traj}/dynamics").json()
    assert body["available"] is True and body["total"] == len(body["sample_id"]) == len(scores)
    frame = pd.DataFrame({k: body[k] for k in ("sample_id", "truth", "mean_raw", "variability", "mem_epoch")})
    by_pair = scored.groupby("sample_id")["clipmem_raw"]
    expected = scores.set_index("sample_id").loc[frame["sample_id"]]
    assert frame["truth"].tolist() == expected["truth"].tolist()
    assert frame["mean_raw"].tolist() == pytest.approx(by_pair.mean().loc[frame["sample_id"]].tolist())
    assert frame["variability"].tolist() == pytest.approx(by_pair.std(ddof=0).loc[frame["sample_id"]].tolist())
    assert [None if pd.isna(v) else v for v in expected["mem_epoch"]] == body["mem_epoch"]
    some = client.get(f"/runs/{traj}/dynamics", params={"max_points": 25}).json()
    assert some["total"] == len(scores) and len(some["sample_id"]) == len(set(some["sample_id"])) == 25
    assert set(some["sample_id"]) <= set(frame["sample_id"])
    at = frame.set_index("sample_id").loc[some["sample_id"], "mean_raw"]
    assert some["mean_raw"] == pytest.approx(at.tolist())
    assert client.get(f"/runs/{traj}/dynamics", params={"max_points": 0}).status_code == 422


def test_a_run_trained_without_tracking_is_unavailable(client, fake_runs):
    sid = pd.read_parquet(RunDir(fake_runs["alpha"]).scores)["sample_id"].iloc[0]
    pair = client.get(f"/runs/alpha/samples/{sid}/trajectory").json()
    assert pair["available"] is False and pair["points"] == []
    assert pair["mem_epoch"] is pair["mem_auc"] is pair["mem_variability"] is None
    summary = client.get("/runs/alpha/trajectory").json()
    assert summary["available"] is False and summary["curves"] == summary["null"] == [] and summary["message"]
    dynamics = client.get("/runs/alpha/dynamics").json()
    assert dynamics["available"] is False and dynamics["sample_id"] == [] and dynamics["total"] == 0


def test_trajectory_404s(client, traj, tracked_run):
    samples = pd.read_parquet(RunDir(tracked_run).samples)
    shared = samples.loc[samples["split"] == "shared", "sample_id"].iloc[0]
    response = client.get(f"/runs/{traj}/samples/{shared}/trajectory")
    assert response.status_code == 404 and "not scored" in response.json()["detail"]
    assert client.get(f"/runs/{traj}/samples/pair-9999999/trajectory").status_code == 404
    for path in ("/runs/nope/trajectory", "/runs/nope/dynamics"):
        assert client.get(path).status_code == 404


# ingest refuses a damaged trajectory, naming the sample


@pytest.fixture
def run_dir(tracked_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tracked_run, copy)
    return copy




@pytest.mark.parametrize("epoch, message", [
    (0, "epoch of sample {victim} is 0, not a whole epoch within 1..12"),
    (13, "epoch of sample {victim} is 13, not a whole epoch within 1..12"),
    (2.5, "epoch of sample {victim} is 2.5, not a whole epoch"),
])
def test_an_epoch_outside_the_training_is_refused(run_dir, epoch, message):
    file = RunDir(run_dir).trajectory
    victim = pd.read_parquet(file)["sample_id"].iloc[3]

    def change(frame):
        frame["epoch"] = frame["epoch"].astype(float)
        frame.loc[3, "epoch"] = epoch

    with pytest.raises(ClipmemError, match=message.format(victim=victim)):
        rewritten(run_dir, file, change)


def test_a_missing_epoch_of_a_scored_pair_is_refused(run_dir):
    file = RunDir(run_dir).trajectory
    frame = pd.read_parquet(file)
    frame.iloc[1:].to_parquet(file, index=False)
    RunDir(run_dir).mark_finished()
    with pytest.raises(ClipmemError, match=f"sample {frame['sample_id'].iloc[0]} lacks a row at some of the tracked "
                                           "epochs 2, 5, 9, 12"):
        read_run(run_dir)


def test_a_repeated_epoch_is_refused(run_dir):
    file = RunDir(run_dir).trajectory
    victim = pd.read_parquet(file)["sample_id"].iloc[1]

    def change(frame):
        frame.loc[1, "epoch"] = TRACKED[1]  # the pair's row of the first epoch said to be of the second

    with pytest.raises(ClipmemError, match=f"sample {victim} appears more than once at epoch {TRACKED[1]}"):
        rewritten(run_dir, file, change)


def test_a_scored_row_of_an_unscored_pair_is_refused(run_dir):
    file = RunDir(run_dir).trajectory
    samples = pd.read_parquet(RunDir(run_dir).samples)
    shared = samples.loc[samples["split"] == "shared", "sample_id"].iloc[0]

    def change(frame):
        frame.loc[0, "sample_id"] = shared

    with pytest.raises(ClipmemError, match=f"sample {shared} \\(split 'shared'\\) has a row with null null_for"):
        rewritten(run_dir, file, change)


def test_a_null_row_of_a_scored_pair_is_refused(run_dir):
    file = RunDir(run_dir).trajectory
    scored = pd.read_parquet(RunDir(run_dir).scores)["sample_id"].iloc[0]

    def change(frame):
        last = frame.index[-1]  # a null row: they follow the scored pairs' at each epoch
        assert frame.loc[last, "null_for"] is not None
        frame.loc[last, "sample_id"] = scored

    with pytest.raises(ClipmemError, match=f"sample {scored} is in split '(candidate|independent)' but has a null row"):
        rewritten(run_dir, file, change)


def test_an_alignment_out_of_range_is_refused(run_dir):
    file = RunDir(run_dir).trajectory
    victim = pd.read_parquet(file)["sample_id"].iloc[5]

    def change(frame):
        frame.loc[5, "align_f"] = 1.5

    with pytest.raises(ClipmemError, match=f"column align_f is 1.5 for sample {victim}"):
        rewritten(run_dir, file, change)


def test_a_memorization_epoch_that_is_not_tracked_is_refused(run_dir):
    file = RunDir(run_dir).scores
    victim = pd.read_parquet(file)["sample_id"].iloc[2]

    def change(frame):
        frame.loc[2, "mem_epoch"] = 3.0

    with pytest.raises(ClipmemError, match=f"mem_epoch of sample {victim} is 3, not one of the tracked epochs"):
        rewritten(run_dir, file, change)


def test_dynamics_without_a_trajectory_are_refused(run_dir):
    RunDir(run_dir).trajectory.unlink()
    RunDir(run_dir).mark_finished()
    with pytest.raises(ClipmemError, match="has mem_epoch values but the run has no trajectory.parquet"):
        read_run(run_dir)


def test_migration_0007_down_and_up_with_a_tracked_run(fresh_engine, tmp_path):
    """Downgrading past 0007 keeps every run's scores and drops the trajectory; upgrading again gives the models'
    schema, and the run serves as one trained without tracking."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from fastapi.testclient import TestClient

    from clipmem.backend.api.app import create_app
    from clipmem.backend.db import _alembic_config, include_object, migrate, schema_revision
    from clipmem.backend.models import Base
    from clipmem.backend.settings import Settings

    migrate(fresh_engine)
    done = ingest(fresh_engine, write_synthetic_run(tmp_path / "tracked", 10, 10, 10, 4, seed=93, tracked=[1, 3]))
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM trajectory_points")).scalar_one() == (20 + 2 * 4) * 2
    with fresh_engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0006")
    assert schema_revision(fresh_engine) == "0006"
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE run_id = :r"), {"r": done.run_id}).scalar_one() == 20
    migrate(fresh_engine)
    with fresh_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        assert compare_metadata(context, Base.metadata) == []
        assert conn.execute(text("SELECT count(*) FROM scores WHERE mem_auc IS NOT NULL")).scalar_one() == 0
    url = fresh_engine.url.render_as_string(hide_password=False)
    with TestClient(create_app(Settings(database_url=url, api_token=None))) as client:
        assert client.get("/runs/tracked/trajectory").json()["available"] is False
