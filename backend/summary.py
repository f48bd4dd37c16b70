"""Per-truth-tag means and detection quality of each score, computed once at ingest.

Scores and truth tags never change after ingest, so these are stored on the run and
served as they are. "Faulty" is every truth tag but clean; k in precision@k is the
number of positives; the metrics are scoring.metrics', the module `clipmem report` uses too.
The intervals, verdicts and flagged counts are scoring.significance's, the same functions
`clipmem report` prints them with, for runs of every size: a bootstrap costs resamples x pairs
(about 1 s at 20,000 pairs on a loaded 2-core machine), and above significance.LARGE_N pairs the
interval is the normal one instead (0.1 s at a million), so they fit the ingest target. They are
computed once here rather than per request all the same.
"""

from __future__ import annotations

import pandas as pd

from clipmem.scoring.columns import DETECTOR_SCORES, MEMORIZED, REASON, REASONS
from clipmem.scoring.metrics import detection
from clipmem.scoring.significance import flagged_by_truth, group_means, jsonable, tower_verdicts

# the means shown per truth tag that carry a bootstrap interval (the tower scores' are in "towers")
INTERVAL_SCORES = ("clipmem", "clipmem_raw")


def summarize(scores: pd.DataFrame, score_names: list[str], fdr: float | None = None) -> dict:
    """{pairs, means, intervals, by_truth, detection, towers, significance, reasons}: `intervals` (and each by_truth
    row's) hold {score: {estimate, lo, hi}} for INTERVAL_SCORES; `towers` is significance.tower_verdicts (empty
    without tower scores); `significance` {fdr, flagged, by_truth} is present only when the run flags pairs;
    `reasons` {reason: pairs} (every one of REASONS) only when its scores.parquet has a `reason` per pair."""
    grouped = scores.groupby("truth", sort=True)
    intervals = {row["truth"]: {name: row[name] for name in INTERVAL_SCORES if name in row}
                 for row in jsonable(group_means(scores, [n for n in INTERVAL_SCORES if n in score_names]))}
    by_truth = [
        {"truth": str(tag), "pairs": int(len(rows)), "means": {name: float(rows[name].mean()) for name in score_names},
         "intervals": intervals[str(tag)]}
        for tag, rows in grouped
    ]
    by_truth.sort(key=lambda row: -row["means"]["clipmem"])
    detectors = [name for name in score_names if name in DETECTOR_SCORES]
    truth = scores["truth"].to_numpy()
    summary = {
        "pairs": int(len(scores)),
        "means": {name: float(scores[name].mean()) for name in score_names},
        "intervals": intervals["all"],
        "by_truth": by_truth,
        "detection": detection({name: scores[name].to_numpy() for name in detectors},
                               {"faulty": truth != "clean", "swapped": truth == "swapped"}),
        "towers": jsonable(tower_verdicts(scores)),
    }
    if MEMORIZED in scores.columns:
        counts = jsonable(flagged_by_truth(scores))
        summary["significance"] = {"fdr": fdr, "flagged": next(r["flagged"] for r in counts if r["truth"] == "all"),
                                   "by_truth": counts}
    if REASON in scores.columns:
        counts = scores[REASON].value_counts()
        summary["reasons"] = {reason: int(counts.get(reason, 0)) for reason in REASONS}
    return summary
