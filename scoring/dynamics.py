"""The per-pair summaries of a trajectory (issue 19, docs/trajectory.md): the null's threshold per epoch, mem_epoch,
mem_auc, mem_variability, and the per-truth-tag curves. Plain numpy and pandas on trajectory.parquet's rows, apart
from scoring.trajectory (which trains and scores with torch), so the backend and the report compute them the same
way."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipmem.scoring.columns import DYNAMICS_NAMES, null_key

# the null quantile a pair's raw score must exceed at an epoch to count as memorized by then
NULL_QUANTILE = 0.95
THRESHOLD = (f"the {NULL_QUANTILE:.0%} quantile (numpy's linear interpolation) of the null's clipmem_raw at the same "
             "epoch, among the null rows of the pair's direction (null_for)")
AUC = ("trapezoid over the tracked epochs as fractions of the run's epochs, starting from raw 0 at epoch 0 (f and g "
       "start from the same weights); a pair memorized from the start to the end at raw r has area r")


def thresholds(trajectory: pd.DataFrame) -> dict[int, dict[str, float]]:
    """{epoch: {null key: NULL_QUANTILE quantile of the null rows' clipmem_raw}}; empty without null rows."""
    null = trajectory[trajectory["null_for"].notna()]
    out: dict[int, dict[str, float]] = {}
    for (epoch, key), values in null.groupby(["epoch", "null_for"])["clipmem_raw"]:
        out.setdefault(int(epoch), {})[str(key)] = float(np.quantile(values.to_numpy(), NULL_QUANTILE))
    return out


def pair_dynamics(scores: pd.DataFrame, trajectory: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """mem_epoch, mem_auc and mem_variability (columns.DYNAMICS_COLUMNS) of each pair of `scores` (in its order)
    from its trajectory over a training of `epochs` epochs. mem_epoch is NaN where the pair never exceeds the
    threshold, and everywhere when the trajectory holds no null rows (a run without S_E pairs)."""
    rows = trajectory[trajectory["null_for"].isna()]
    raw = rows.pivot(index="sample_id", columns="epoch", values="clipmem_raw").sort_index(axis=1)
    raw = raw.reindex(scores["sample_id"])
    tracked = raw.columns.to_numpy()
    values = raw.to_numpy(dtype=float)
    x = np.concatenate([[0.0], tracked / epochs])
    y = np.concatenate([np.zeros((len(values), 1)), values], axis=1)
    auc = ((y[:, 1:] + y[:, :-1]) / 2 * np.diff(x)).sum(1)
    limits = thresholds(trajectory)
    mem_epoch = np.full(len(values), np.nan)
    if limits:
        keys = [null_key(split) for split in scores["split"]]
        limit = np.array([[limits.get(int(e), {}).get(k, np.nan) for e in tracked] for k in keys])
        above = values > limit  # NaN limits (no null at that epoch) never count
        first = above.argmax(1)
        mem_epoch = np.where(above.any(1), tracked[first].astype(float), np.nan)
    return pd.DataFrame({"mem_epoch": mem_epoch, "mem_auc": auc, "mem_variability": values.std(1)},
                        index=scores.index)[list(DYNAMICS_NAMES)]


def tag_curves(scores: pd.DataFrame, trajectory: pd.DataFrame) -> pd.DataFrame:
    """Mean raw CLIPMem, A_f and A_g per truth tag and tracked epoch over the scored pairs: columns truth, epoch,
    pairs, clipmem_raw, align_f, align_g."""
    rows = trajectory[trajectory["null_for"].isna()].merge(scores[["sample_id", "truth"]], on="sample_id")
    return (rows.groupby(["truth", "epoch"])
            .agg(pairs=("clipmem_raw", "size"), clipmem_raw=("clipmem_raw", "mean"), align_f=("align_f", "mean"),
                 align_g=("align_g", "mean"))
            .reset_index())
