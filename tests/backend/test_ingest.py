"""Ingest: one transaction, refused twice unless replacing, the schema equal to its migrations."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from sqlalchemy import Engine, select, text

import backend.ingest
from backend.db import head_revision, schema_revision
from backend.ingest import ingest
from backend.models import Base, Run
from backend.synthetic_run import write_synthetic_run
from scoring.errors import ClipmemError


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
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from backend.db import include_object

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
    with pytest.raises(ClipmemError, match="scores.parquet cannot be read"):
        ingest(db.engine, broken)
    assert all_rows(db) == before


def test_failure_while_writing_rolls_back(db, tmp_path, monkeypatch):
    run = write_synthetic_run(tmp_path / "halfway", 20, 20, 20, 5, seed=11)
    before = all_rows(db)

    def fail(*_args):
        raise RuntimeError("disk full (simulated)")

    # samples and scores are written by then; embeddings fail
    monkeypatch.setattr(backend.ingest, "_insert_embeddings", fail)
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
    assert client.get("/runs/again/tags").json() == []  # tags belonged to the replaced run
    assert client.get("/runs/again").json()["n_scored"] == 40
    assert client.delete("/runs/again").status_code == 204


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

    import backend.snapshots as snapshots

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

    import backend.maps

    class FakeUMAP:
        def __init__(self, n_components, random_state, metric):
            assert (n_components, metric) == (2, "cosine")

        def fit_transform(self, x):
            self.fitted = len(x)
            return x[:, :2] * 10

        def transform(self, x):
            return x[:, :2] * 10

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(backend.maps, "UMAP_FIT_ROWS", 30)
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
