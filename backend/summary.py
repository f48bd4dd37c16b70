"""Per-truth-tag means and detection quality of each score, computed once at ingest.

Scores and truth tags never change after ingest, so these are stored on the run and
served as they are. "Faulty" is every truth tag but clean; k in precision@k is the
number of positives (the same definitions as `clipmem report`, which tests/backend/
test_real_run.py checks figure by figure). The metrics are computed here rather than with
scoring/report.py's scikit-learn calls because each score is ranked once and shared by both
positive sets, which keeps ingest of a million-pair run from sorting every score twice more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from backend.score_columns import DETECTOR_SCORES


def summarize(scores: pd.DataFrame, score_names: list[str]) -> dict:
    grouped = scores.groupby("truth", sort=True)
    by_truth = [
        {"truth": str(tag), "pairs": int(len(rows)), "means": {name: float(rows[name].mean()) for name in score_names}}
        for tag, rows in grouped
    ]
    by_truth.sort(key=lambda row: -row["means"]["clipmem"])
    detectors = [name for name in score_names if name in DETECTOR_SCORES]
    truth = scores["truth"].to_numpy()
    return {
        "pairs": int(len(scores)),
        "means": {name: float(scores[name].mean()) for name in score_names},
        "by_truth": by_truth,
        "detection": detection(scores, detectors, {"faulty": truth != "clean", "swapped": truth == "swapped"}),
    }


@dataclass
class Ranking:
    """One score's ordering, shared by every positive set it is evaluated against."""

    values: np.ndarray
    order: np.ndarray   # highest first, ties in row order
    ranks: np.ndarray   # average ranks, lowest value = 1

    @classmethod
    def of(cls, values: np.ndarray) -> "Ranking":
        from scipy.stats import rankdata

        return cls(values=values, order=np.argsort(-values, kind="stable"), ranks=rankdata(values))


def detection(scores: pd.DataFrame, detectors: list[str], positives: dict[str, np.ndarray]) -> dict[str, list]:
    """AUROC, average precision and precision@k per score and positive set; a set without both positives and
    negatives gets an empty list."""
    out: dict[str, list] = {name: [] for name in positives}
    usable = {name: p for name, p in positives.items() if 0 < int(p.sum()) < len(p)}
    for score in detectors if usable else []:
        ranking = Ranking.of(scores[score].to_numpy(dtype=np.float64))
        for name, positive in usable.items():
            k = int(positive.sum())
            out[name].append({"score": score, "auroc": auroc(positive, ranking),
                              "average_precision": average_precision(positive, ranking),
                              "precision_at_k": float(positive[ranking.order[:k]].mean()), "k": k,
                              "pairs": int(len(positive))})
    return out


def auroc(positive: np.ndarray, ranking: Ranking) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties), as scikit-learn computes it."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranking.ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(positive: np.ndarray, ranking: Ranking) -> float:
    """Sum over distinct thresholds, highest first, of recall gained times precision (scikit-learn's definition)."""
    ranked, hits = ranking.values[ranking.order], positive[ranking.order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_pos = np.cumsum(hits)[last_of_tie]
    precision = true_pos / (last_of_tie + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
