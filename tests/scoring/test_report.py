"""`clipmem report` on constructed run directories (no training): flagged counts per truth tag, means with their
bootstrap intervals, tower verdicts only where the interval of the difference excludes 0, and runs scored before
significance testing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from clipmem.cli import app
from clipmem.scoring.report import summarize
from clipmem.scoring.rundir import RunDir
from clipmem.scoring.significance import bootstrap_mean

runner = CliRunner()
UTILITY = {"f": {"i2t_r1": 0.5}, "g": {"i2t_r1": 0.4}}


def _scores(significance: bool = True, towers: bool = True) -> pd.DataFrame:
    """40 swapped pairs (30 flagged) and 60 clean ones (3 flagged). Towers: a swapped pair's text side is exactly
    0.004 above its image side; a clean pair's differs by +-0.001 alternately, a mean of exactly 0."""
    rng = np.random.default_rng(0)
    n_swapped, n_clean = 40, 60
    truth = ["swapped"] * n_swapped + ["clean"] * n_clean
    raw = np.concatenate([rng.normal(0.02, 0.01, n_swapped), rng.normal(0.0, 0.01, n_clean)])
    frame = pd.DataFrame({"sample_id": [f"p{i}" for i in range(100)], "split": "candidate", "truth": truth,
                          "clipmem": np.where(np.arange(100) < n_swapped, 0.75, 0.25), "clipmem_raw": raw,
                          "clipmem_contrastive": rng.uniform(size=100), "clipscore_g": rng.uniform(size=100)})
    if significance:
        frame["memorized"] = np.r_[np.arange(n_swapped) < 30, np.arange(n_clean) < 3]
    if towers:
        image = rng.normal(0.0, 0.01, 100)
        frame["mem_image_raw"] = image
        frame["mem_text_raw"] = image + np.r_[np.full(n_swapped, 0.004), np.tile([0.001, -0.001], n_clean // 2)]
    return frame


def _run(tmp_path, scores: pd.DataFrame, metrics: dict, layers: pd.DataFrame | None = None):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    scores.to_parquet(run.scores, index=False)
    if layers is not None:
        layers.to_parquet(run.layers, index=False)
    run.metrics.write_text(json.dumps({**UTILITY, **metrics}))
    run.mark_finished()
    return run.path


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables wide enough that no cell wraps (the shared console is sized once, at import)."""
    from clipmem.scoring.console import console

    monkeypatch.setattr(console, "_width", 250)


def _report(*args):
    result = runner.invoke(app, ["report", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_report_prints_flagged_counts_means_with_intervals_and_verdicts(tmp_path):
    scores = _scores()
    out = _run(tmp_path, scores, {"significance": {"fdr": 0.05}})
    text = _report(out)
    assert "Pairs flagged memorized (q <= FDR 0.05)" in text
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in text.splitlines() if line.count("│") == 5}
    assert lines["swapped"] == ["40", "30", "0.750"] and lines["clean"] == ["60", "3", "0.050"]
    assert lines["all"] == ["100", "33", "0.330"]
    # every swapped pair has CLIPMem 0.75: its mean's interval is the point itself
    assert "0.750 [0.750, 0.750]" in text
    assert "swapped: text side > image side (difference 0.0040, 95% CI 0.0040 to 0.0040)" in text
    assert "clean: text side and image side are not distinguishable at this run's size (difference 0.00000, 95% CI -" in text


def test_report_json_carries_the_flags_intervals_and_verdicts(tmp_path):
    scores = _scores()
    summary = json.loads(_report(_run(tmp_path, scores, {"significance": {"fdr": 0.05}}), "--json"))
    assert summary["fdr"] == 0.05
    assert {r["truth"]: (r["pairs"], r["flagged"]) for r in summary["flagged_by_truth"]} == \
        {"swapped": (40, 30), "clean": (60, 3), "all": (100, 33)}
    by_truth = {r["truth"]: r for r in summary["by_truth"]}
    swapped_raw = scores.loc[scores["truth"] == "swapped", "clipmem_raw"]
    assert by_truth["swapped"]["clipmem_raw"] == pytest.approx(swapped_raw.mean())
    assert by_truth["swapped"]["intervals"]["clipmem_raw"] == pytest.approx(bootstrap_mean(swapped_raw).to_json())
    towers = {r["truth"]: r for r in summary["towers_by_truth"]}
    assert towers["swapped"]["text_exceeds_image"] is True
    assert towers["clean"]["text_exceeds_image"] is False  # 0.001 higher on half the pairs is no finding
    assert towers["swapped"]["verdict_difference"] == pytest.approx({"estimate": 0.004, "lo": 0.004, "hi": 0.004})
    # all pairs: 40 differences of 0.004 and 60 of +-0.001 average 0.0016, about eight standard errors above 0
    assert towers["all"]["text_exceeds_image"] is True
    assert "swap_verdict" not in towers["all"]  # the run has no swap columns


def test_text_exceeds_image_follows_the_interval_not_the_point_means():
    # a point mean of text above image (by 0.00002) that the interval cannot tell from 0 is not reported as one
    scores = _scores()
    clean = scores["truth"] == "clean"
    scores.loc[clean, "mem_text_raw"] += 0.00002
    rows = {r["truth"]: r for r in summarize(scores)["towers_by_truth"]}
    assert rows["clean"]["mem_text_raw"] > rows["clean"]["mem_image_raw"]
    assert not rows["clean"]["text_exceeds_image"]
    assert "not distinguishable" in rows["clean"]["verdict"]


def test_a_run_scored_before_significance_still_reports(tmp_path):
    """No memorized column, no significance in metrics, no tower scores, layers without interval columns."""
    layers = pd.DataFrame({"tower": ["image", "text"], "layer": [1, 1], "truth": ["all", "all"], "pairs": [100, 100],
                           "layer_mem": [0.0012, 0.0034], "delta_layer_mem": [0.0012, 0.0034]})
    out = _run(tmp_path, _scores(significance=False, towers=False), {}, layers)
    text = _report(out)
    assert "No pairs flagged: the run was scored before significance testing" in text
    assert "Which encoder memorizes" not in text
    assert "0.0012" in text and "0.0034" in text
    summary = json.loads(_report(out, "--json"))
    assert summary["flagged_by_truth"] == [] and summary["fdr"] is None and summary["towers_by_truth"] == []
    assert "layer_mem_lo" not in summary["layers"][0]
    assert summary["unit_mem"] == []  # scored before UnitMem


def test_report_json_carries_unit_mem_per_tower_and_block(tmp_path):
    """UnitMem from the truth "all" rows of layers.parquet, in tower and block order; null on a truth-tag row."""
    layers = pd.DataFrame({"tower": ["text", "image", "image", "image"], "layer": [1, 2, 1, 1],
                           "truth": ["all", "all", "all", "clean"], "pairs": [100, 100, 100, 60],
                           "layer_mem": [0.003, 0.002, 0.001, 0.001], "delta_layer_mem": [0.003, 0.001, 0.001, 0.001],
                           "unit_mem": [0.45, 0.62, 0.51, np.nan], "unit_mem_f": [0.4, 0.6, 0.5, np.nan],
                           "unit_mem_g": [0.5, 0.64, 0.52, np.nan]})
    summary = json.loads(_report(_run(tmp_path, _scores(), {"significance": {"fdr": 0.05}}, layers), "--json"))
    assert summary["unit_mem"] == [
        {"tower": "image", "layer": 1, "unit_mem": 0.51, "unit_mem_f": 0.5, "unit_mem_g": 0.52},
        {"tower": "image", "layer": 2, "unit_mem": 0.62, "unit_mem_f": 0.6, "unit_mem_g": 0.64},
        {"tower": "text", "layer": 1, "unit_mem": 0.45, "unit_mem_f": 0.4, "unit_mem_g": 0.5}]
    clean = next(row for row in summary["layers"] if row["truth"] == "clean")
    assert clean["unit_mem"] is None
    (tmp_path / "printed").mkdir()
    printed = _report(_run(tmp_path / "printed", _scores(), {"significance": {"fdr": 0.05}}, layers))
    assert "UnitMem per layer" in printed and "0.6200" in printed and "0.5200" in printed


def test_a_run_without_a_null_says_why(tmp_path):
    missing = "the run has no S_E pairs (extra = 0), so no null to test the scored pairs against"
    out = _run(tmp_path, _scores(significance=False), {"significance": {"fdr": 0.05, "null_pairs": 0,
                                                                       "missing": missing}})
    assert f"No pairs flagged: {missing}" in _report(out)


def test_layer_intervals_are_printed_when_the_run_has_them(tmp_path):
    layers = pd.DataFrame({"tower": ["image"], "layer": [1], "truth": ["all"], "pairs": [100], "layer_mem": [0.0012],
                           "delta_layer_mem": [0.0012], "layer_mem_lo": [0.0008], "layer_mem_hi": [0.0016],
                           "delta_layer_mem_lo": [0.0007], "delta_layer_mem_hi": [0.0017]})
    text = _report(_run(tmp_path, _scores(), {"significance": {"fdr": 0.05}}, layers))
    assert "0.0012 [0.0008, 0.0016]" in text and "0.0012 [0.0007, 0.0017]" in text
