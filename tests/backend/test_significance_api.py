"""Significance (issue 15) through ingest and the API, on every database: flags, q-values, intervals and the null.

Expected values come from the run directory's files read with pandas (which pairs have q <= the FDR, the null's
values, each pair's interval), from constructed cases with known answers (a constant column's interval is
[c, c]; a single pair's is its value), or from a direct call of the scoring.significance function the backend
is documented to use; never from the database.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from clipmem.backend.ingest import ingest
from clipmem.scoring.columns import LAYER_COLUMNS, LAYER_INTERVAL_COLUMNS, LAYER_UNIT_COLUMNS
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.rundir import RunDir
from clipmem.scoring.significance import Interval, bootstrap_difference, bootstrap_mean, verdict
from tests.backend.test_api import files, walk


def fdr_of(run_dir) -> float:
    return json.loads((run_dir / "config.json").read_text())["score"]["fdr"]


def test_memorized_filter_selects_the_pairs_with_q_at_most_the_fdr(client, fake_runs):
    scores, _ = files(fake_runs["sig"])
    fdr = fdr_of(fake_runs["sig"])
    flagged = set(scores.loc[scores["clipmem_q"] <= fdr, "sample_id"])
    assert 0 < len(flagged) < len(scores)  # the fixture has both kinds, so the filter can fail either way
    ids, totals = walk(client, "sig", memorized="true", limit=7)
    assert set(ids) == flagged and len(ids) == len(flagged) and totals == {len(flagged)}
    ids, totals = walk(client, "sig", memorized="false", limit=50)
    assert set(ids) == set(scores["sample_id"]) - flagged and totals == {len(scores) - len(flagged)}
    # the same selection through SQL (the export) as through the cached columns (pages)
    response = client.get("/runs/sig/exports/selection.csv", params={"memorized": "true", "sort": "clipmem_q"})
    assert response.status_code == 200, response.text
    export = pd.read_csv(io.StringIO(response.text))
    assert set(export["sample_id"]) == flagged and export["memorized"].all()
    histogram = client.get("/runs/sig/histogram", params={"score": "clipmem", "memorized": "true"}).json()
    assert histogram["matched"] == len(flagged)


def test_sort_and_filter_by_q(client, fake_runs):
    scores, _ = files(fake_runs["sig"])
    ids, _ = walk(client, "sig", sort="clipmem_q", order="asc", limit=9)
    expected = scores.sort_values(["clipmem_q", "pair_index"])["sample_id"].tolist()
    assert ids == expected
    ids, totals = walk(client, "sig", sort="clipmem_q", order="asc", clipmem_q_max=0.2, truth="clean", limit=9)
    chosen = scores[(scores["clipmem_q"] <= 0.2) & (scores["truth"] == "clean")]
    assert ids == chosen.sort_values(["clipmem_q", "pair_index"])["sample_id"].tolist() and totals == {len(chosen)}


def test_payload_carries_flag_and_interval_from_the_file(client, fake_runs):
    scores, _ = files(fake_runs["sig"])
    fdr = fdr_of(fake_runs["sig"])
    by_id = scores.set_index("sample_id")
    page = client.get("/runs/sig/samples", params={"sort": "clipmem_q", "order": "asc", "limit": 40}).json()
    for item in page["items"]:
        row = by_id.loc[item["sample_id"]]
        assert item["memorized"] is bool(row["clipmem_q"] <= fdr)
        assert item["interval"] == pytest.approx({"estimate": row["clipmem_raw"], "lo": row["clipmem_raw_lo"],
                                                  "hi": row["clipmem_raw_hi"]})
        assert item["scores"]["clipmem_p"] == pytest.approx(row["clipmem_p"])
        assert item["scores"]["clipmem_q"] == pytest.approx(row["clipmem_q"])
    for sid in (page["items"][0]["sample_id"], page["items"][-1]["sample_id"]):
        detail = client.get(f"/runs/sig/samples/{sid}").json()
        row = by_id.loc[sid]
        assert detail["memorized"] is bool(row["clipmem_q"] <= fdr)
        assert detail["interval"]["lo"] == pytest.approx(row["clipmem_raw_lo"])
        assert detail["interval"]["hi"] == pytest.approx(row["clipmem_raw_hi"])
        assert detail["null_for"] == row["split"]  # the published scheme: a pair's null is its split's direction
        assert detail["scores"]["clipmem_raw_sd"] == pytest.approx(row["clipmem_raw_sd"])
    # a pair that is not scored has no flag, interval or null
    samples = pd.read_parquet(fake_runs["sig"] / "samples.parquet")
    extra = samples.loc[samples["split"] == "extra", "sample_id"].iloc[0]
    detail = client.get(f"/runs/sig/samples/{extra}").json()
    assert detail["memorized"] is None and detail["interval"] is None and detail["null_for"] is None


def test_null_endpoint_serves_null_parquet(client, fake_runs):
    null = pd.read_parquet(fake_runs["sig"] / "null.parquet")
    body = client.get("/runs/sig/null").json()
    assert body["fdr"] == fdr_of(fake_runs["sig"])
    assert set(body["by_key"]) == set(null["null_for"]) == {"candidate", "independent"}
    for key, rows in null.groupby("null_for"):
        served = body["by_key"][key]
        assert served["values"] == pytest.approx(rows["clipmem_raw"].tolist())
        assert served["pairs"] == len(rows)
        assert served["mean"] == pytest.approx(float(np.mean(rows["clipmem_raw"])))
        assert served["sd"] == pytest.approx(float(np.std(rows["clipmem_raw"], ddof=1)))
    assert body["null_pairs"] == null["sample_id"].nunique()
    metrics = json.loads((fake_runs["sig"] / "metrics.json").read_text())
    assert body["tail_method"] == metrics["significance"]["tail"]


def test_flagged_counts_per_truth_tag(client, fake_runs):
    scores, _ = files(fake_runs["sig"])
    fdr = fdr_of(fake_runs["sig"])
    flagged = scores["clipmem_q"] <= fdr
    detail = client.get("/runs/sig").json()
    assert detail["fdr"] == fdr and detail["flagged"] == int(flagged.sum())
    assert detail["flag_names"] == ["memorized"] and detail["has_null"] is True
    expected = [{"truth": tag, "pairs": int(len(rows)), "flagged": int(flagged[rows.index].sum()),
                 "fraction": pytest.approx(float(flagged[rows.index].mean()))}
                for tag, rows in scores.groupby("truth")]
    expected.append({"truth": "all", "pairs": len(scores), "flagged": int(flagged.sum()),
                     "fraction": pytest.approx(float(flagged.mean()))})
    assert detail["flagged_by_truth"] == expected
    listed = {run["name"]: run for run in client.get("/runs").json()}
    assert listed["sig"]["flagged_by_truth"] == expected and listed["sig"]["flagged"] == int(flagged.sum())


def test_mean_intervals_per_truth_tag(client, fake_runs):
    """A tag with a single pair has the interval [v, v] of its one value; the others are bootstrap_mean's over the
    tag's pairs from the file, and every interval holds its mean."""
    scores, _ = files(fake_runs["sig"])
    summary = client.get("/runs/sig").json()["score_summary"]
    by_truth = {row["truth"]: row for row in summary["by_truth"]}
    single = [tag for tag, rows in scores.groupby("truth") if len(rows) == 1]
    assert single, "the fixture should have a truth tag with one pair"
    for tag in single:
        value = float(scores.loc[scores["truth"] == tag, "clipmem_raw"].iloc[0])
        assert by_truth[tag]["intervals"]["clipmem_raw"] == pytest.approx({"estimate": value, "lo": value, "hi": value})
    clean = scores.loc[scores["truth"] == "clean", "clipmem_raw"].to_numpy()
    direct = bootstrap_mean(clean, seed=0)
    assert by_truth["clean"]["intervals"]["clipmem_raw"] == pytest.approx(
        {"estimate": float(clean.mean()), "lo": direct.lo, "hi": direct.hi})
    for row in [*summary["by_truth"], {"intervals": summary["intervals"], "truth": "all"}]:
        for interval in row["intervals"].values():
            assert interval["lo"] <= interval["estimate"] <= interval["hi"]


@pytest.fixture(scope="module")
def constant_image_run(db, client, tmp_path_factory, fake_runs):
    """The sig run with mem_image_raw constant (0.25) and a layers.parquet with intervals."""
    run = tmp_path_factory.mktemp("const") / "sig-const"
    shutil.copytree(fake_runs["sig"], run)
    scores = pd.read_parquet(run / "scores.parquet")
    scores["mem_image_raw"] = 0.25
    scores.to_parquet(run / "scores.parquet", index=False)
    layers = pd.DataFrame([{"tower": tower, "layer": layer, "truth": "all", "pairs": len(scores),
                            "layer_mem": 0.01 * layer, "delta_layer_mem": 0.01,
                            "layer_mem_lo": 0.01 * layer - 0.002, "layer_mem_hi": 0.01 * layer + 0.003,
                            "delta_layer_mem_lo": 0.008, "delta_layer_mem_hi": 0.012}
                           for tower in ("image", "text") for layer in (1, 2)])
    layers.to_parquet(run / "layers.parquet", index=False)
    RunDir(run).mark_finished()
    ingest(db.engine, run)
    yield run
    client.delete("/runs/sig-const")


def test_encoder_intervals_and_verdicts(client, constant_image_run):
    scores = pd.read_parquet(constant_image_run / "scores.parquet")
    body = client.get("/runs/sig-const/encoders").json()
    served = {row["truth"]: row for row in body["by_truth"]}
    assert set(served) == {*scores["truth"], "all"}
    for tag, row in served.items():
        rows = scores if tag == "all" else scores[scores["truth"] == tag]
        # a constant column: every resample has the same mean, so the interval is [c, c]
        assert row["intervals"]["mem_image_raw"] == pytest.approx({"estimate": 0.25, "lo": 0.25, "hi": 0.25})
        text = rows["mem_text_raw"].to_numpy()
        direct = bootstrap_mean(text, seed=0)
        assert row["intervals"]["mem_text_raw"] == pytest.approx({"estimate": text.mean(), "lo": direct.lo,
                                                                  "hi": direct.hi})
        # text - 0.25 resampled with the same draws: the text interval shifted by the constant
        shifted = {k: v - 0.25 for k, v in row["intervals"]["mem_text_raw"].items()}
        assert row["text_minus_image"] == pytest.approx(shifted)
        diff = bootstrap_difference(text, rows["mem_image_raw"].to_numpy(), seed=0)
        assert row["verdict"] == verdict("text side", "image side", diff)
        assert row["text_exceeds_image"] is bool(diff.lo > 0) and row["image_exceeds_text"] is bool(diff.hi < 0)
        swap = bootstrap_difference(rows["mem_swap_text"].to_numpy(), rows["mem_swap_image"].to_numpy(), seed=0)
        assert row["swap_text_minus_image"] == pytest.approx({"estimate": swap.estimate, "lo": swap.lo, "hi": swap.hi})
    # the text side's mean is far above the constant 0.25 (0.35 with a standard error near 0.01): the verdict says so
    assert scores["mem_text_raw"].mean() - 0.25 > 5 * scores["mem_text_raw"].sem()
    assert served["all"]["text_exceeds_image"] is True and served["all"]["image_exceeds_text"] is False
    assert served["all"]["verdict"].startswith("text side > image side (difference")


def test_layer_points_carry_the_files_intervals(client, constant_image_run):
    layers = pd.read_parquet(constant_image_run / "layers.parquet")
    served = {(p["tower"], p["layer"]): p for p in client.get("/runs/sig-const/encoders").json()["layers"]}
    assert len(served) == len(layers)
    for row in layers.itertuples():
        point = served[(row.tower, row.layer)]
        for name in LAYER_INTERVAL_COLUMNS:
            assert point[name] == pytest.approx(getattr(row, name))
        # written before UnitMem: the file has no UnitMem columns, the points null ones
        assert all(point[name] is None for name in LAYER_UNIT_COLUMNS)


def test_older_run_serves_with_the_new_fields_null(client):
    """alpha was written without significance (no null.parquet, no p/q/flag columns), as older runs were."""
    detail = client.get("/runs/alpha").json()
    assert detail["fdr"] is None and detail["flagged"] is None and detail["flagged_by_truth"] == []
    assert detail["flag_names"] == [] and detail["has_null"] is False
    assert "clipmem_q" not in detail["score_names"]
    item = client.get("/runs/alpha/samples", params={"limit": 1}).json()["items"][0]
    assert item["memorized"] is None and item["interval"] is None and "clipmem_p" not in item["scores"]
    sample = client.get(f"/runs/alpha/samples/{item['sample_id']}").json()
    assert sample["memorized"] is None and sample["interval"] is None and sample["null_for"] is None
    missing = client.get("/runs/alpha/null")
    assert missing.status_code == 404 and "run 'alpha' has no null" in missing.json()["detail"]
    refused = client.get("/runs/alpha/samples", params={"memorized": "true"})
    assert refused.status_code == 422 and "run 'alpha' has no memorized flags" in refused.text
    refused = client.get("/runs/alpha/samples", params={"sort": "clipmem_q"})
    assert refused.status_code == 422 and "run 'alpha' has no clipmem_q scores" in refused.text
    # encoders of a run with tower scores but no significance: intervals from the frame, computed on request
    encoders = client.get("/runs/mem/encoders").json()
    assert all(row["intervals"]["mem_text_raw"]["lo"] <= row["means"]["mem_text_raw"] for row in encoders["by_truth"])


def _copy(fake_runs, tmp_path, name="broken"):
    run = tmp_path / name
    shutil.copytree(fake_runs["sig"], run)
    return run


def test_inconsistent_significance_files_are_refused(db, fake_runs, tmp_path):
    run = _copy(fake_runs, tmp_path)
    scores = pd.read_parquet(run / "scores.parquet")
    at = int(np.flatnonzero(scores["memorized"].to_numpy())[0])
    scores.loc[at, "memorized"] = False
    scores.to_parquet(run / "scores.parquet", index=False)
    RunDir(run).mark_finished()
    with pytest.raises(ClipmemError, match=f"memorized of sample {scores['sample_id'][at]} disagrees with its "
                                           "clipmem_q and the run's FDR 0.05"):
        ingest(db.engine, run)

    run = _copy(fake_runs, tmp_path, "null-on-trained-pair")
    null = pd.read_parquet(run / "null.parquet")
    samples = pd.read_parquet(run / "samples.parquet")
    shared = samples.loc[samples["split"] == "shared", "sample_id"].iloc[0]
    null.loc[0, "sample_id"] = shared
    null.to_parquet(run / "null.parquet", index=False)
    RunDir(run).mark_finished()
    with pytest.raises(ClipmemError, match=f"null.parquet: sample {shared} is in split 'shared'"):
        ingest(db.engine, run)

    run = _copy(fake_runs, tmp_path, "null-one-direction")
    null = pd.read_parquet(run / "null.parquet")
    null[null["null_for"] == "candidate"].to_parquet(run / "null.parquet", index=False)
    RunDir(run).mark_finished()
    with pytest.raises(ClipmemError, match="has no null for 'independent'"):
        ingest(db.engine, run)

    run = _copy(fake_runs, tmp_path, "p-out-of-range")
    scores = pd.read_parquet(run / "scores.parquet")
    scores.loc[3, "clipmem_p"] = 1.5
    scores.to_parquet(run / "scores.parquet", index=False)
    RunDir(run).mark_finished()
    with pytest.raises(ClipmemError, match=f"column clipmem_p is 1.5 for sample {scores['sample_id'][3]}, outside "
                                           "\\[0, 1\\]"):
        ingest(db.engine, run)

    run = _copy(fake_runs, tmp_path, "layer-interval")
    pd.DataFrame([{"tower": "image", "layer": 1, "truth": "all", "pairs": 3, "layer_mem": 0.5,
                   "delta_layer_mem": 0.5, "layer_mem_lo": 0.6, "layer_mem_hi": 0.7, "delta_layer_mem_lo": 0.4,
                   "delta_layer_mem_hi": 0.6}], columns=[*LAYER_COLUMNS, *LAYER_INTERVAL_COLUMNS]).to_parquet(
        run / "layers.parquet", index=False)
    RunDir(run).mark_finished()
    with pytest.raises(ClipmemError, match="interval \\[layer_mem_lo, layer_mem_hi\\] of tower image, layer 1, "
                                           "truth all does not contain layer_mem"):
        ingest(db.engine, run)

    row = {"tower": "text", "layer": 2, "truth": "all", "pairs": 3, "layer_mem": 0.5, "delta_layer_mem": 0.5,
           "layer_mem_lo": 0.4, "layer_mem_hi": 0.6, "delta_layer_mem_lo": 0.4, "delta_layer_mem_hi": 0.6}
    run = _copy(fake_runs, tmp_path, "unit-mem-range")
    pd.DataFrame([{**row, "unit_mem": 0.7, "unit_mem_f": 1.4, "unit_mem_g": 0.0}]).to_parquet(
        run / "layers.parquet", index=False)
    RunDir(run).mark_finished()
    with pytest.raises(ClipmemError, match="unit_mem_f of tower text, layer 2, truth all is 1.4, outside UnitMem's "
                                           "range \\[0, 1\\]"):
        ingest(db.engine, run)

    run = _copy(fake_runs, tmp_path, "unit-mem-partial")
    pd.DataFrame([{**row, "unit_mem": 0.7}]).to_parquet(run / "layers.parquet", index=False)
    RunDir(run).mark_finished()
    with pytest.raises(ClipmemError, match="has UnitMem column\\(s\\) unit_mem but lacks unit_mem_f, unit_mem_g"):
        ingest(db.engine, run)



Z_975 = 1.959963984540054  # the standard normal's 97.5% quantile, from tables


def _normal(values) -> dict:
    """mean +- z * sd / sqrt(n), sd with ddof=1, by hand."""
    values = np.asarray(values, dtype=float)
    half = Z_975 * values.std(ddof=1) / np.sqrt(len(values))
    return {"estimate": pytest.approx(values.mean()), "lo": pytest.approx(values.mean() - half),
            "hi": pytest.approx(values.mean() + half)}


def test_runs_above_large_n_get_the_normal_interval_and_verdicts(db, client, fake_runs, tmp_path, monkeypatch):
    """Every run size gets intervals and verdicts: groups above significance.LARGE_N pairs the normal interval, the
    others the bootstrap (here LARGE_N is lowered to 100, below the sig run's 220 pairs, rather than ingesting
    20,000), in the run detail and the encoders summary alike."""
    import clipmem.scoring.significance

    monkeypatch.setattr(clipmem.scoring.significance, "LARGE_N", 100)
    run = _copy(fake_runs, tmp_path, "sig-large")
    ingest(db.engine, run)
    try:
        scores = pd.read_parquet(run / "scores.parquet")
        sizes = scores["truth"].value_counts()
        large, small = sizes[sizes > 100].index.tolist(), sizes[(sizes > 1) & (sizes <= 100)].index.tolist()
        assert len(scores) > 100 and small, "the fixture should have tags on both sides of the lowered bound"
        summary = client.get("/runs/sig-large").json()["score_summary"]
        for name in ("clipmem", "clipmem_raw"):
            assert summary["intervals"][name] == _normal(scores[name])
        by_truth = {row["truth"]: row for row in summary["by_truth"]}
        for tag in large:
            assert by_truth[tag]["intervals"]["clipmem_raw"] == _normal(scores.loc[scores["truth"] == tag,
                                                                                   "clipmem_raw"])
        for tag in small:
            values = scores.loc[scores["truth"] == tag, "clipmem_raw"].to_numpy()
            direct = bootstrap_mean(values, seed=0)
            assert values.std() > 0 and direct.to_json() != _normal(values)  # the bootstrap, not the formula
            assert by_truth[tag]["intervals"]["clipmem_raw"] == pytest.approx(direct.to_json())
        encoders = client.get("/runs/sig-large/encoders").json()
        overall = next(row for row in encoders["by_truth"] if row["truth"] == "all")
        text, image = scores["mem_text_raw"].to_numpy(), scores["mem_image_raw"].to_numpy()
        assert overall["intervals"]["mem_text_raw"] == _normal(text)
        assert overall["intervals"]["mem_image_raw"] == _normal(image)
        difference = _normal(text - image)
        assert overall["text_minus_image"] == difference
        lo, hi = difference["lo"].expected, difference["hi"].expected
        assert overall["text_exceeds_image"] is bool(lo > 0) and overall["image_exceeds_text"] is bool(hi < 0)
        expected = verdict("text side", "image side", Interval(float((text - image).mean()), lo, hi))
        assert overall["verdict"] == expected
        assert "interval_note" not in encoders and "interval_note" not in summary
    finally:
        client.delete("/runs/sig-large")
