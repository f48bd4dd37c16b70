"""CLIPMem over training time (issue 19) on the dashboard: a pair's curves on the Sample page, the per-truth-tag
curves and the training-dynamics map on the Runs page, and the one line a run trained without --track-epochs shows.

The pages run (Streamlit AppTest) against a backend of their own serving two made-up runs (backend.synthetic_run):
TRAJ, trained with tracked epochs, and FLAT, without. What the charts draw is checked against the API's answers and
TRAJ's own trajectory.parquet read with pandas."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from clipmem.scoring.rundir import RunDir
from tests.frontend.conftest import APP
from tests.frontend.stack import backend
from tests.frontend.test_pages import chart_data

TRAJ, FLAT = "traj", "flat"
TRACKED = [3, 6, 10]


@dataclass(frozen=True)
class TrajStack:
    url: str
    scores: pd.DataFrame      # TRAJ's scores.parquet
    trajectory: pd.DataFrame  # TRAJ's trajectory.parquet


@pytest.fixture(scope="module")
def traj_stack(tmp_path_factory) -> TrajStack:
    from clipmem.backend.db import make_engine, migrate
    from clipmem.backend.ingest import ingest
    from clipmem.backend.synthetic_run import write_synthetic_run

    root = tmp_path_factory.mktemp("traj_stack")
    database_url = f"sqlite:///{root / 'traj.db'}"
    flat = write_synthetic_run(root / FLAT, 40, 40, 60, 20, seed=21, significance=True)
    traj = write_synthetic_run(root / TRAJ, 40, 40, 60, 20, seed=22, significance=True, tracked=TRACKED)
    engine = make_engine(database_url)
    try:
        migrate(engine)
        ingest(engine, flat, name=FLAT)
        ingest(engine, traj, name=TRAJ)
    finally:
        engine.dispose()
    with backend(database_url, root) as url:
        yield TrajStack(url, pd.read_parquet(RunDir(traj).scores), pd.read_parquet(RunDir(traj).trajectory))


@pytest.fixture()
def open_page(traj_stack, monkeypatch):
    """open_page(page, **query_params) -> a finished AppTest run of that page."""
    monkeypatch.setenv("CLIPMEM_API_URL", traj_stack.url)
    st.cache_data.clear()

    def _open(page: str, **params: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params.update(params)
        at.run()
        at.query_params.update(params)
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield _open


def api(stack: TrajStack, path: str, **params) -> dict:
    response = httpx.get(f"{stack.url}{path}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def trace(data: list[dict], name: str) -> dict:
    return next(t for t in data if t.get("name") == name)


def values(array) -> list:
    """A Plotly array as the browser receives it: a list, or numpy's typed-array form {dtype, bdata}."""
    if isinstance(array, dict):
        import base64
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def test_the_sample_page_draws_the_pairs_trajectory(open_page, traj_stack):
    pair = traj_stack.scores.sort_values("clipmem_raw").iloc[-1]  # a swapped pair, memorized at some epoch
    body = api(traj_stack, f"/runs/{TRAJ}/samples/{pair['sample_id']}/trajectory")
    at = open_page("sample", run=TRAJ, sample=pair["sample_id"])
    data = chart_data(at, "trajectory_chart")
    rows = traj_stack.trajectory[(traj_stack.trajectory["sample_id"] == pair["sample_id"])
                                 & traj_stack.trajectory["null_for"].isna()].sort_values("epoch")
    for name, column in (("A_f · trained with it", "align_f"), ("A_g · trained without it", "align_g"),
                         ("A_f − A_g", "clipmem_raw")):
        drawn = trace(data, name)
        assert values(drawn["x"]) == TRACKED
        assert values(drawn["y"]) == pytest.approx([p[column] for p in body["points"]])
        assert values(drawn["y"]) == pytest.approx(rows[column].tolist())
    assert values(trace(data, "null's 95th percentile")["y"]) == pytest.approx([p["null_p95"] for p in body["points"]])
    metrics = {m.label: m.value for m in at.metric}
    expected = "never" if pd.isna(pair["mem_epoch"]) else str(int(pair["mem_epoch"]))
    assert metrics["Memorized from epoch"] == expected and body["mem_epoch"] == (None if expected == "never"
                                                                                 else float(expected))
    assert metrics["Variability"] == f"{pair['mem_variability']:.4f}"


def test_the_runs_page_draws_the_tag_curves_and_the_dynamics_map(open_page, traj_stack):
    summary = api(traj_stack, f"/runs/{TRAJ}/trajectory")
    dynamics = api(traj_stack, f"/runs/{TRAJ}/dynamics", max_points=5000)
    at = open_page("runs", run=TRAJ)
    curves = chart_data(at, "tag_trajectories_chart")
    tags = sorted(set(traj_stack.scores["truth"]))
    assert sorted(t["name"] for t in curves if t["name"] in tags) == tags
    scored = traj_stack.trajectory[traj_stack.trajectory["null_for"].isna()].merge(
        traj_stack.scores[["sample_id", "truth"]], on="sample_id")
    for tag in tags:
        rows = sorted((c for c in summary["curves"] if c["truth"] == tag), key=lambda c: c["epoch"])
        drawn = trace(curves, tag)
        assert values(drawn["x"]) == TRACKED
        assert values(drawn["y"]) == pytest.approx([r["clipmem_raw"]["estimate"] for r in rows])
        assert values(drawn["y"]) == pytest.approx(
            scored[scored["truth"] == tag].groupby("epoch")["clipmem_raw"].mean().tolist())
        assert values(drawn["error_y"]["array"]) == pytest.approx(
            [r["clipmem_raw"]["hi"] - r["clipmem_raw"]["estimate"] for r in rows])
    null = pd.DataFrame(summary["null"]).groupby("epoch")["p95"].mean()
    assert values(trace(curves, "null's 95th percentile")["y"]) == pytest.approx(null.tolist())

    points = chart_data(at, "dynamics_map")
    answer = pd.DataFrame({k: dynamics[k] for k in ("sample_id", "truth", "mean_raw", "variability")})
    for tag in tags:
        drawn = trace(points, tag)
        mine = answer[answer["truth"] == tag]
        assert [c[0] for c in drawn["customdata"]] == mine["sample_id"].tolist()
        assert values(drawn["y"]) == pytest.approx(mine["mean_raw"].tolist())
        assert values(drawn["x"]) == pytest.approx(mine["variability"].tolist())
        by_pair = scored.groupby("sample_id")["clipmem_raw"]
        assert values(drawn["y"]) == pytest.approx(by_pair.mean().loc[mine["sample_id"]].tolist())


def test_a_run_without_tracking_says_so_in_one_line(open_page, traj_stack):
    sid = api(traj_stack, f"/runs/{FLAT}/samples", limit=1)["items"][0]["sample_id"]
    for at in (open_page("sample", run=FLAT, sample=sid), open_page("runs", run=FLAT)):
        shown = [e.value for e in (*at.caption, *at.info)]
        assert sum("trained without `--track-epochs`" in text for text in shown) == 1
        keys = {c.proto.id for c in at.get("plotly_chart")}
        assert not any(name in key for key in keys
                       for name in ("trajectory_chart", "tag_trajectories_chart", "dynamics_map"))
