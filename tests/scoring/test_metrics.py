"""clipmem.scoring.metrics against hand-computed cases and against scikit-learn, a second implementation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from clipmem.scoring.metrics import Ranking, auroc, average_precision, detection, precision_at_k, single_auroc


def test_hand_computed_case():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): of the 4 (pos, neg) pairs, 3 are ordered right -> AUROC 3/4.
    # AP: thresholds 0.9 (P=1, R=.5), 0.8 (P=.5, R=.5), 0.7 (P=2/3, R=1) -> .5*1 + 0 + .5*2/3 = 5/6.
    positive = np.array([True, False, True, False])
    ranking = Ranking.of([0.9, 0.8, 0.7, 0.1])
    assert auroc(positive, ranking) == pytest.approx(0.75)
    assert average_precision(positive, ranking) == pytest.approx(5 / 6)
    assert precision_at_k(positive, ranking, 2) == pytest.approx(0.5)


def test_ties_count_half():
    # one positive and one negative with the same score: a coin flip, AUROC 1/2; AP = 1/2 (one threshold, P=1/2)
    positive = np.array([True, False])
    ranking = Ranking.of([0.3, 0.3])
    assert auroc(positive, ranking) == pytest.approx(0.5)
    assert average_precision(positive, ranking) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 12, size=300).astype(float)  # many ties
    positive = rng.random(300) < 0.1 + 0.05 * values / 12
    ranking = Ranking.of(values)
    assert auroc(positive, ranking) == pytest.approx(roc_auc_score(positive, values), abs=1e-12)
    assert average_precision(positive, ranking) == pytest.approx(average_precision_score(positive, values), abs=1e-12)


def test_detection_rows_and_degenerate_sets():
    values = np.array([0.9, 0.1, 0.8, 0.2])
    out = detection({"s": values, "minus": -values},
                    {"pos": np.array([True, False, True, False]), "none": np.zeros(4, bool)})
    assert out["none"] == []
    by_score = {row["score"]: row for row in out["pos"]}
    assert by_score["s"]["auroc"] == 1.0 and by_score["minus"]["auroc"] == 0.0
    assert by_score["s"]["precision_at_k"] == 1.0 and by_score["s"]["k"] == 2
    assert single_auroc(np.ones(3, bool), [1, 2, 3]) is None
