"""Why a pair is memorized (issue 18) through the backend: miscaption, reason and neighbours.parquet ingested,
filtered, sorted, served as evidence and as the reason-by-truth table; every answer checked against the run's own
Parquet files read with pandas, and runs scored before the evidence served as nulls."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text

from clipmem.backend.ingest import ingest
from clipmem.backend.models import Run
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.scoring.columns import REASON_LABELS, REASONS
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.rundir import RunDir
from tests.backend.rewrites import rewritten
from tests.backend.test_ingest import fresh_engine  # noqa: F401 (a fixture: an empty database of its own)

SIGNALS = ("miscaption", "image_neighbour_sim", "caption_neighbour_sim", "neighbour_agreement",
           "neighbour_caption_margin")


def scored_frame(path) -> pd.DataFrame:
    """scores.parquet with each pair's position in samples.parquet: the API's tie-breaker (pair_index)."""
    samples = pd.read_parquet(RunDir(path).samples)
    scores = pd.read_parquet(RunDir(path).scores)
    position = pd.Series(np.arange(len(samples)), index=samples["sample_id"])
    return scores.assign(pair_index=position[scores["sample_id"]].to_numpy())


def walk(client, run: str, params: dict, limit: int) -> tuple[list[dict], int]:
    """Every page of a listing, chained through next_cursor: (the items in order, the total reported)."""
    items, cursor, total = [], None, None
    while True:
        page = client.get(f"/runs/{run}/samples", params={**params, "limit": limit,
                                                          **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        total = body["total"] if total is None else total
        assert body["total"] == total
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, total


@pytest.fixture(scope="module")
def old_run(db, client, tmp_path_factory):
    """A run of this module's own written as scored before issue 18: no reason, signals or neighbours.parquet."""
    path = write_synthetic_run(tmp_path_factory.mktemp("why") / "why-old", 30, 30, 20, 10, seed=81, evidence=False)
    assert not RunDir(path).neighbours.exists()
    ingest(db.engine, path)
    yield "why-old"
    client.delete("/runs/why-old")


def test_ingest_stores_reasons_signals_and_neighbours(db, fake_runs):
    path = fake_runs["alpha"]
    scores = scored_frame(path)
    neighbours = pd.read_parquet(RunDir(path).neighbours)
    with db.engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.name == "alpha")).one()
        stored = pd.DataFrame(conn.execute(text(
            "SELECT s.sample_id, n.kind, n.rank, o.sample_id AS neighbour_id, n.similarity, n.agreement "
            "FROM pair_neighbours n JOIN samples s ON s.run_id = n.run_id AND s.pair_index = n.pair_index "
            "JOIN samples o ON o.run_id = n.run_id AND o.pair_index = n.neighbour_index WHERE n.run_id = :r"),
            {"r": run.id}).all(), columns=list(neighbours.columns))
        reasons = dict(conn.execute(text("SELECT s.sample_id, c.reason FROM scores c JOIN samples s ON "
                                         "s.run_id = c.run_id AND s.pair_index = c.pair_index WHERE c.run_id = :r"),
                                    {"r": run.id}).all())
    assert run.n_neighbours == len(neighbours) == len(stored) > 0
    key = ["sample_id", "kind", "rank"]
    pd.testing.assert_frame_equal(stored.sort_values(key, ignore_index=True),
                                  neighbours.sort_values(key, ignore_index=True), check_dtype=False)
    assert reasons == dict(zip(scores["sample_id"], scores["reason"]))
    assert set(SIGNALS) <= set(run.score_names)


@pytest.mark.parametrize("reasons", [["miscaptioned"], ["atypical_caption", "duplicate"], []])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_reason_filter_and_miscaption_sort_walk_the_pandas_answer(client, fake_runs, reasons, order):
    """Pages chained through their cursors give exactly the pairs pandas selects, each once, in (miscaption,
    position) order, each item carrying its own miscaption and reason."""
    scores = scored_frame(fake_runs["alpha"])
    chosen = scores[scores["reason"].isin(reasons)] if reasons else scores
    expected = chosen.sort_values(["miscaption", "pair_index"], ascending=order == "asc")
    items, total = walk(client, "alpha", {"sort": "miscaption", "order": order, "reason": reasons}, limit=7)
    assert total == len(expected) > 0
    assert [item["sample_id"] for item in items] == expected["sample_id"].tolist()
    assert [item["reason"] for item in items] == expected["reason"].tolist()
    assert [item["miscaption"] for item in items] == pytest.approx(expected["miscaption"].tolist(), abs=0)
    assert all(item["scores"]["miscaption"] == item["miscaption"] for item in items)


def test_reason_filter_in_sql_selects_the_same_pairs(client, fake_runs):
    """The export (the filter as SQL) and the listing (over the cached columns) agree with pandas."""
    scores = scored_frame(fake_runs["alpha"])
    for reasons in (["miscaptioned", "typical"], ["atypical_image"]):
        exported = pd.read_csv(io.StringIO(client.get("/runs/alpha/exports/selection.csv",
                                                      params={"reason": reasons, "sort": "miscaption"}).text))
        expected = scores[scores["reason"].isin(reasons)].sort_values(["miscaption", "pair_index"], ascending=False)
        assert exported["sample_id"].tolist() == expected["sample_id"].tolist()
        assert exported["reason"].tolist() == expected["reason"].tolist()


def test_unknown_reason_is_a_422(client):
    answer = client.get("/runs/alpha/samples", params={"reason": "confused"})
    assert answer.status_code == 422 and "reason" in answer.json()["detail"][0]["loc"]


def test_evidence_is_the_parquet_rows(client, fake_runs):
    path = fake_runs["alpha"]
    samples = pd.read_parquet(RunDir(path).samples).set_index("sample_id")
    scores = scored_frame(path).set_index("sample_id")
    neighbours = pd.read_parquet(RunDir(path).neighbours)
    # one pair of each truth tag and one of each reason
    picked = {*scores.groupby("truth").head(1).index, *scores.groupby("reason").head(1).index}
    for sid in sorted(picked):
        answer = client.get(f"/runs/alpha/samples/{sid}/evidence")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        row = scores.loc[sid]
        assert body["available"] is True and body["sample_id"] == sid and body["truth"] == row["truth"]
        assert body["reason"] == row["reason"] and body["seen_by"] == row["seen_by"]
        for name in (*SIGNALS, "align_f", "align_g", "clipmem_raw"):
            assert body[name] == row[name], name
        assert body["mem_swap_image"] is None and body["mem_swap_text"] is None  # alpha has no swap scores
        for kind in ("image", "caption"):
            mine = neighbours[(neighbours["sample_id"] == sid) & (neighbours["kind"] == kind)].sort_values("rank")
            served = body[f"{kind}_neighbours"]
            assert [n["rank"] for n in served] == mine["rank"].tolist()
            assert [n["sample_id"] for n in served] == mine["neighbour_id"].tolist()
            assert [n["similarity"] for n in served] == mine["similarity"].tolist()
            assert [n["agreement"] for n in served] == mine["agreement"].tolist()
            for n in served:
                assert n["captions"] == list(samples.loc[n["sample_id"], "captions"])
                assert n["truth"] == samples.loc[n["sample_id"], "truth"]
                assert n["image_url"] == f"/runs/alpha/images/{n['sample_id']}"
                assert client.get(n["image_url"]).status_code == 200


def test_evidence_of_sample_ids_with_slashes_and_swap_scores(client, fake_runs):
    """Sample ids may hold '/' and spaces: the evidence path and the image paths it gives still resolve."""
    scores = scored_frame(fake_runs["mem"]).set_index("sample_id")
    sid = scores.index[0]
    assert "/" in sid and " " in sid
    body = client.get(f"/runs/mem/samples/{sid}/evidence").json()
    assert body["sample_id"] == sid
    assert body["mem_swap_image"] == scores.loc[sid, "mem_swap_image"]
    assert body["mem_swap_text"] == scores.loc[sid, "mem_swap_text"]
    assert body["image_neighbours"] and all(client.get(n["image_url"]).status_code == 200
                                            for n in body["image_neighbours"])
    # the plain sample route still serves the same pair
    assert client.get(f"/runs/mem/samples/{sid}").json()["reason"] == scores.loc[sid, "reason"]


def test_evidence_404s(client, fake_runs):
    samples = pd.read_parquet(RunDir(fake_runs["alpha"]).samples)
    shared = samples.loc[samples["split"] == "shared", "sample_id"].iloc[0]
    assert client.get("/runs/no-such-run/samples/pair-0000001/evidence").status_code == 404
    assert client.get("/runs/alpha/samples/no-such-pair/evidence").status_code == 404
    unscored = client.get(f"/runs/alpha/samples/{shared}/evidence")
    assert unscored.status_code == 404 and shared in unscored.json()["detail"]


@pytest.mark.parametrize("memorized_only", [False, True])
def test_reason_table_is_the_crosstab(client, fake_runs, memorized_only):
    scores = scored_frame(fake_runs["sig"])
    counted = scores[scores["memorized"]] if memorized_only else scores
    truths = sorted(scores["truth"].unique())
    expected = pd.crosstab(counted["reason"], counted["truth"]).reindex(index=list(REASONS), columns=truths,
                                                                       fill_value=0)
    body = client.get("/runs/sig/reasons", params={"memorized_only": memorized_only}).json()
    assert body["available"] is True and body["memorized_only"] is memorized_only
    assert body["reasons"] == list(REASONS) and body["labels"] == REASON_LABELS and body["truths"] == truths
    assert body["pairs"] == len(counted) > 0
    served = pd.DataFrame(body["counts"]).pivot(index="reason", columns="truth", values="pairs")
    pd.testing.assert_frame_equal(served.reindex(index=list(REASONS), columns=truths), expected,
                                  check_names=False, check_dtype=False)
    if memorized_only:  # the flagged pairs are fewer than all, so the table is not the unfiltered one again
        assert 0 < len(counted) < len(scores)


def test_memorized_only_needs_significance(client):
    answer = client.get("/runs/alpha/reasons", params={"memorized_only": True})
    assert answer.status_code == 422 and "memorized" in answer.text


def test_miscaption_is_a_detector_in_the_run_summary(client, fake_runs):
    """/detection lists miscaption; its swapped-pair AUROC is the Mann-Whitney count over the Parquet file."""
    scores = scored_frame(fake_runs["alpha"])
    positive = scores.loc[scores["truth"] == "swapped", "miscaption"].to_numpy()
    negative = scores.loc[scores["truth"] != "swapped", "miscaption"].to_numpy()
    pairs = positive[:, None] - negative[None, :]
    mann_whitney = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    rows = {row["score"]: row for row in client.get("/runs/alpha/detection").json()["swapped"]}
    assert rows["miscaption"]["auroc"] == pytest.approx(mann_whitney, abs=1e-12)
    detail = client.get("/runs/alpha").json()
    assert detail["has_reasons"] is True and detail["has_evidence"] is True


def test_a_run_scored_before_the_evidence_serves_nulls(client, old_run):
    detail = client.get(f"/runs/{old_run}").json()
    assert detail["has_reasons"] is False and detail["has_evidence"] is False
    assert not set(SIGNALS) & set(detail["score_names"])
    items, total = walk(client, old_run, {}, limit=25)
    assert total == 60 and all(i["miscaption"] is None and i["reason"] is None for i in items)
    sid = items[0]["sample_id"]
    evidence = client.get(f"/runs/{old_run}/samples/{sid}/evidence").json()
    assert evidence["available"] is False and evidence["image_neighbours"] == evidence["caption_neighbours"] == []
    assert all(evidence[name] is None for name in (*SIGNALS, "reason"))
    assert evidence["clipmem_raw"] == pytest.approx(evidence["align_f"] - evidence["align_g"])
    table = client.get(f"/runs/{old_run}/reasons").json()
    assert table["available"] is False and table["counts"] == [] and table["pairs"] == 0
    assert client.get(f"/runs/{old_run}/samples/{sid}").json()["reason"] is None
    assert "miscaption" not in {row["score"] for row in client.get(f"/runs/{old_run}/detection").json()["swapped"]}
    for params in ({"sort": "miscaption"}, {"reason": "typical"}):
        refused = client.get(f"/runs/{old_run}/samples", params=params)
        assert refused.status_code == 422 and old_run in refused.text


# ingest refuses a run whose evidence is damaged, naming the sample


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("why-pristine") / "run", 20, 20, 20, 5, seed=83)


@pytest.fixture
def run_dir(pristine, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy




def test_a_reason_outside_reasons_is_refused(run_dir):
    victim = pd.read_parquet(RunDir(run_dir).scores)["sample_id"].iloc[5]

    def change(frame):
        frame.loc[5, "reason"] = "confused"

    with pytest.raises(ClipmemError, match=f"reason of sample {victim} is 'confused'"):
        rewritten(run_dir, RunDir(run_dir).scores, change)


def test_a_missing_reason_is_refused(run_dir):
    victim = pd.read_parquet(RunDir(run_dir).scores)["sample_id"].iloc[3]

    def change(frame):
        frame["reason"] = frame["reason"].astype(object)
        frame.loc[3, "reason"] = None

    with pytest.raises(ClipmemError, match=f"reason is missing for sample {victim}"):
        rewritten(run_dir, RunDir(run_dir).scores, change)


def test_an_unknown_neighbour_id_is_refused(run_dir):
    victim = pd.read_parquet(RunDir(run_dir).neighbours)["sample_id"].iloc[4]

    def change(frame):
        frame.loc[4, "neighbour_id"] = "pair-9999999"

    with pytest.raises(ClipmemError, match=f"neighbour_id 'pair-9999999' of sample {victim} is not a sample"):
        rewritten(run_dir, RunDir(run_dir).neighbours, change)


@pytest.mark.parametrize("column, value, message", [
    ("kind", "sound", "kind of sample {victim} is 'sound'"),
    ("rank", 0, "rank of sample {victim} is 0"),
    ("similarity", 1.5, "column similarity is 1.5 for sample {victim}"),
    ("neighbour_id", "itself", "sample {victim} is listed as its own neighbour"),
])
def test_damaged_neighbour_rows_are_refused(run_dir, column, value, message):
    victim = pd.read_parquet(RunDir(run_dir).neighbours)["sample_id"].iloc[2]

    def change(frame):
        frame.loc[2, column] = victim if value == "itself" else value

    with pytest.raises(ClipmemError, match=message.format(victim=victim)):
        rewritten(run_dir, RunDir(run_dir).neighbours, change)


def test_neighbours_of_an_unscored_pair_are_refused(run_dir):
    samples = pd.read_parquet(RunDir(run_dir).samples)
    shared = samples.loc[samples["split"] == "shared", "sample_id"].iloc[0]

    def change(frame):
        frame.loc[0, "sample_id"] = shared

    with pytest.raises(ClipmemError, match=f"sample {shared} is not scored"):
        rewritten(run_dir, RunDir(run_dir).neighbours, change)


def test_a_repeated_rank_is_refused(run_dir):
    def change(frame):
        frame.loc[1, "rank"] = frame.loc[0, "rank"]

    victim = pd.read_parquet(RunDir(run_dir).neighbours)["sample_id"].iloc[1]
    with pytest.raises(ClipmemError, match=f"sample {victim} has image neighbour rank 1 more than once"):
        rewritten(run_dir, RunDir(run_dir).neighbours, change)


def test_migration_0006_down_and_up_with_an_evidence_run(fresh_engine, tmp_path):
    """Downgrading past 0006 keeps every run's scores and drops the evidence (PostgreSQL: the partitions with it);
    upgrading again gives the models' schema, and the run serves as one scored before the evidence."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from fastapi.testclient import TestClient

    from clipmem.backend.api.app import create_app
    from clipmem.backend.db import _alembic_config, include_object, migrate, schema_revision
    from clipmem.backend.models import Base
    from clipmem.backend.settings import Settings

    migrate(fresh_engine)
    done = ingest(fresh_engine, write_synthetic_run(tmp_path / "evidence", 10, 10, 10, 4, seed=85))
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pair_neighbours")).scalar_one() == 20 * 2 * 3
    with fresh_engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0005")
    assert schema_revision(fresh_engine) == "0005"
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE run_id = :r"), {"r": done.run_id}).scalar_one() == 20
        gone = (f"SELECT to_regclass('pair_neighbours_run_{done.run_id}')" if conn.dialect.name == "postgresql"
                else "SELECT name FROM sqlite_master WHERE name = 'pair_neighbours'")
        assert conn.execute(text(gone)).scalar() is None
    migrate(fresh_engine)
    with fresh_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        assert compare_metadata(context, Base.metadata) == []
        assert conn.execute(text("SELECT count(*) FROM scores WHERE reason IS NOT NULL OR miscaption IS NOT NULL")
                            ).scalar_one() == 0
    url = fresh_engine.url.render_as_string(hide_password=False)
    with TestClient(create_app(Settings(database_url=url, api_token=None))) as client:
        sid = client.get("/runs/evidence/samples", params={"limit": 1}).json()["items"][0]["sample_id"]
        evidence = client.get(f"/runs/evidence/samples/{sid}/evidence").json()
        assert evidence["available"] is False and evidence["image_neighbours"] == []


def test_a_real_run_serves_its_evidence(db, client, tiny_run):
    """A run scored by clipmem (the shared tiny run): all of its neighbours.parquet is stored, a pair of each reason
    and truth tag is served its rows, and the reason table is its crosstab."""
    run, _ = tiny_run
    scores = scored_frame(run.path)
    neighbours = pd.read_parquet(run.neighbours)
    result = ingest(db.engine, run.path, name="tiny-why")
    try:
        with db.engine.connect() as conn:
            assert conn.execute(select(Run.n_neighbours).where(Run.id == result.run_id)).scalar_one() == len(neighbours)
        picked = sorted({*scores.groupby("reason").head(1)["sample_id"], *scores.groupby("truth").head(1)["sample_id"]})
        neighbours = neighbours[neighbours["sample_id"].isin(picked)]
        served = []
        for sid in picked:
            body = client.get(f"/runs/tiny-why/samples/{sid}/evidence").json()
            assert body["available"] is True and body["reason"] == scores.set_index("sample_id").loc[sid, "reason"]
            served += [(sid, kind, n["rank"], n["sample_id"], n["similarity"], n["agreement"])
                       for kind in ("image", "caption") for n in body[f"{kind}_neighbours"]]
        expected = neighbours.sort_values(["sample_id", "kind", "rank"])
        assert sorted(served) == sorted(map(tuple, expected[list(neighbours.columns)].itertuples(index=False)))
        table = client.get("/runs/tiny-why/reasons").json()
        crosstab = pd.crosstab(scores["reason"], scores["truth"])
        assert {(c["reason"], c["truth"]): c["pairs"] for c in table["counts"] if c["pairs"]} == {
            (r, t): int(crosstab.loc[r, t]) for r in crosstab.index for t in crosstab.columns if crosstab.loc[r, t]}
    finally:
        client.delete(f"/runs/{result.name}")
