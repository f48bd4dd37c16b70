"""A real tiny run (trained by scoring, shared with the scoring tests) ingested and served end to end."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipmem.backend.ingest import ingest
from clipmem.scoring.columns import LAYER_INTERVAL_COLUMNS, LAYER_UNIT_COLUMNS
from clipmem.scoring.report import summarize


def test_real_run_end_to_end(db, client, tiny_run):
    run, _ = tiny_run
    result = ingest(db.engine, run.path, name="tiny-real")
    try:
        scores = pd.read_parquet(run.scores)
        assert result.scored == len(scores) and result.samples == len(pd.read_parquet(run.samples))
        detail = client.get("/runs/tiny-real").json()
        assert detail["n_scored"] == len(scores) and detail["model"] == "clipmem-tiny"
        assert detail["utility"]["f"].keys() >= {"i2t_r1", "t2i_r1"}

        # the backend's detection figures are the ones `clipmem report` computes
        expected = summarize(scores)
        served = client.get("/runs/tiny-real/detection").json()
        for key in ("faulty", "swapped"):
            mine = {row["score"]: row for row in served[key]}
            for row in expected[f"detection_{key}"]:
                assert mine[row["score"]]["auroc"] == pytest.approx(row["auroc"])
                assert mine[row["score"]]["average_precision"] == pytest.approx(row["average_precision"])
                assert mine[row["score"]]["precision_at_k"] == pytest.approx(row["precision_at_k"])
        means = {row["truth"]: row["means"]["clipmem"] for row in detail["score_summary"]["by_truth"]}
        for row in expected["by_truth"]:
            assert means[row["truth"]] == pytest.approx(row["clipmem"])

        top = client.get("/runs/tiny-real/samples", params={"limit": 3}).json()
        assert top["total"] == len(scores)
        assert [i["sample_id"] for i in top["items"]] == scores.nlargest(3, "clipmem")["sample_id"].tolist()
        sid = top["items"][0]["sample_id"]
        image = client.get(f"/runs/tiny-real/images/{sid}", params={"size": 64})
        assert image.status_code == 200 and max(Image.open(io.BytesIO(image.content)).size) == 64

        with np.load(run.embeddings) as npz:
            row = list(npz["sample_id"]).index(sid)
            own = float(npz["f_image"][row] @ npz["f_text"][row])
        near = client.get(f"/runs/tiny-real/neighbours/{sid}", params={"k": 100}).json()
        mine = [n for n in near["f"]["captions_near_image"] if n["same_pair"]]
        if mine:  # its own caption is among the 100 nearest: similarity is the f cosine (float16 storage)
            assert mine[0]["similarity"] == pytest.approx(own, abs=2e-3)
    finally:
        client.delete("/runs/tiny-real")


def test_real_run_significance(db, client, tiny_run):
    """What scoring writes for significance (null.parquet, p, q, memorized, view intervals) ingests and serves as
    the files hold it."""
    run, cfg = tiny_run
    ingest(db.engine, run.path, name="tiny-significance")
    try:
        scores, null = pd.read_parquet(run.scores), pd.read_parquet(run.null)
        flagged = set(scores.loc[scores["clipmem_q"] <= cfg.score.fdr, "sample_id"])
        page = client.get("/runs/tiny-significance/samples", params={"memorized": "true", "limit": 500}).json()
        assert {item["sample_id"] for item in page["items"]} == flagged and page["total"] == len(flagged)
        detail = client.get("/runs/tiny-significance").json()
        assert detail["fdr"] == cfg.score.fdr and detail["flagged"] == len(flagged) and detail["has_null"]
        served = client.get("/runs/tiny-significance/null").json()["by_key"]
        assert set(served) == set(null["null_for"])
        for key, rows in null.groupby("null_for"):
            assert served[key]["values"] == pytest.approx(rows["clipmem_raw"].tolist())
        top = client.get("/runs/tiny-significance/samples", params={"sort": "clipmem_q", "order": "asc",
                                                                    "limit": 1}).json()["items"][0]
        row = scores.set_index("sample_id").loc[top["sample_id"]]
        assert row["clipmem_q"] == scores["clipmem_q"].min()
        assert top["interval"] == pytest.approx({"estimate": row["clipmem_raw"], "lo": row["clipmem_raw_lo"],
                                                 "hi": row["clipmem_raw_hi"]})
        sample = client.get(f"/runs/tiny-significance/samples/{top['sample_id']}").json()
        assert sample["null_for"] == row["split"] and sample["null_for"] in served
    finally:
        client.delete("/runs/tiny-significance")


def test_encoder_summary_and_layer_curves(db, client, tiny_run):
    run, cfg = tiny_run
    ingest(db.engine, run.path, name="tiny-encoders")
    try:
        scores = pd.read_parquet(run.scores)
        layers = pd.read_parquet(run.layers)
        summary = client.get("/runs/tiny-encoders/encoders").json()
        assert summary["has_tower_scores"]
        assert summary["pearson"] == pytest.approx(np.corrcoef(scores["mem_image_raw"], scores["mem_text_raw"])[0, 1])
        expected = summarize(scores)["towers_by_truth"]
        served = {row["truth"]: row for row in summary["by_truth"]}
        for row in expected:
            assert served[row["truth"]]["means"]["mem_text_raw"] == pytest.approx(row["mem_text_raw"])
            assert served[row["truth"]]["text_exceeds_image"] == bool(row["text_exceeds_image"])
        assert len(summary["layers"]) == len(layers)
        points = {(p["tower"], p["layer"], p["truth"]): p for p in summary["layers"]}
        for row in layers.itertuples():  # the intervals scoring wrote, when it wrote them
            for name in LAYER_INTERVAL_COLUMNS:
                expected = getattr(row, name, None)
                assert points[(row.tower, row.layer, row.truth)][name] == (None if expected is None
                                                                            else pytest.approx(expected))
            # UnitMem: the file's value on the "all" rows, null (NaN in the file) on the truth-tag rows
            for name in LAYER_UNIT_COLUMNS:
                served = points[(row.tower, row.layer, row.truth)][name]
                if row.truth == "all":
                    assert 0 <= served <= 1 and served == pytest.approx(getattr(row, name))
                else:
                    assert served is None and np.isnan(getattr(row, name))
        assert {(p["tower"], p["layer"]) for p in summary["layers"]} == set(zip(layers["tower"], layers["layer"]))
        top = scores.nlargest(1, "clipmem")["sample_id"].iloc[0]
        assert top in summary["curve_sample_ids"]
        curve = client.get(f"/runs/tiny-encoders/encoders/curves/{top}").json()
        assert set(curve["curves"]) == {"image", "text"} and len(curve["curves"]["text"]) == 1
        low = scores.nsmallest(1, "clipmem")["sample_id"].iloc[0]
        missing = client.get(f"/runs/tiny-encoders/encoders/curves/{low}")
        assert missing.status_code == 404 and "most memorized" in missing.json()["detail"]
    finally:
        client.delete("/runs/tiny-encoders")


def test_encoder_summary_follows_what_each_run_has(client):
    """Fake runs (no layers.parquet; some without tower scores) answer with what they have, never 500."""
    runs = client.get("/runs").json()
    for entry in runs if isinstance(runs, list) else runs["items"]:
        detail = client.get(f"/runs/{entry['name']}").json()
        summary = client.get(f"/runs/{entry['name']}/encoders").json()
        assert summary["has_tower_scores"] == ({"mem_image_raw", "mem_text_raw"} <= set(detail["score_names"]))
        assert bool(summary["by_truth"]) == summary["has_tower_scores"]
        assert summary["layers"] == [] and summary["curve_sample_ids"] == []
