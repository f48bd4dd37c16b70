"""Experiments: runs made by `clipmem experiment` carry experiment.json; the API lists them per experiment with
the rows and summary of scoring.experiment_report, on every database.

Expected values come from the run directories' files (experiment.json, scores.parquet, metrics.json).
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from clipmem.backend.ingest import ingest
from clipmem.backend.models import Run
from clipmem.backend.store import delete_run
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.cli import app
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.experiment_report import run_row, summarize
from clipmem.scoring.rundir import RunDir

EXPERIMENT = "mitig"
OTHER = "other-exp"
# (run name, experiment.json without the name); every run gets its own utility figures
SETTINGS = {
    "mitig-base-s0": dict(seed=0, captions_per_image=1, text_noise=0.0, removal_method=None, removal_count=0),
    "mitig-base-s1": dict(seed=1, captions_per_image=1, text_noise=0.0, removal_method=None, removal_count=0),
    "mitig-c2-s0": dict(seed=0, captions_per_image=2, text_noise=0.0, removal_method=None, removal_count=0),
    "mitig-c2-s1": dict(seed=1, captions_per_image=2, text_noise=0.0, removal_method=None, removal_count=0),
    "mitig-n0.15-s0": dict(seed=0, captions_per_image=1, text_noise=0.15, removal_method=None, removal_count=0),
    "mitig-top50-s0": dict(seed=0, captions_per_image=1, text_noise=0.0, removal_method="top-clipmem",
                           removal_count=50),
    "mitig-random50-s0": dict(seed=0, captions_per_image=1, text_noise=0.0, removal_method="random",
                              removal_count=50),
    "mitig-r5-c5-s0": dict(seed=0, captions_per_image=5, text_noise=0.0, removal_method=None, removal_count=0,
                           renderings=5),
}
# (candidate, independent) pairs each run scores; ids run on from 10 shared pairs, so a run scores pair-0000010 on to
# pair-(9 + candidate + independent): the top-clipmem run, which scores 3 pairs fewer, leaves seed 0's removal runs
# (base, top50, random50) pairs 10..36 in common, 27 pairs; seed 1's removal grid is its baseline alone
SCORED = {"mitig-top50-s0": (12, 15)}
COMMON_IDS = {f"pair-{i:07d}" for i in range(10, 37)}
COMMON_RUNS = ("mitig-base-s0", "mitig-top50-s0", "mitig-random50-s0")


def utility_of(k: int) -> dict[str, float]:
    return {"i2t_r1": 0.5 + 0.01 * k, "i2t_r5": 0.8, "t2i_r1": 0.45 - 0.005 * k, "t2i_r5": 0.75,
            "zeroshot_shape": 0.9, "zeroshot_colour": 0.8 - 0.01 * k, "probe_shape": 0.6 + 0.02 * k,
            "probe_colour": 0.55 + 0.01 * k}


@pytest.fixture(scope="module")
def experiment_runs(db, tmp_path_factory):
    """The experiment's runs and one run of another experiment, ingested; removed afterwards."""
    root = tmp_path_factory.mktemp("experiment")
    paths = {}
    for k, (name, params) in enumerate(SETTINGS.items()):
        paths[name] = write_synthetic_run(root / name, *SCORED.get(name, (15, 15)), 10, 5, seed=70 + k,
                                          utility=utility_of(k), experiment={"experiment": EXPERIMENT, **params})
    paths["other-s3"] = write_synthetic_run(root / "other-s3", 10, 10, 10, 5, seed=79, utility=utility_of(9),
                                            experiment={"experiment": OTHER, "seed": 3, "captions_per_image": 5,
                                                        "text_noise": 0.0, "removal_method": None,
                                                        "removal_count": 0})
    for path in paths.values():
        ingest(db.engine, path)
    yield paths
    with db.engine.begin() as conn:
        for run_id in conn.execute(select(Run.id).where(Run.name.in_(list(paths)))).scalars().all():
            delete_run(conn, run_id)


def quality_of(scores: pd.DataFrame) -> dict:
    """Mean raw CLIPMem per truth tag (pandas) and CLIPMem's swapped-pair AUROC and average precision
    (scikit-learn), the fields the towers and from-scratch grids compare."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    out = {f"truth_clipmem_raw_{tag}": float(v) for tag, v in scores.groupby("truth")["clipmem_raw"].mean().items()}
    swapped = scores["truth"] == "swapped"
    if 0 < swapped.sum() < len(swapped):
        out.update(swapped_auroc=roc_auc_score(swapped, scores["clipmem"]),
                   swapped_average_precision=average_precision_score(swapped, scores["clipmem"]))
    return out


def expected_rows(paths: dict) -> list[dict]:
    """run_row of each run, from its files; the removal runs of seed 0 with their mean raw CLIPMem over the pairs
    they all score (COMMON_IDS, known from the runs' sizes), the other runs with null there."""
    rows = []
    for name, path in paths.items():
        scores = pd.read_parquet(path / "scores.parquet")
        metrics = json.loads((path / "metrics.json").read_text())
        row = run_row(json.loads((path / "experiment.json").read_text()), scores["clipmem_raw"].mean(),
                      scores["clipmem"].mean(), {m: metrics[m] for m in ("f", "g")}, quality_of(scores))
        common = {"mean_clipmem_raw_common": None, "common_pairs": None}
        if name in COMMON_RUNS:
            common = {"mean_clipmem_raw_common": scores.loc[scores.sample_id.isin(COMMON_IDS), "clipmem_raw"].mean(),
                      "common_pairs": len(COMMON_IDS)}
        rows.append({"run": name, **row, **common})
    return rows


def approx_records(records: list[dict]) -> list[dict]:
    return [{k: pytest.approx(v, rel=1e-9, abs=1e-12) if isinstance(v, float) else v for k, v in r.items()}
            for r in records]


def test_runs_carry_experiment_and_parameters(client, experiment_runs):
    runs = {r["name"]: r for r in client.get("/runs").json()}
    params = json.loads((experiment_runs["mitig-top50-s0"] / "experiment.json").read_text())
    assert runs["mitig-top50-s0"]["experiment"] == EXPERIMENT
    assert runs["mitig-top50-s0"]["experiment_params"] == params
    assert runs["alpha"]["experiment"] is None and runs["alpha"]["experiment_params"] is None
    detail = client.get("/runs/mitig-n0.15-s0").json()
    assert detail["experiment"] == EXPERIMENT and detail["experiment_params"]["text_noise"] == 0.15


def test_runs_filtered_by_experiment(client, experiment_runs):
    names = [r["name"] for r in client.get("/runs", params={"experiment": EXPERIMENT}).json()]
    assert sorted(names) == sorted(SETTINGS)
    assert [r["name"] for r in client.get("/runs", params={"experiment": OTHER}).json()] == ["other-s3"]
    assert client.get("/runs", params={"experiment": "none-such"}).json() == []
    bad = client.get("/runs", params={"experiment": "../x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "experiment"]


def test_experiments_listed(client, experiment_runs):
    listed = {e["name"]: e for e in client.get("/experiments").json()}
    assert listed[EXPERIMENT] == {"name": EXPERIMENT, "runs": len(SETTINGS), "seeds": [0, 1],
                                  "grids": ["captions", "text-noise", "removal", "images-captions"]}
    # one run is one knob value: no grid has a curve (summarize leaves such grids out)
    assert listed[OTHER] == {"name": OTHER, "runs": 1, "seeds": [3], "grids": []}


def test_experiment_rows_and_summary_from_the_files(client, experiment_runs):
    body = client.get(f"/experiments/{EXPERIMENT}").json()
    assert body["name"] == EXPERIMENT and body["seeds"] == [0, 1]
    assert body["grids"] == ["captions", "text-noise", "removal", "images-captions"]
    expected = expected_rows({n: p for n, p in experiment_runs.items() if n in SETTINGS})
    got = {row["run"]: row for row in body["runs"]}
    assert set(got) == set(SETTINGS)
    ids = {row["run_id"] for row in body["runs"]}
    assert len(ids) == len(SETTINGS)
    for row in expected:
        shown = {k: v for k, v in got[row["run"]].items() if k != "run_id"}
        assert shown == approx_records([row])[0]
    # utility is averaged over f and g (g = f - 0.01 in these runs)
    assert got["mitig-c2-s0"]["probe_shape"] == pytest.approx(0.6 + 0.02 * 2 - 0.005)
    # ordered by removal, captions per image, renderings, noise, then seed
    assert [r["run"] for r in body["runs"]] == ["mitig-base-s0", "mitig-base-s1", "mitig-n0.15-s0", "mitig-c2-s0",
                                                "mitig-c2-s1", "mitig-r5-c5-s0", "mitig-random50-s0",
                                                "mitig-top50-s0"]
    assert got["mitig-r5-c5-s0"]["renderings"] == 5 and got["mitig-base-s0"]["renderings"] == 1
    # the removal runs of seed 0 on the 27 pairs they all score; no other run has that mean
    assert {n for n, r in got.items() if r["common_pairs"] is not None} == set(COMMON_RUNS)
    assert {got[n]["common_pairs"] for n in COMMON_RUNS} == {27}
    top = pd.read_parquet(experiment_runs["mitig-top50-s0"] / "scores.parquet").set_index("sample_id")
    assert len(top) == 27  # it scores only the common pairs, so there its two means agree
    assert got["mitig-top50-s0"]["mean_clipmem_raw_common"] == pytest.approx(top["clipmem_raw"].mean())
    base = pd.read_parquet(experiment_runs["mitig-base-s0"] / "scores.parquet").set_index("sample_id")
    assert got["mitig-base-s0"]["mean_clipmem_raw_common"] == pytest.approx(
        base["clipmem_raw"].drop([f"pair-{i:07d}" for i in (37, 38, 39)]).sum() / 27)  # all but 3 of its 30

    summary = pd.DataFrame(body["summary"])
    assert list(summary.columns) == ["grid", "method", "value", "metric", "mean", "std", "n"]
    assert body["summary"] == approx_records(summarize(expected).to_dict("records"))
    # one point by hand: the baseline (captions = 1) over its two seeds
    raw = [pd.read_parquet(experiment_runs[n] / "scores.parquet")["clipmem_raw"].mean()
           for n in ("mitig-base-s0", "mitig-base-s1")]
    point = summary[(summary.grid == "captions") & (summary.value == 1.0) & (summary.metric == "mean_clipmem_raw")]
    assert point["n"].tolist() == [2]
    assert point["mean"].iloc[0] == pytest.approx(np.mean(raw))
    assert point["std"].iloc[0] == pytest.approx(np.std(raw, ddof=1))
    # the baseline starts every removal method's curve
    removal = summary[(summary.grid == "removal") & (summary.metric == "mean_clipmem_raw")]
    assert set(zip(removal["method"], removal["value"])) == {
        ("top-clipmem", 0.0), ("lowest-similarity", 0.0), ("random", 0.0), ("top-clipmem", 50.0), ("random", 50.0)}
    # the mean over common pairs is a point of the removal grid alone, from seed 0 (seed 1 has no removal run)
    common = summary[summary.metric == "mean_clipmem_raw_common"]
    assert set(common.grid) == {"removal"} and set(common.n) == {1}
    assert set(zip(common["method"], common["value"])) == set(zip(removal["method"], removal["value"]))
    start = common[common.value == 0.0]["mean"]
    assert start.tolist() == pytest.approx([got["mitig-base-s0"]["mean_clipmem_raw_common"]] * 3)


def test_unknown_experiment_is_404(client, experiment_runs):
    response = client.get("/experiments/none-such")
    assert response.status_code == 404 and "no experiment named 'none-such'" in response.json()["detail"]
    assert client.get("/experiments/alpha").status_code == 404  # a run name is not an experiment


def test_experiment_name_overridden_at_ingest(db, client, experiment_runs, tmp_path):
    copy = tmp_path / "renamed-s0"
    shutil.copytree(experiment_runs["mitig-base-s0"], copy)
    ingest(db.engine, copy, experiment="renamed")
    try:
        body = client.get("/experiments/renamed").json()
        assert [r["run"] for r in body["runs"]] == ["renamed-s0"]
        assert body["runs"][0]["experiment"] == "renamed"
        assert client.get("/runs/renamed-s0").json()["experiment_params"]["experiment"] == EXPERIMENT  # as written
    finally:
        client.delete("/runs/renamed-s0")


def test_experiment_override_needs_experiment_json(db, fake_runs):
    with pytest.raises(ClipmemError, match="has no experiment.json"):
        ingest(db.engine, fake_runs["alpha"], name="alpha-in-exp", experiment="some-exp")
    with pytest.raises(ClipmemError, match="--experiment: experiment name 'a b' is not allowed"):
        ingest(db.engine, fake_runs["alpha"], name="alpha-in-exp", experiment="a b")


GOOD = {"experiment": "bad-exp", "seed": 0, "captions_per_image": 1, "text_noise": 0.0, "removal_method": None,
        "removal_count": 0}


@pytest.mark.parametrize("text,message", [
    ("{not json", "experiment.json is not valid JSON"),
    ("[1, 2]", "experiment.json should hold a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "experiment"}), "experiment.json has no 'experiment'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "seed"}), "experiment.json has no 'seed'"),
    (json.dumps({**GOOD, "experiment": "no/slashes"}), "experiment name 'no/slashes' is not allowed"),
    (json.dumps({**GOOD, "experiment": 7}), "experiment name 7 is not allowed"),
    (json.dumps({**GOOD, "seed": "1"}), "'seed' should be a whole number >= 0, not '1'"),
    (json.dumps({**GOOD, "removal_count": -5}), "'removal_count' should be a whole number >= 0"),
    (json.dumps({**GOOD, "renderings": 0}), "'renderings' should be a whole number >= 1, not 0"),
    (json.dumps({**GOOD, "renderings": 2.5}), "'renderings' should be a whole number >= 1, not 2.5"),
    (json.dumps({**GOOD, "text_noise": "lots"}), "'text_noise' should be a number >= 0"),
    (json.dumps({**GOOD, "removal_method": "largest"}), "'removal_method' should be one of top-clipmem"),
    (json.dumps({**GOOD, "text_noise": math.nan}), "holds NaN or infinite numbers"),
    (json.dumps({**GOOD, "lock": "both"}), "'lock' should be 'image', 'text' or '' (no tower locked), not 'both'"),
    (json.dumps({**GOOD, "from_scratch": 1}), "'from_scratch' should be true or false, not 1"),
])
def test_malformed_experiment_json_is_refused(db, fake_runs, tmp_path, text, message):
    run = tmp_path / "bad-exp-run"
    shutil.copytree(fake_runs["alpha"], run)
    (run / "experiment.json").write_text(text)
    RunDir(run).mark_finished()  # as if the experiment had written it: its contents are checked, not its checksum
    with db.engine.connect() as conn:
        before = conn.execute(select(Run.id)).scalars().all()
    with pytest.raises(ClipmemError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        ingest(db.engine, run)
    assert str(run / "experiment.json") in str(error.value)
    with db.engine.connect() as conn:
        assert conn.execute(select(Run.id)).scalars().all() == before


def test_ingest_command_with_experiment(db, experiment_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPMEM_DATABASE_URL", db.url)
    runner = CliRunner()
    copy = tmp_path / "cli-exp-s0"
    shutil.copytree(experiment_runs["mitig-c2-s1"], copy)
    result = runner.invoke(app, ["ingest", str(copy), "--experiment", "cli-exp"])
    assert result.exit_code == 0, result.output
    with db.engine.begin() as conn:
        run = conn.execute(select(Run.id, Run.experiment, Run.experiment_params)
                           .where(Run.name == "cli-exp-s0")).one()
        assert run.experiment == "cli-exp" and run.experiment_params["captions_per_image"] == 2
        delete_run(conn, run.id)
    (copy / "experiment.json").write_text("{}")
    RunDir(copy).mark_finished()
    broken = runner.invoke(app, ["ingest", str(copy)])
    assert broken.exit_code == 2
    assert broken.output.strip().startswith("error:") and "experiment.json has no 'experiment'" in broken.output
