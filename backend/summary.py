"""Per-truth-tag means and detection quality of each score, computed once at ingest.

Scores and truth tags never change after ingest, so these are stored on the run and
served as they are. "Faulty" is every truth tag but clean; k in precision@k is the
number of positives; the metrics are scoring.metrics', the module `clipmem report` uses too.
The intervals, verdicts and flagged counts are scoring.significance's, the same functions
`clipmem report` prints them with. A bootstrap costs resamples x pairs (about 1 s at 20,000
pairs on a loaded 2-core machine, 85 s at a million), so they are computed once here, and only
for runs of at most BOOTSTRAP_MAX_PAIRS scored pairs: beyond that they would multiply the
ingest time of a run (target 20,000 pairs/s) and are left null, with `interval_note` saying why.
"""

from __future__ import annotations

import pandas as pd

from clipmem.scoring.columns import DETECTOR_SCORES, MEMORIZED
from clipmem.scoring.metrics import detection
from clipmem.scoring.significance import flagged_by_truth, group_means, jsonable, tower_verdicts

# the means shown per truth tag that carry a bootstrap interval (the tower scores' are in "towers")
INTERVAL_SCORES = ("clipmem", "clipmem_raw")
BOOTSTRAP_MAX_PAIRS = 20_000


def bootstraps(pairs: int) -> bool:
    """Whether the run is small enough for its bootstrap intervals to be computed (see the module's note)."""
    return pairs <= BOOTSTRAP_MAX_PAIRS


def interval_note(pairs: int) -> str | None:
    """Why a run of `pairs` scored pairs has no bootstrap intervals; None when it has them."""
    return None if bootstraps(pairs) else (f"no bootstrap intervals: the run has more than {BOOTSTRAP_MAX_PAIRS:,} "
                                           "scored pairs, and a bootstrap over that many would multiply its ingest "
                                           "time")


def summarize(scores: pd.DataFrame, score_names: list[str], fdr: float | None = None) -> dict:
    """{pairs, means, intervals, by_truth, detection, towers, interval_note, significance}: `intervals` (and each
    by_truth row's) hold {score: {estimate, lo, hi}} for INTERVAL_SCORES; `towers` is significance.tower_verdicts
    (empty without tower scores); for runs too large to bootstrap, intervals and towers are None and
    `interval_note` says why; `significance` {fdr, flagged, by_truth} is present only when the run flags pairs."""
    grouped = scores.groupby("truth", sort=True)
    small = bootstraps(len(scores))
    intervals = ({row["truth"]: {name: row[name] for name in INTERVAL_SCORES if name in row}
                  for row in jsonable(group_means(scores, [n for n in INTERVAL_SCORES if n in score_names]))}
                 if small else {})
    by_truth = [
        {"truth": str(tag), "pairs": int(len(rows)), "means": {name: float(rows[name].mean()) for name in score_names},
         "intervals": intervals.get(str(tag))}
        for tag, rows in grouped
    ]
    by_truth.sort(key=lambda row: -row["means"]["clipmem"])
    detectors = [name for name in score_names if name in DETECTOR_SCORES]
    truth = scores["truth"].to_numpy()
    summary = {
        "pairs": int(len(scores)),
        "means": {name: float(scores[name].mean()) for name in score_names},
        "intervals": intervals.get("all"),
        "by_truth": by_truth,
        "detection": detection({name: scores[name].to_numpy() for name in detectors},
                               {"faulty": truth != "clean", "swapped": truth == "swapped"}),
        "towers": jsonable(tower_verdicts(scores)) if small else None,
        "interval_note": interval_note(len(scores)),
    }
    if MEMORIZED in scores.columns:
        counts = jsonable(flagged_by_truth(scores))
        summary["significance"] = {"fdr": fdr, "flagged": next(r["flagged"] for r in counts if r["truth"] == "all"),
                                   "by_truth": counts}
    return summary
