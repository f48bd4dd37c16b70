"""Detection quality of each score against the recorded truth tags, per-tag means with their bootstrap intervals,
the pairs flagged memorized per tag, which tower memorizes (stated only when the interval says so), and the
per-layer tables (LayerMem, UnitMem)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipmem.scoring.columns import DETECTOR_SCORES, LAYER_UNIT_COLUMNS, MISCAPTION_TRUTH, REASON, REASONS
from clipmem.scoring.metrics import detection, single_auroc
from clipmem.scoring.significance import flagged_by_truth, group_means, tower_verdicts


def detection_table(scores: pd.DataFrame, positive: set[str], columns=DETECTOR_SCORES) -> pd.DataFrame:
    """AUROC, average precision and precision@k (k = number of positives) per score of `columns` (default: every
    detector score) the run has.

    Returns an empty frame when the run has no positives or no negatives.
    """
    y = scores["truth"].isin(positive).to_numpy()
    columns = {col: scores[col].to_numpy() for col in columns if col in scores}
    rows = detection(columns, {"positive": y})["positive"]
    return pd.DataFrame(rows or None, columns=["score", "auroc", "average_precision", "precision_at_k", "k"])


TAG_COLUMNS = ("clipmem", "clipmem_raw", "clipmem_contrastive")


def tag_means(scores: pd.DataFrame) -> pd.DataFrame:
    return (scores.groupby("truth")
            .agg(pairs=("clipmem", "size"), clipmem=("clipmem", "mean"), clipmem_raw=("clipmem_raw", "mean"),
                 clipmem_contrastive=("clipmem_contrastive", "mean"))
            .sort_values("clipmem", ascending=False))


def tag_rows(scores: pd.DataFrame) -> list[dict]:
    """tag_means as records (most memorized tag first), each with "intervals": {column: {"estimate", "lo", "hi"}},
    the bootstrap 95% interval of each mean over the tag's pairs."""
    intervals = {row["truth"]: row for row in group_means(scores, TAG_COLUMNS)}
    return [{**row, "intervals": {c: intervals[row["truth"]][c].to_json() for c in TAG_COLUMNS}}
            for row in tag_means(scores).reset_index().to_dict("records")]


TOWER_COLUMNS = ("mem_image_raw", "mem_text_raw", "mem_swap_image", "mem_swap_text")


def tower_means(scores: pd.DataFrame, verdicts: list[dict] | None = None) -> pd.DataFrame:
    """Per truth tag and "all": mean image-side and text-side memorization (raw) and swap drops; text_exceeds_image
    only when the bootstrap 95% interval of mean(text - image) lies above 0 (verdicts: significance.tower_verdicts
    of scores, computed when not given)."""
    cols = [c for c in TOWER_COLUMNS if c in scores]
    if not cols:
        return pd.DataFrame()
    out = scores.groupby("truth")[cols].mean()
    out.loc["all"] = scores[cols].mean()
    verdicts = {row["truth"]: row for row in (tower_verdicts(scores) if verdicts is None else verdicts)}
    out["text_exceeds_image"] = [bool(verdicts[t]["sides"]["a_exceeds_b"]) if "sides" in verdicts.get(t, {})
                                 else False for t in out.index]
    return out


def tower_rows(scores: pd.DataFrame) -> list[dict]:
    """tower_means as records, each with "intervals" {column: {"estimate", "lo", "hi"}} of the tower means, and
    "verdict" (text side against image side) and "swap_verdict" (text-swap drop against image-swap drop) when the
    run has those columns: a direction only where the interval of the paired difference excludes 0."""
    verdict_rows = tower_verdicts(scores)
    means = tower_means(scores, verdict_rows)
    if means.empty:
        return []
    intervals = {row["truth"]: row for row in group_means(scores, TOWER_COLUMNS)}
    verdicts = {row["truth"]: row for row in verdict_rows}
    rows = []
    for row in means.reset_index().to_dict("records"):
        tag = row["truth"]
        row["intervals"] = {c: intervals[tag][c].to_json() for c in TOWER_COLUMNS if c in intervals[tag]}
        for key, name in (("sides", "verdict"), ("swaps", "swap_verdict")):
            if key in verdicts.get(tag, {}):
                row[name] = verdicts[tag][key]["verdict"]
                row[f"{name}_difference"] = verdicts[tag][key]["difference"].to_json()
        rows.append(row)
    return rows


def unit_mem_rows(layers: pd.DataFrame) -> list[dict]:
    """UnitMem per tower and block (layers.parquet's truth "all" rows): unit_mem, unit_mem_f and unit_mem_g; empty
    for runs without it (scored before UnitMem, k-fold and replica runs)."""
    if not set(LAYER_UNIT_COLUMNS) <= set(layers.columns):
        return []
    rows = layers[(layers["truth"] == "all") & layers["unit_mem"].notna()].sort_values(["tower", "layer"])
    return rows[["tower", "layer", *LAYER_UNIT_COLUMNS]].to_dict("records")


def memorization_epochs(scores: pd.DataFrame) -> list[dict]:
    """Per truth tag (runs trained with --track-epochs, docs/trajectory.md): its pairs, how many ever exceed the
    null's threshold (mem_epoch not null) and the median memorization epoch of those; empty for runs without it."""
    if "mem_epoch" not in scores:
        return []
    rows = []
    for truth, group in scores.groupby("truth"):
        crossed = group["mem_epoch"].dropna()
        rows.append({"truth": truth, "pairs": len(group), "memorized": len(crossed),
                     "fraction": len(crossed) / len(group),
                     "median_mem_epoch": float(crossed.median()) if len(crossed) else None})
    return rows


# why a pair is memorized (docs/why.md): mis-captions are told from the rest among the pairs most memorized by
# CLIPMem, this fraction of the run's scored pairs, by `miscaption` and by the scores it is measured beside
MEMORIZED_TOP = 0.2
MISCAPTION_RIVALS = ("miscaption", "clipmem", "clipscore_g", "clipscore_f")


def most_memorized(scores: pd.DataFrame, fraction: float = MEMORIZED_TOP) -> pd.DataFrame:
    """The round(fraction * pairs) pairs (at least one) of highest CLIPMem, ties in row order."""
    count = max(1, int(round(fraction * len(scores))))
    return scores.iloc[np.argsort(-scores["clipmem"].to_numpy(), kind="stable")[:count]]


def has_truth_tags(scores: pd.DataFrame) -> bool:
    """Whether the data records faults (the built-in set, --inject): some truth tag other than clean."""
    return bool((scores["truth"] != "clean").any())


def reason_rows(scores: pd.DataFrame, fraction: float = MEMORIZED_TOP) -> dict:
    """Counts of `reason` over the scored pairs and over the most memorized ones ("counts"), and, when the data has
    truth tags, of reason x truth ("by_truth"); empty for runs scored before reasons."""
    if REASON not in scores or scores[REASON].isna().all():
        return {}
    top = most_memorized(scores, fraction)[REASON]
    counts = [{"reason": r, "pairs": int((scores[REASON] == r).sum()), "memorized_top": int((top == r).sum())}
              for r in REASONS]
    out = {"top_fraction": fraction, "counts": counts}
    if has_truth_tags(scores):
        table = pd.crosstab(scores[REASON], scores["truth"])
        out["by_truth"] = [{"reason": r, "truth": t, "pairs": int(table.loc[r, t])}
                           for r in REASONS if r in table.index for t in table.columns]
    return out


def miscaption_detection(scores: pd.DataFrame, fraction: float = MEMORIZED_TOP) -> list[dict]:
    """Among the most memorized pairs: AUROC, average precision and precision@k of `miscaption`, CLIPMem,
    clipscore_g and clipscore_f for mis-captions (columns.MISCAPTION_TRUTH) against the rest; empty without truth
    tags, without `miscaption`, or when those pairs are all mis-captions or none is."""
    if "miscaption" not in scores or not has_truth_tags(scores):
        return []
    top = most_memorized(scores, fraction)
    rows = detection_table(top, set(MISCAPTION_TRUTH), MISCAPTION_RIVALS).to_dict("records")
    return [{**row, "pairs": len(top)} for row in rows]


def summarize(scores: pd.DataFrame, layers: pd.DataFrame | None = None) -> dict:
    """Everything `clipmem report` prints, as plain data. Runs scored before significance testing (no `memorized`
    column) get an empty "flagged_by_truth"."""
    faulty = set(scores["truth"].unique()) - {"clean"}
    out = {
        "mean_clipmem": float(scores["clipmem"].mean()),
        "by_truth": tag_rows(scores),
        "flagged_by_truth": flagged_by_truth(scores),
        "detection_faulty": detection_table(scores, faulty).to_dict("records"),
        "detection_swapped": detection_table(scores, {"swapped"}).to_dict("records"),
        "towers_by_truth": tower_rows(scores),
        "reasons": reason_rows(scores),
        "miscaption_detection": miscaption_detection(scores),
        "memorization_epoch_by_truth": memorization_epochs(scores),
    }
    if layers is not None and len(layers):
        out["layers"] = layers[layers["truth"].isin(["all", "clean", "swapped"])].to_dict("records")
        out["unit_mem"] = unit_mem_rows(layers)
    if "fold" in scores:
        # k-fold runs: a fold's mean raw score carries the quality gap between its held-out model and the others
        out["by_fold"] = (scores.groupby("fold").agg(pairs=("clipmem_raw", "size"),
                                                     clipmem_raw=("clipmem_raw", "mean"),
                                                     align_f=("align_f", "mean"), align_g=("align_g", "mean"))
                          .reset_index().to_dict("records"))
    return out


def _auroc(scores: pd.DataFrame, column: str, positive: set[str]) -> float | None:
    if column not in scores:
        return None
    return single_auroc(scores["truth"].isin(positive).to_numpy(), scores[column].to_numpy())


def compare_runs(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Agreement of two runs' scores (e.g. a published-scheme and a k-fold run of the same data).

    Spearman rank correlation of clipmem (and of the contrastive variant) over the pairs both runs
    score — min-max scaling does not change ranks, so it is the correlation of the raw scores too —
    and each run's swapped-pair AUROC per score, on its own scored pairs and on the common pairs.
    """
    from scipy.stats import spearmanr

    common = a[["sample_id"]].merge(b[["sample_id"]], on="sample_id")["sample_id"]
    ca = a.set_index("sample_id").loc[common].reset_index()
    cb = b.set_index("sample_id").loc[common].reset_index()

    def rho(column: str) -> float | None:
        if len(common) < 3 or column not in ca or column not in cb:
            return None
        value = spearmanr(ca[column].to_numpy(), cb[column].to_numpy()).statistic
        return None if np.isnan(value) else float(value)

    rows = [{"score": col, "a_own": _auroc(a, col, {"swapped"}), "b_own": _auroc(b, col, {"swapped"}),
             "a_common": _auroc(ca, col, {"swapped"}), "b_common": _auroc(cb, col, {"swapped"})}
            for col in DETECTOR_SCORES if col in a or col in b]
    return {"pairs_a": len(a), "pairs_b": len(b), "common_pairs": int(len(common)),
            "common_swapped": int(ca["truth"].eq("swapped").sum()) if len(common) else 0,
            "spearman_clipmem": rho("clipmem"), "spearman_clipmem_contrastive": rho("clipmem_contrastive"),
            "swapped_auroc": rows}
