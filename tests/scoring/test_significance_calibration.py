"""Calibration: pairs that no model trained on get uniform p-values (bench/calibration.py's figures, tiny run).

Half of the tiny run's 60 S_E pairs, drawn afresh for each of 3 seeds, are tested as pseudo-candidates against the
other half, in both directions of the published scheme, exactly as scored pairs are tested against the null.
Every pseudo-candidate is a true null, so their p-values must look uniform and Benjamini-Hochberg at FDR 0.05 must
flag almost none: the chance of flagging any in one seed is at most 0.05, so the pooled flagged fraction is held to
at most the FDR itself. Found on the fixture run (seed 0): KS p 0.40 (CLIPMem) and 0.09 (contrastive), 0 and 1
of 180 flagged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from calibration import calibration  # noqa: E402

FDR = 0.05


def test_pseudo_candidates_get_uniform_p_values(tiny_run):
    run, _ = tiny_run
    null = pd.read_parquet(run.null)
    result = calibration({"tiny": null}, seeds=3, fdr=FDR)
    for score, figures in result["scores"].items():
        pooled = figures["pooled"]
        assert pooled["p_values"] == 3 * 2 * 30, score
        assert pooled["ks_p"] > 0.01, (score, pooled)
        assert pooled["flagged_fraction"] <= FDR, (score, pooled)
        assert pooled["mean_p"] == pytest.approx(0.5, abs=0.05), score


def test_calibration_detects_a_null_of_the_wrong_direction(tiny_run):
    """The check can fail: testing each direction's pseudo-candidates against the other direction's null (the
    mistake of ignoring that f aligns unseen pairs differently from g) gives p-values far from uniform."""
    run, _ = tiny_run
    null = pd.read_parquet(run.null)
    swapped = null.assign(null_for=null["null_for"].map({"candidate": "independent", "independent": "candidate"}))
    ids = np.sort(null["sample_id"].unique())
    pseudo = set(np.random.default_rng(0).permutation(ids)[:30])
    is_pseudo = null["sample_id"].isin(pseudo)
    mixed = pd.concat([null[is_pseudo], swapped[~is_pseudo]], ignore_index=True)
    result = calibration({"wrong": mixed}, seeds=1, fdr=FDR)
    assert result["scores"]["clipmem_raw"]["pooled"]["ks_p"] < 0.01
