"""Which pairs are memorized beyond the noise of training two models, and how sure each mean is.

The null of CLIPMem is measured, not assumed: the S_E pairs, which neither f nor g trained on, were
exchangeable with the scored pairs before training, so their A_with - A_without is what f/g drift alone
produces (null.parquet, columns.NULL_COLUMNS). A scored pair's raw score gets a one-sided p-value against
the null rows of its direction (columns.null_key), Benjamini-Hochberg q-values over the run's scored pairs,
and the flag `memorized` when q <= the run's FDR. Means shown per truth tag, tower or layer carry percentile
bootstrap intervals over pairs, and a comparison is stated as a verdict only when the interval of the
difference excludes 0. docs/significance.md says what the null and the intervals do and do not cover.

numpy, scipy and pandas only (no torch), so the backend and the dashboard's API may import it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from clipmem.scoring.columns import MEMORIZED, null_key
from clipmem.scoring.errors import ClipmemError

LEVEL = 0.95
# below this many null values at or above an observed score, the empirical p-value is too coarse and the
# tail is modelled instead (Knijnenburg et al. 2009, "Fewer permutations, more accurate P-values")
TAIL_EXCEEDANCES = 10
# the fitted tail is trusted down to here and no further: an extrapolation many orders of magnitude past the
# null's own resolution says only "far beyond the null", and a bounded fitted tail (shape < 0) would give 0
P_FLOOR = 1e-12
TAIL_METHOD = (f"empirical (1 + #null >= x) / (m + 1) where at least {TAIL_EXCEEDANCES} null values reach x; "
               f"beyond that a generalized Pareto tail fitted (maximum likelihood) to the top max(10, m // 10) null "
               f"values, never above the empirical value, floored at {P_FLOOR:g}")
N_BOOT = 2000
# the most bootstrap index draws held in memory at once (resamples x pairs)
_BOOT_CHUNK = 4_000_000
# above this many values a mean's interval is the normal one, mean +- z * sd / sqrt(n), instead of the percentile
# bootstrap: a bootstrap costs resamples x values (about 85 s at a million values), and at this size the two agree
# to well within the bootstrap's own Monte Carlo noise (bootstrap_mean's docstring, docs/significance.md)
LARGE_N = 20_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with the ends of its LEVEL interval."""
    estimate: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        return bool(self.lo > 0 or self.hi < 0)

    def to_json(self) -> dict[str, float | None]:
        """{"estimate", "lo", "hi"}; NaN (no pairs) becomes None so the result is valid JSON."""
        return {k: (None if math.isnan(v) else float(v))
                for k, v in (("estimate", self.estimate), ("lo", self.lo), ("hi", self.hi))}


NO_PAIRS = Interval(math.nan, math.nan, math.nan)


# ---------------------------------------------------------------------------------------------- p- and q-values

def null_p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided p = P(N >= x) of each observed x against the null sample (a higher score = more memorized).

    Empirical (1 + #{null >= x}) / (m + 1) wherever at least TAIL_EXCEEDANCES null values reach x: a valid
    p-value for exchangeable x and null, with ties counted against x. Where fewer do, the empirical value can
    say no less than 1/(m + 1), so the tail is modelled: a generalized Pareto law fitted to the excesses of the
    top max(10, m // 10) null values over a threshold halfway between that value and the next one below
    (Knijnenburg et al. 2009), p = (tail count / m) * GPD survival of (x - threshold). The tail p is capped at
    the empirical value (so p stays monotone non-increasing in x) and floored at P_FLOOR; when the fit fails or
    the null is too small to fit, the empirical value stands. NaN observed values get NaN.
    """
    x = np.asarray(observed, dtype=float)
    null = np.asarray(null, dtype=float)
    null = np.sort(null[np.isfinite(null)])
    m = len(null)
    if m == 0:
        raise ClipmemError("the null holds no finite scores: p-values need at least one null pair")
    p = np.full(x.shape, np.nan)
    finite = np.isfinite(x)
    reach = m - np.searchsorted(null, x[finite], side="left")  # #{null >= x}
    p[finite] = (1.0 + reach) / (m + 1.0)
    sparse = np.zeros(x.shape, bool)
    sparse[finite] = reach < TAIL_EXCEEDANCES
    if sparse.any():
        tail = _tail_survival(null)
        if tail is not None:
            p[sparse] = np.clip(np.minimum(tail(x[sparse]), p[sparse]), P_FLOOR, 1.0)
    return p


def _tail_survival(null_sorted: np.ndarray):
    """The fitted P(N >= x) above the tail threshold, or None when the null is too small or the fit fails."""
    m = len(null_sorted)
    n_tail = max(TAIL_EXCEEDANCES, m // 10)
    if m <= n_tail:
        return None
    top = null_sorted[m - n_tail:]
    threshold = (null_sorted[m - n_tail - 1] + top[0]) / 2.0
    excess = top - threshold
    if not np.all(excess > 0) or np.ptp(excess) <= 0:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    except (ValueError, RuntimeError, FloatingPointError):
        return None
    if not (np.isfinite(shape) and np.isfinite(scale) and scale > 0):
        return None
    if shape < 0:
        # a bounded fitted tail would call scores past its end impossible (p = 0), and with tens of excesses a
        # negative shape is as often noise as fact: the exponential tail (shape 0, its MLE scale the mean
        # excess) is the lightest one trusted, which errs towards larger p (fewer false flags)
        shape, scale = 0.0, float(excess.mean())

    def survival(values: np.ndarray) -> np.ndarray:
        return (n_tail / m) * stats.genpareto.sf(values - threshold, shape, loc=0.0, scale=scale)

    return survival


def bh_q_values(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: q_(i) = min over j >= i of p_(j) * m / j (p sorted ascending),
    capped at 1. NaN p-values are left out of the family (m counts finite ones) and get NaN."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return q
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


# ---------------------------------------------------------------------------------------------- intervals

def view_interval(per_view: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of each pair's mean over its views: a Student-t interval with n - 1 degrees of freedom.

    per_view: (N, n), the per-view differences (with - without) of each pair. With one view, lo = hi = it.
    """
    values = np.asarray(per_view, dtype=float)
    if values.ndim != 2:
        raise ClipmemError(f"per-view scores must be a (pairs, views) array, got shape {values.shape}")
    n = values.shape[1]
    mean = values.mean(1)
    if n < 2:
        return mean.copy(), mean.copy()
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(1, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, ...) means of resamples over axis 0 of values: each resample's draw counts per pair times the
    values (a matrix product, so many blocks cost about what one does), drawn in chunks to bound memory."""
    n = len(values)
    flat = values.reshape(n, -1)
    per_chunk = max(1, _BOOT_CHUNK // n)
    out = []
    for start in range(0, n_boot, per_chunk):
        size = min(per_chunk, n_boot - start)
        idx = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        counts = np.bincount(idx.ravel(), minlength=size * n).reshape(size, n)
        out.append(counts @ flat / n)
    return np.concatenate(out).reshape(n_boot, *values.shape[1:])


def bootstrap_mean(values, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    """The mean of values with its percentile bootstrap interval over the values (pairs); non-finite values are
    left out. No values: NaN throughout; one value: lo = hi = it. The same values in any order give the same
    interval.

    Above LARGE_N values the interval is the normal one, mean +- z * sd / sqrt(n) (sd with ddof=1, z the normal
    quantile of level; n_boot and seed then play no part), because the bootstrap costs n_boot x n and there adds
    nothing: the bootstrap distribution of a mean is normal up to a skewness term, which moves each end by about
    skew * (z^2 - 1) / (6 * sqrt(n)) standard errors (Cornish-Fisher; Hall 1992, "The Bootstrap and Edgeworth
    Expansion"), 0.003 standard errors per unit of skewness at n = 20,000, while the 2.5% quantile of 2,000
    resamples itself scatters by about 0.06 standard errors, 3% of the half-width.
    """
    v = np.asarray(values, dtype=float).ravel()
    # sorted: the resamples then depend on the values only, not on the order a caller holds the pairs in (the
    # report reads scores.parquet, the API its database), so both print the same interval
    v = np.sort(v[np.isfinite(v)])
    if len(v) == 0:
        return NO_PAIRS
    estimate = float(v.mean())
    if len(v) == 1:
        return Interval(estimate, estimate, estimate)
    if len(v) > LARGE_N:
        lo, hi = _normal_interval(v[:, None], level)
        return Interval(estimate, float(lo[0]), float(hi[0]))
    return _percentile_bootstrap(v, n_boot, seed, level)


def _percentile_bootstrap(v: np.ndarray, n_boot: int, seed: int, level: float) -> Interval:
    """The percentile bootstrap interval of the mean of v (finite, at least two values), at any size."""
    means = _bootstrap_means(v, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(float(v.mean()), float(lo), float(hi))


def _normal_interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of each column's mean over axis 0 (pairs): mean +- z * sd / sqrt(n), sd with ddof=1."""
    n = len(values)
    mean = values.mean(0)
    half = stats.norm.ppf(0.5 + level / 2) * values.std(0, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


def bootstrap_difference(a, b, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    """mean(a - b) over paired values (the same pairs in the same order) with its bootstrap interval: the
    pairs are resampled together, so what a and b share per pair cancels. Pairs missing either are left out."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ClipmemError(f"a paired difference needs the same pairs on both sides: {len(a)} against {len(b)}")
    return bootstrap_mean(a - b, n_boot=n_boot, seed=seed, level=level)


def bootstrap_block_means(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                          level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per row of values (rows x pairs, e.g. blocks x pairs) from one shared resampling of the pairs, so
    the rows' intervals come from the same bootstrap worlds. Non-finite values are not expected here. Above
    LARGE_N pairs each row's interval is the normal one, as in bootstrap_mean."""
    values = np.asarray(values, dtype=float)
    rows, n = values.shape
    if n == 0:
        return np.full(rows, np.nan), np.full(rows, np.nan)
    if n == 1:
        return values[:, 0].copy(), values[:, 0].copy()
    if n > LARGE_N:
        return _normal_interval(values.T, level)
    means = _bootstrap_means(values.T, n_boot, np.random.default_rng(seed))  # (n_boot, rows)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    return lo, hi


# ---------------------------------------------------------------------------------------------- verdicts

def _decimals(*values: float) -> int:
    """Decimals enough to show the largest value to two significant digits, and at least four."""
    big = max((abs(v) for v in values if np.isfinite(v) and v != 0), default=1.0)
    return max(4, 1 - math.floor(math.log10(big)))


def verdict(a_label: str, b_label: str, diff: Interval, unit: str = "", level: float = LEVEL) -> str:
    """A sentence comparing a and b from the interval of mean(a - b): "a > b (...)" or "b > a (...)" only when
    the interval excludes 0, else "a and b are not distinguishable at this run's size (...)"."""
    if any(math.isnan(v) for v in (diff.estimate, diff.lo, diff.hi)):
        return f"{a_label} and {b_label} cannot be compared: no pairs"
    estimate, lo, hi = diff.estimate, diff.lo, diff.hi
    if diff.excludes_zero and hi < 0:
        a_label, b_label, estimate, lo, hi = b_label, a_label, -estimate, -hi, -lo
    d = _decimals(estimate, lo, hi)

    def number(x: float) -> str:
        return f"{round(x, d) + 0.0:.{d}f}{unit}"  # + 0.0: a value that rounds to zero prints without a sign

    numbers = f"(difference {number(estimate)}, {level:.0%} CI {number(lo)} to {number(hi)})"
    if diff.excludes_zero:
        return f"{a_label} > {b_label} {numbers}"
    return f"{a_label} and {b_label} are not distinguishable at this run's size {numbers}"


# ---------------------------------------------------------------------------------------------- a run's scores

def _null_keys(scores: pd.DataFrame) -> np.ndarray:
    folds = scores["fold"] if "fold" in scores else [None] * len(scores)
    return np.array([null_key(s, None if f is None or pd.isna(f) else int(f))
                     for s, f in zip(scores["split"], folds)], dtype=object)


def _views(column: pd.Series) -> np.ndarray:
    rows = [np.asarray(v, dtype=float) for v in column]
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ClipmemError(f"{column.name}: pairs hold different numbers of views ({sorted(lengths)})")
    return np.stack(rows) if rows else np.zeros((0, 1))


def add_significance(scores: pd.DataFrame, null: pd.DataFrame, fdr: float) -> pd.DataFrame:
    """scores with clipmem_p / clipmem_q / memorized, clipmem_contrastive_p / _q and clipmem_raw_lo / _hi added.

    Each scored pair is tested against the null rows whose null_for is its null_key (its split; in a k-fold run,
    with a `fold` column, its fold), one score at a time; q is Benjamini-Hochberg over all the run's scored pairs
    (one family per score); memorized = clipmem_q <= fdr. The interval is view_interval of views_f - views_g.
    """
    if not 0 < fdr < 1:
        raise ClipmemError(f"the FDR must lie strictly between 0 and 1, got {fdr}")
    out = scores.copy()
    keys = _null_keys(scores)
    by_key = {key: rows for key, rows in null.groupby("null_for")}
    missing = sorted(set(keys) - set(by_key))
    if missing:
        raise ClipmemError(f"the null holds no rows for {', '.join(missing)} (null_for values present: "
                           f"{', '.join(sorted(by_key)) or 'none'})")
    for score in ("clipmem", "clipmem_contrastive"):
        observed = scores[f"{score}_raw"].to_numpy(dtype=float)
        p = np.full(len(scores), np.nan)
        for key, rows in by_key.items():
            mask = keys == key
            if mask.any():
                p[mask] = null_p_values(observed[mask], rows[f"{score}_raw"].to_numpy(dtype=float))
        out[f"{score}_p"] = p
        out[f"{score}_q"] = bh_q_values(p)
    out[MEMORIZED] = out["clipmem_q"].to_numpy() <= fdr
    lo, hi = view_interval(_views(scores["views_f"]) - _views(scores["views_g"]))
    out["clipmem_raw_lo"], out["clipmem_raw_hi"] = lo, hi
    return out


def null_summary(null: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{null_for: {"pairs", "mean", "sd"}} of the null's clipmem_raw (metrics.json, the API's null endpoint)."""
    return {str(key): {"pairs": int(len(rows)), "mean": float(rows["clipmem_raw"].mean()),
                       "sd": float(rows["clipmem_raw"].std(ddof=1)) if len(rows) > 1 else 0.0}
            for key, rows in null.groupby("null_for")}


def flagged_by_truth(scores: pd.DataFrame) -> list[dict]:
    """[{truth, pairs, flagged, fraction}] per truth tag (sorted) and "all" last; [] when the run has no flags.

    Pairs whose flag is missing count as pairs but not as flagged."""
    if MEMORIZED not in scores:
        return []
    flag = scores[MEMORIZED].fillna(False).astype(bool).to_numpy()
    truth = scores["truth"].to_numpy()
    rows = []
    for tag, mask in [*((t, truth == t) for t in sorted(set(truth))), ("all", np.ones(len(scores), bool))]:
        pairs, flagged = int(mask.sum()), int(flag[mask].sum())
        rows.append({"truth": tag, "pairs": pairs, "flagged": flagged,
                     "fraction": flagged / pairs if pairs else math.nan})
    return rows


def _groups(scores: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    truth = scores["truth"].to_numpy()
    return [*((t, truth == t) for t in sorted(set(truth))), ("all", np.ones(len(scores), bool))]


def group_means(scores: pd.DataFrame, columns, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """[{truth, pairs, column: Interval, ...}] per truth tag (sorted) and "all" last: each mean of the columns
    the frame has with its bootstrap interval over the group's pairs."""
    present = [c for c in columns if c in scores]
    return [{"truth": tag, "pairs": int(mask.sum()),
             **{c: bootstrap_mean(scores[c].to_numpy(dtype=float)[mask], n_boot, seed) for c in present}}
            for tag, mask in _groups(scores)]


# (column of side a, column of side b, label of a, label of b, key) of each tower comparison: mean(a - b)
TOWER_COMPARISONS = (
    ("mem_text_raw", "mem_image_raw", "text side", "image side", "sides"),
    ("mem_swap_text", "mem_swap_image", "text-swap drop", "image-swap drop", "swaps"),
)


def tower_verdicts(scores: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Per truth tag (sorted) and "all" last, for each tower comparison the run has (text side against image side;
    text-swap drop against image-swap drop): {truth, pairs, <key>: {"a": Interval, "b": Interval,
    "difference": Interval of mean(a - b), "a_exceeds_b": bool (interval above 0), "b_exceeds_a": bool,
    "verdict": str}}. Empty when the run has no tower scores."""
    comparisons = [c for c in TOWER_COMPARISONS if c[0] in scores and c[1] in scores]
    if not comparisons:
        return []
    out = []
    for tag, mask in _groups(scores):
        row = {"truth": tag, "pairs": int(mask.sum())}
        for a_col, b_col, a_label, b_label, key in comparisons:
            a = scores[a_col].to_numpy(dtype=float)[mask]
            b = scores[b_col].to_numpy(dtype=float)[mask]
            diff = bootstrap_difference(a, b, n_boot, seed)
            row[key] = {"a": bootstrap_mean(a, n_boot, seed), "b": bootstrap_mean(b, n_boot, seed),
                        "difference": diff, "a_exceeds_b": diff.lo > 0, "b_exceeds_a": diff.hi < 0,
                        "verdict": verdict(a_label, b_label, diff)}
        out.append(row)
    return out


def jsonable(value):
    """value with every Interval turned into its to_json() dict and NaN floats into None (for --json, the API)."""
    if isinstance(value, Interval):
        return value.to_json()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
