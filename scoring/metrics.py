"""Detection metrics: how well a score finds the faulty pairs. The one implementation that `clipmem report`,
ingest (and so the API and the dashboard) and the experiment report share.

Torch-free (numpy and scipy), so the backend computes them at ingest. Each score is ranked once and the
ranking shared by every positive set it is evaluated against, which keeps the ingest of a million-pair
run from sorting each score again per set. The definitions are scikit-learn's (roc_auc_score with average
ranks for ties, average_precision_score over distinct thresholds); tests/scoring/test_metrics.py checks
them against scikit-learn and against hand-computed cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Ranking:
    """One score's ordering, shared by every positive set it is evaluated against."""

    values: np.ndarray
    order: np.ndarray   # highest first, ties in row order
    ranks: np.ndarray   # average ranks, lowest value = 1

    @classmethod
    def of(cls, values) -> "Ranking":
        from scipy.stats import rankdata

        values = np.asarray(values, dtype=np.float64)
        return cls(values=values, order=np.argsort(-values, kind="stable"), ranks=rankdata(values))


def auroc(positive: np.ndarray, ranking: Ranking) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic with average ranks for ties, over n_pos * n_neg."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranking.ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(positive: np.ndarray, ranking: Ranking) -> float:
    """Sum over distinct thresholds, highest first, of the recall gained times the precision there."""
    ranked, hits = ranking.values[ranking.order], positive[ranking.order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_pos = np.cumsum(hits)[last_of_tie]
    precision = true_pos / (last_of_tie + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_at_k(positive: np.ndarray, ranking: Ranking, k: int) -> float:
    """Fraction of positives among the k highest scores (ties broken by row order)."""
    return float(positive[ranking.order[:k]].mean())


def detection(columns: dict[str, np.ndarray], positives: dict[str, np.ndarray]) -> dict[str, list[dict]]:
    """AUROC, average precision and precision@k (k = number of positives) of each score column (higher = more
    suspicious) for each positive set (a boolean mask over the same rows). A set without both positives and
    negatives gets an empty list."""
    out: dict[str, list[dict]] = {name: [] for name in positives}
    usable = {name: np.asarray(p, dtype=bool) for name, p in positives.items() if 0 < int(np.sum(p)) < len(p)}
    for score, values in columns.items() if usable else ():
        ranking = Ranking.of(values)
        for name, positive in usable.items():
            k = int(positive.sum())
            out[name].append({"score": score, "auroc": auroc(positive, ranking),
                              "average_precision": average_precision(positive, ranking),
                              "precision_at_k": precision_at_k(positive, ranking, k), "k": k,
                              "pairs": int(len(positive))})
    return out


def single_auroc(positive, values) -> float | None:
    """AUROC of one score for one positive set; None when the set lacks positives or negatives."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return auroc(positive, Ranking.of(values))
