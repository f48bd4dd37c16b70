"""Detection quality of each score against the recorded truth tags, and per-tag means."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from scoring.score import SCORE_COLUMNS


def detection_table(scores: pd.DataFrame, positive: set[str]) -> pd.DataFrame:
    """AUROC, average precision and precision@k (k = number of positives) per score column.

    Returns an empty frame when the run has no positives or no negatives.
    """
    y = scores["truth"].isin(positive).to_numpy()
    k = int(y.sum())
    if k == 0 or k == len(y):
        return pd.DataFrame(columns=["score", "auroc", "average_precision", "precision_at_k", "k"])
    rows = []
    for col in SCORE_COLUMNS:
        if col not in scores:
            continue
        s = scores[col].to_numpy()
        top = np.argsort(-s, kind="stable")[:k]
        rows.append({"score": col, "auroc": roc_auc_score(y, s), "average_precision": average_precision_score(y, s),
                     "precision_at_k": float(y[top].mean()), "k": k})
    return pd.DataFrame(rows)


def tag_means(scores: pd.DataFrame) -> pd.DataFrame:
    return (scores.groupby("truth")
            .agg(pairs=("clipmem", "size"), clipmem=("clipmem", "mean"), clipmem_raw=("clipmem_raw", "mean"),
                 clipmem_contrastive=("clipmem_contrastive", "mean"))
            .sort_values("clipmem", ascending=False))


def summarize(scores: pd.DataFrame) -> dict:
    """Everything `clipmem report` prints, as plain data."""
    faulty = set(scores["truth"].unique()) - {"clean"}
    return {
        "mean_clipmem": float(scores["clipmem"].mean()),
        "by_truth": tag_means(scores).reset_index().to_dict("records"),
        "detection_faulty": detection_table(scores, faulty).to_dict("records"),
        "detection_swapped": detection_table(scores, {"swapped"}).to_dict("records"),
    }
