"""Per-truth-tag means and detection quality of each score, computed once at ingest.

Scores and truth tags never change after ingest, so these are stored on the run and
served as they are. "Faulty" is every truth tag but clean; k in precision@k is the
number of positives; the metrics are scoring.metrics', the module `clipmem report` uses too.
"""

from __future__ import annotations

import pandas as pd

from clipmem.scoring.columns import DETECTOR_SCORES
from clipmem.scoring.metrics import detection


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
        "detection": detection({name: scores[name].to_numpy() for name in detectors},
                               {"faulty": truth != "clean", "swapped": truth == "swapped"}),
    }
