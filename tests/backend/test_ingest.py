"""Ingest: one transaction, refused twice unless replacing, the schema equal to its migrations."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select, text

import clipmem.backend.ingest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from clipmem.backend.db import head_revision, include_object, schema_revision
from clipmem.backend.ingest import ingest
from clipmem.backend.models import Base, Run
from clipmem.backend.store import delete_run
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.scoring.errors import ClipmemError


def table_counts(engine: Engine, run_id: int) -> dict[str, int]:
    """Rows a run owns in every table."""
    tables = ("samples", "scores", "embedding_points", "embedding_blocks", "run_snapshots", "thumbnails", "tags")
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE run_id = :r"), {"r": run_id}).scalar_one()
                  for t in tables}
        counts["runs"] = conn.execute(text("SELECT count(*) FROM runs WHERE id = :r"), {"r": run_id}).scalar_one()
    return counts


def run_id(db, name):
    with db.engine.connect() as conn:
        return conn.execute(select(Run.id).where(Run.name == name)).scalar_one_or_none()


def all_rows(db) -> dict[str, int]:
    with db.engine.connect() as conn:
        return {t.name: conn.execute(text(f"SELECT count(*) FROM {t.name}")).scalar_one()
                for t in Base.metadata.sorted_tables}


def test_migrations_match_models(db):
    assert schema_revision(db.engine) == head_revision()
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        assert compare_metadata(context, Base.metadata) == []


def test_ingested_rows(db, fake_runs):
    rid = run_id(db, "alpha")
    counts = table_counts(db.engine, rid)
    scores = pd.read_parquet(fake_runs["alpha"] / "scores.parquet")
    samples = pd.read_parquet(fake_runs["alpha"] / "samples.parquet")
    assert counts["samples"] == len(samples) and counts["scores"] == len(scores)
    assert counts["embedding_points"] == len(scores) + (samples["split"] == "extra").sum()
    assert counts["embedding_blocks"] == 4 and counts["thumbnails"] == 0 and counts["run_snapshots"] == 2


def test_shard_images_stored_once_as_thumbnails(db, fake_runs):
    counts = table_counts(db.engine, run_id(db, "shards"))
    assert counts["thumbnails"] == counts["samples"]


def test_corrupt_parquet_leaves_no_trace(db, fake_runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fake_runs["alpha"], broken)
    (broken / "scores.parquet").write_bytes(b"PAR1 garbage")
    before = all_rows(db)
    with pytest.raises(ClipmemError, match="scores.parquet is corrupt: its SHA-256 differs"):
        ingest(db.engine, broken)
    assert all_rows(db) == before


def test_failure_while_writing_rolls_back(db, tmp_path, monkeypatch):
    run = write_synthetic_run(tmp_path / "halfway", 20, 20, 20, 5, seed=11)
    before = all_rows(db)

    def fail(*_args):
        raise RuntimeError("disk full (simulated)")

    # samples and scores are written by then; embeddings fail
    monkeypatch.setattr(clipmem.backend.ingest, "_insert_embeddings", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        ingest(db.engine, run)
    assert all_rows(db) == before
    assert run_id(db, "halfway") is None


def test_second_ingest_refused_then_replaced(db, client, tmp_path):
    run = write_synthetic_run(tmp_path / "again", 20, 20, 20, 5, seed=12)
    first = ingest(db.engine, run)
    assert client.post("/runs/again/tags/keep", json={"sample_ids": ["pair-0000021"]}).status_code == 200
    with pytest.raises(ClipmemError, match="already ingested as run 'again'; pass --replace"):
        ingest(db.engine, run)
    with pytest.raises(ClipmemError, match="already ingested"):
        ingest(db.engine, run, name="another-name")
    second = ingest(db.engine, run, replace=True)
    assert second.replaced == ["again"] and second.run_id != first.run_id
    assert table_counts(db.engine, first.run_id) == dict.fromkeys(table_counts(db.engine, first.run_id), 0)
    assert second.tags_kept == 1 and second.tags_dropped == 0
    assert client.get("/runs/again/tags").json() == [{"tag": "keep", "pairs": 1}]  # carried to the new run
    assert client.get("/runs/again").json()["n_scored"] == 40
    assert client.delete("/runs/again").status_code == 204


def tags_of(db, name: str) -> set[tuple[str, str]]:
    """(sample_id, tag) of every user tag of a run."""
    with db.engine.connect() as conn:
        return set(map(tuple, conn.execute(text(
            "SELECT s.sample_id, t.tag FROM tags t JOIN samples s ON s.run_id = t.run_id AND s.pair_index = "
            "t.pair_index JOIN runs r ON r.id = t.run_id WHERE r.name = :n"), {"n": name}).all()))


def test_replace_keeps_tags_or_refuses_to_drop_them(db, client, tmp_path, monkeypatch):
    """Issue 12: --replace dropped every user tag of the replaced run without a word. Tags of pairs the new
    run still has move to it; losing the others needs --drop-tags; the CLI says what happened."""
    from typer.testing import CliRunner

    from clipmem.cli import app

    # pair ids follow the split order: 20 shared, 20 candidate, 20 independent, 5 extra
    run = write_synthetic_run(tmp_path / "retag", 20, 20, 20, 5, seed=19)
    ingest(db.engine, run)
    for tag, ids in (("keep", ["pair-0000021", "pair-0000045"]), ("odd", ["pair-0000021", "pair-0000050"])):
        assert client.post(f"/runs/retag/tags/{tag}", json={"sample_ids": ids}).status_code == 200
    tagged = {("pair-0000021", "keep"), ("pair-0000045", "keep"), ("pair-0000021", "odd"), ("pair-0000050", "odd")}
    assert tags_of(db, "retag") == tagged

    same = ingest(db.engine, run, replace=True)
    assert (same.tags_kept, same.tags_dropped) == (4, 0) and tags_of(db, "retag") == tagged

    # a smaller version of the run (pairs 0..32): pairs 45 and 50 are gone
    smaller = write_synthetic_run(tmp_path / "retag-small", 10, 10, 10, 3, seed=19)
    with pytest.raises(ClipmemError, match="replacing run 'retag' would drop 2 user tag\\(s\\) on pairs the new run "
                                           "lacks \\(e.g. tag 'keep' on sample pair-0000045\\); pass --drop-tags"):
        ingest(db.engine, smaller, name="retag", replace=True)
    assert run_id(db, "retag") == same.run_id and tags_of(db, "retag") == tagged  # nothing changed

    monkeypatch.setenv("CLIPMEM_DATABASE_URL", db.url)
    result = CliRunner().invoke(app, ["ingest", str(smaller), "--name", "retag", "--replace", "--drop-tags"])
    assert result.exit_code == 0, result.output
    assert "user tags: kept 2 of the replaced run on the same sample ids; dropped 2 on pairs the new run lacks" \
        in " ".join(result.output.split())
    assert tags_of(db, "retag") == {("pair-0000021", "keep"), ("pair-0000021", "odd")}
    assert client.delete("/runs/retag").status_code == 204


def flip_score_bit(path, column: str) -> tuple[str, float, float]:
    """Flip the lowest exponent bit of one value of `column` in a Parquet file, which doubles it: the file
    still reads (Parquet pages carry no checksum as pyarrow writes them). Returns (sample_id, before, after)."""
    import struct

    frame = pd.read_parquet(path)
    row = int(np.flatnonzero((frame[column] > 0.55).to_numpy())[0])
    before = float(frame[column].iloc[row])
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<d", before))
    assert at >= 0 and data.find(struct.pack("<d", before), at + 1) < 0  # stored once, literally
    data[at + 6] ^= 0x10  # exponent bit 0
    path.write_bytes(bytes(data))
    after = float(pd.read_parquet(path)[column].iloc[row])
    return str(frame["sample_id"].iloc[row]), before, after


def test_bit_flipped_scores_are_refused(db, fake_runs, tmp_path):
    """Issue 12: a bit-flipped scores.parquet ingested with exit 0 and cosines above 1. The checksum in
    COMPLETE names the damaged file; a run without checksums is stopped by the range check."""
    run = tmp_path / "flipped"
    shutil.copytree(fake_runs["alpha"], run)
    sid, before, after = flip_score_bit(run / "scores.parquet", "align_f")
    assert after == 2 * before  # the damage reads back as a plausible-looking number
    rows = all_rows(db)
    with pytest.raises(ClipmemError, match=f"{run / 'scores.parquet'} is corrupt: its SHA-256 differs from the one "
                                           "recorded in"):
        ingest(db.engine, run)
    legacy_marker(run)
    with pytest.raises(ClipmemError, match=f"column align_f is {after:.6g} for sample {sid}, outside \\[-1, 1\\]"):
        ingest(db.engine, run)
    assert all_rows(db) == rows


def legacy_marker(run) -> None:
    """COMPLETE as clipmem wrote it before it recorded checksums."""
    (run / "COMPLETE").write_text(json.dumps({"outputs": sorted(p.name for p in run.iterdir())}))


def test_run_without_checksums_ingests_with_a_warning(db, fake_runs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from clipmem.cli import app

    run = tmp_path / "legacy"
    shutil.copytree(fake_runs["alpha"], run)
    legacy_marker(run)
    monkeypatch.setenv("CLIPMEM_DATABASE_URL", db.url)
    result = CliRunner().invoke(app, ["ingest", str(run)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "records no checksums" in result.output
    try:
        assert ingest(db.engine, run, replace=True).warnings[0].startswith(f"{run / 'COMPLETE'} records no checksums")
    finally:
        with db.engine.begin() as conn:
            delete_run(conn, run_id(db, "legacy"))


def test_name_taken_by_another_directory(db, fake_runs, tmp_path):
    other = write_synthetic_run(tmp_path / "other", 20, 20, 20, 5, seed=13)
    with pytest.raises(ClipmemError, match="a run named 'alpha' already exists"):
        ingest(db.engine, other, name="alpha")


def test_bad_run_name(db, tmp_path):
    run = write_synthetic_run(tmp_path / "odd name", 20, 20, 20, 5, seed=14)
    with pytest.raises(ClipmemError, match="run name 'odd name' is not allowed"):
        ingest(db.engine, run)


def test_delete_removes_everything(db, client, tmp_path):
    run = write_synthetic_run(tmp_path / "doomed", 20, 20, 20, 5, seed=15, images="tar")
    rid = ingest(db.engine, run).run_id
    assert client.post("/runs/doomed/tags/x", json={"sample_ids": ["pair-0000001"]}).status_code == 200
    assert client.get("/runs/doomed/histogram").status_code == 200  # fills the score cache
    assert client.delete("/runs/doomed").status_code == 204
    assert set(table_counts(db.engine, rid).values()) == {0}
    assert client.get("/runs/doomed").status_code == 404
    assert client.get("/runs/doomed/histogram").status_code == 404


def test_snapshots_span_many_blocks(db, monkeypatch):
    import pyarrow as pa

    import clipmem.backend.snapshots as snapshots

    monkeypatch.setattr(snapshots, "BLOCK_BYTES", 1000)
    table = pa.table({"pair_index": list(range(5000)), "text": [f"caption {i}" for i in range(5000)]})
    rid = run_id(db, "alpha")
    with db.engine.connect() as conn:
        snapshots.write_snapshot(conn, rid, "test-blocks", table)
        assert snapshots.read_snapshot(conn, rid, "test-blocks").equals(table)
        assert snapshots.read_snapshot(conn, rid, "absent") is None
        conn.rollback()  # leave the shared run as it was


def test_umap_maps_when_asked(db, client, tmp_path, monkeypatch):
    """UMAP is optional (umap-learn is not a dependency): a stand-in module checks the wiring, fit on a
    sample and the rest placed with transform."""
    import sys
    import types

    import numpy as np

    import clipmem.backend.maps

    class FakeUMAP:
        def __init__(self, n_components, random_state, metric):
            assert (n_components, metric) == (2, "cosine")

        def fit_transform(self, x):
            self.fitted = len(x)
            return x[:, :2] * 10

        def transform(self, x):
            return x[:, :2] * 10

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(clipmem.backend.maps, "UMAP_FIT_ROWS", 30)
    run = write_synthetic_run(tmp_path / "mapped", 20, 20, 10, 5, seed=17)
    ingest(db.engine, run, map_method="umap")
    try:
        body = client.get("/runs/mapped/maps", params={"max_points": 100}).json()
        assert body["method"] == "umap"
        with np.load(run / "embeddings.npz") as npz:
            expected = dict(zip(npz["sample_id"], npz["f_image"][:, 0].astype(float) * 10))
        assert body["f_x"] == pytest.approx([expected[s] for s in body["sample_id"]], rel=1e-5)
    finally:
        client.delete("/runs/mapped")


def test_umap_missing_is_a_clear_error(db, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError
    run = write_synthetic_run(tmp_path / "unmapped", 5, 5, 5, 2, seed=18)
    with pytest.raises(ClipmemError, match="needs the umap-learn package"):
        ingest(db.engine, run, map_method="umap")


# ---------------------------------------------------------------- partial indexes on the optional scores


def _where_text(clause) -> str | None:
    """An index predicate as comparable text: lower case, no parentheses, single spaces."""
    if clause is None:
        return None
    return " ".join(str(clause).replace("(", " ").replace(")", " ").lower().split())


def reflected_predicates(engine: Engine) -> dict[str, str | None]:
    """Predicate of every index on scores (None for a full index), by index name."""
    from sqlalchemy import inspect

    kind = engine.dialect.name
    return {ix["name"]: _where_text(ix.get("dialect_options", {}).get(f"{kind}_where"))
            for ix in inspect(engine).get_indexes("scores")}


def model_predicates(dialect: str) -> dict[str, str | None]:
    from clipmem.backend.models import Score

    out = {}
    for index in Score.__table__.indexes:
        where = index.dialect_options[dialect]._non_defaults.get("where")
        out[index.name] = _where_text(where.compile(compile_kwargs={"literal_binds": True})
                                      if where is not None else None)
    return out


def partition_predicates(engine: Engine) -> list[tuple[str, str]]:
    """(partition, index definition) of every index on a run partition of scores (PostgreSQL)."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename LIKE 'scores\\_run\\_%'"))]


def check_partial_indexes(engine: Engine) -> None:
    from clipmem.scoring.columns import SCORE_COLUMNS

    predicates = reflected_predicates(engine)
    assert predicates == model_predicates(engine.dialect.name)
    for column in SCORE_COLUMNS:
        expected = None if column.required else f"{column.name} is not null"
        assert predicates[f"ix_scores_run_id_{column.name}"] == expected
    if engine.dialect.name == "postgresql":
        rows = partition_predicates(engine)
        assert rows, "no run partitions to check"
        for column in SCORE_COLUMNS:
            defs = [d for _, d in rows if f"(run_id, {column.name}, pair_index)" in d]
            assert len(defs) == len({t for t, _ in rows})  # one such index per partition
            for definition in defs:
                assert (f"WHERE ({column.name} IS NOT NULL)" in definition) is (not column.required), definition


def test_optional_score_indexes_leave_nulls_out(db):
    """The optional score columns' indexes are partial in the database (SQLite reflects the predicate, as
    PostgreSQL does), on every run partition too; Alembic's comparison does not look at predicates."""
    check_partial_indexes(db.engine)


def _plan(conn, statement) -> str:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
        prefix = "EXPLAIN "
    else:
        prefix = "EXPLAIN QUERY PLAN "
    compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
    return "\n".join(" ".join(map(str, row)) for row in conn.exec_driver_sql(prefix + str(compiled)))


@pytest.mark.parametrize("filtered", [False, True])
def test_export_sorted_by_an_optional_score_uses_its_partial_index(db, filtered):
    """The export's ORDER BY an optional score can walk the partial index: the query says `IS NOT NULL`
    (sort_conditions), or a range on the column implies it."""
    from clipmem.backend.api.query import SampleFilter, sql_conditions
    from clipmem.backend.api.routers.exports import page_order, sort_conditions

    with db.engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.name == "mem")).first()
        query = SampleFilter(**({"mem_text_min": 0.1} if filtered else {}))
        from clipmem.backend.models import Score
        statement = (select(Score.pair_index).where(*sql_conditions(run, query), *sort_conditions("mem_text"))
                     .order_by(*page_order("mem_text", "desc")).limit(20))
        plan = _plan(conn, statement)
        conn.rollback()
    # SQLite names the index itself; PostgreSQL the partition's copy of it (..._run_id_mem_text_pair_index_idx)
    assert "ix_scores_run_id_mem_text" in plan or "run_id_mem_text_pair_index_idx" in plan, plan


@pytest.fixture
def fresh_engine(database_url, tmp_path):
    """An empty database of the session's kind, of this test's own."""
    import os

    from tests.backend.conftest import PG_ENV, _postgres_schema_url

    from clipmem.backend.db import make_engine

    if database_url.startswith("sqlite"):
        engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        engine.dispose()
        return
    admin, schema, url = _postgres_schema_url(os.environ[PG_ENV])
    engine = make_engine(url)
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_migrations_down_and_up_with_runs_ingested(fresh_engine, tmp_path):
    """0003 rebuilds the optional score indexes on a database holding runs (PostgreSQL: on every attached
    partition); its downgrade restores full indexes; downgrades keep the runs' rows (SQLite drops columns in
    place: recreating `runs` would delete every run's rows by cascade)."""
    from alembic import command

    from clipmem.backend.db import _alembic_config, migrate

    migrate(fresh_engine)
    ingest(fresh_engine, write_synthetic_run(tmp_path / "plain", 10, 10, 10, 3, seed=61))
    ingest(fresh_engine, write_synthetic_run(tmp_path / "towers", 10, 10, 10, 3, seed=62, optional_scores=True))
    with fresh_engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0002")
    assert schema_revision(fresh_engine) == "0002"
    assert set(reflected_predicates(fresh_engine).values()) == {None}
    with fresh_engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0001")  # no downgrade may take rows with it
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores")).scalar_one() == 40
    migrate(fresh_engine)
    assert schema_revision(fresh_engine) == head_revision()
    check_partial_indexes(fresh_engine)
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE mem_text IS NOT NULL")).scalar_one() == 20


def test_migration_0005_upgrades_a_database_at_0004_holding_runs(fresh_engine, tmp_path):
    """A database at 0004 with a run (made by ingesting, then downgrading: the 0004 schema itself) upgrades to
    0005: the run keeps every row and serves with the significance fields null; a run with significance then
    ingests beside it, and the schema equals the models'."""
    from alembic import command
    from fastapi.testclient import TestClient
    from sqlalchemy import inspect

    from clipmem.backend.api.app import create_app
    from clipmem.backend.db import _alembic_config, migrate
    from clipmem.backend.settings import Settings

    migrate(fresh_engine)
    old = ingest(fresh_engine, write_synthetic_run(tmp_path / "old", 10, 10, 10, 3, seed=63, optional_scores=True,
                                                   evidence=False))
    with fresh_engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0004")
    assert schema_revision(fresh_engine) == "0004"
    assert not {"clipmem_q", "memorized", "null_for"} & {c["name"] for c in inspect(fresh_engine).get_columns("scores")}
    assert "null_scores" not in {c["name"] for c in inspect(fresh_engine).get_columns("runs")}

    migrate(fresh_engine)
    assert schema_revision(fresh_engine) == head_revision()
    assert table_counts(fresh_engine, old.run_id)["scores"] == 20
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE memorized IS NOT NULL OR clipmem_q IS NOT NULL "
                                 "OR null_for IS NOT NULL")).scalar_one() == 0
    new = ingest(fresh_engine, write_synthetic_run(tmp_path / "new", 10, 10, 10, 12, seed=64, optional_scores=True,
                                                   significance=True))
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE run_id = :r AND memorized IS NOT NULL"),
                            {"r": new.run_id}).scalar_one() == 20
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        assert compare_metadata(context, Base.metadata) == []
    check_partial_indexes(fresh_engine)
    with TestClient(create_app(Settings(database_url=fresh_engine.url.render_as_string(hide_password=False),
                                        api_token=None))) as client:
        item = client.get("/runs/old/samples", params={"limit": 1}).json()["items"][0]
        assert item["memorized"] is None and item["interval"] is None
        assert client.get("/runs/old").json()["flagged_by_truth"] == []
        assert client.get("/runs/old/null").status_code == 404
        assert client.get("/runs/new/samples", params={"memorized": "true"}).status_code == 200


def test_sqlite_bulk_ingest_journal_and_a_running_server(tmp_path):
    """A bulk ingest writes through a rollback journal (no WAL double write) when it has the file to
    itself, stays in WAL when a server has it open, and serving turns WAL back on either way."""
    import sqlite3

    from clipmem.backend.db import make_engine, migrate

    url = f"sqlite:///{tmp_path / 'j.db'}"
    served = make_engine(url)
    migrate(served)
    served.dispose()
    bulk = make_engine(url, bulk_write=True)
    with bulk.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
    ingest(bulk, write_synthetic_run(tmp_path / "alone", 20, 20, 20, 5, seed=3))
    bulk.dispose()

    server = sqlite3.connect(tmp_path / "j.db")  # a server's open connection, in WAL
    assert server.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    server.execute("SELECT count(*) FROM runs").fetchone()
    bulk = make_engine(url, bulk_write=True)
    ingest(bulk, write_synthetic_run(tmp_path / "beside", 20, 20, 20, 5, seed=4))
    with bulk.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    bulk.dispose()
    assert server.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    server.close()
