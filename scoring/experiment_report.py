"""Tables, figures and the Markdown report of a mitigation experiment.

Torch-free (pandas and Plotly only): `clipmem experiment --report` builds its rows
from run directories, the backend from its database, and both hand them to the
same `summarize` and `figures`, so the report and the dashboard's Runs page show
the same numbers.

A run belongs to a grid by its parameters, and the baseline (1 caption, σ = 0,
nothing removed, 1 rendering per scene, both towers trained from the experiment's
starting weights) belongs to all six: it is captions = 1, σ = 0, N = 0, the 1 × 1
point of images × captions, and the "both towers" and "fine-tuned" points of the
towers and from-scratch grids (which exist only in experiments with --pretrained).
"""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path

import pandas as pd

from clipmem.scoring.published import (PUBLISHED, QUANTITIES, REMOVAL_CANDIDATES, PublishedPoint,
                                       removal_counterpart)

GRIDS = ("captions", "text-noise", "removal", "images-captions", "towers", "from-scratch")
# grids that compare starting weights and locks; they need the experiment's --pretrained base
PRETRAINED_GRIDS = ("towers", "from-scratch")
REMOVAL_METHODS = ("top-clipmem", "lowest-similarity", "random")
KNOB_LABELS = {"captions": "captions per image", "text-noise": "σ of text-embedding noise",
               "removal": "pairs removed from training",
               "images-captions": "captions per image (one line per renderings per scene)",
               "towers": "towers trained from the base", "from-scratch": "initial weights"}
# the towers grid's settings by the tower locked (Setting.lock), and the knob value each is plotted at
TOWER_VALUES = {"": 0.0, "text": 1.0, "image": 2.0}
# what the categorical grids' knob values mean
TICK_LABELS = {"towers": {0.0: "both towers", 1.0: "image tower only (text locked)",
                          2.0: "text tower only (image locked)"},
               "from-scratch": {0.0: "fine-tuned from the base", 1.0: "from scratch"}}
# per-truth-tag memorization and swapped-pair detection of a run (quality_metrics), reported in PRETRAINED_GRIDS
TRUTH_PREFIX = "truth_clipmem_raw_"
DETECTION_METRICS = ("swapped_auroc", "swapped_average_precision")
MEMORIZATION_METRICS = ("mean_clipmem_raw", "mean_clipmem", "mean_clipmem_raw_common")
# metrics that compare runs only within some grids (common_pair_means; quality_metrics): left out of the others'
GRID_METRICS = {"mean_clipmem_raw_common": ("removal",), **{m: PRETRAINED_GRIDS for m in DETECTION_METRICS}}
# utility on S_E, averaged over f and g; the probe keys depend on the labels the data has
UTILITY_METRICS = ("probe_shape", "probe_colour", "i2t_r1", "t2i_r1", "i2t_r5", "zeroshot_shape", "zeroshot_colour")
METRIC_LABELS = {
    "mean_clipmem_raw": "mean raw CLIPMem", "mean_clipmem": "mean CLIPMem (min-max scaled per run)",
    "mean_clipmem_raw_common": "mean raw CLIPMem, pairs scored in every run",
    "probe_shape": "linear probe: shape", "probe_colour": "linear probe: colour",
    "i2t_r1": "image→text R@1", "t2i_r1": "text→image R@1", "i2t_r5": "image→text R@5",
    "zeroshot_shape": "zero-shot shape", "zeroshot_colour": "zero-shot colour",
    "swapped_auroc": "swapped-pair AUROC (CLIPMem)", "swapped_average_precision": "swapped-pair average precision",
}
PARAMETERS = ("captions_per_image", "text_noise", "removal_method", "removal_count", "renderings", "lock",
              "from_scratch")
IMAGES_CAPTIONS_VALUES = (1, 5)  # renderings per scene and captions per image of the images-captions grid


def grid_metrics(metric: str) -> tuple[str, ...] | None:
    """The grids a metric is compared in; None: every grid."""
    if metric.startswith(TRUTH_PREFIX):
        return PRETRAINED_GRIDS
    return GRID_METRICS.get(metric)


def metric_label(metric: str) -> str:
    if metric.startswith(TRUTH_PREFIX):
        return f"mean raw CLIPMem, {metric[len(TRUTH_PREFIX):]} pairs"
    return METRIC_LABELS.get(metric, metric)


def quality_metrics(truth_means: dict[str, float], swapped: list[dict]) -> dict[str, float]:
    """A run's mean raw CLIPMem per truth tag and CLIPMem's detection of swapped pairs, as row fields.

    `truth_means` {tag: mean clipmem_raw}; `swapped` the "swapped" list of scoring.metrics.detection (its
    "clipmem" entry is used; empty when the run has no swapped or no other pairs). The report computes both from
    scores.parquet, the backend reads the same numbers from the summary ingest stored (backend.summary)."""
    out = {f"{TRUTH_PREFIX}{tag}": float(value) for tag, value in sorted(truth_means.items())}
    found = next((d for d in swapped if d["score"] == "clipmem"), None)
    if found is not None:
        out.update(swapped_auroc=float(found["auroc"]), swapped_average_precision=float(found["average_precision"]))
    return out


def scores_quality(scores: pd.DataFrame) -> dict[str, float]:
    """quality_metrics of a run from its scores (truth, clipmem_raw, clipmem)."""
    from clipmem.scoring.metrics import detection

    truth = scores["truth"].to_numpy()
    means = scores.groupby("truth")["clipmem_raw"].mean().to_dict()
    found = detection({"clipmem": scores["clipmem"].to_numpy()}, {"swapped": truth == "swapped"})
    return quality_metrics(means, found["swapped"])


def run_row(experiment: dict, mean_clipmem_raw: float, mean_clipmem: float, utility: dict,
            quality: dict[str, float] | None = None) -> dict:
    """One flat row per run: its parameters (experiment.json), mean scores, utility averaged over f and g, and
    `quality` (quality_metrics) where given."""
    row = {"experiment": experiment.get("experiment"), "seed": int(experiment["seed"])}
    row.update({key: experiment.get(key) for key in PARAMETERS})
    row["captions_per_image"] = int(row["captions_per_image"] or 0)
    row["text_noise"] = float(row["text_noise"] or 0.0)
    row["removal_count"] = int(row["removal_count"] or 0)
    row["renderings"] = int(row["renderings"] or 1)  # runs from before the knob trained on the image alone
    row["lock"] = str(row["lock"] or "")  # runs from before the towers grid trained both towers
    row["from_scratch"] = bool(row["from_scratch"])
    row["mean_clipmem_raw"] = float(mean_clipmem_raw)
    row["mean_clipmem"] = float(mean_clipmem)
    keys = sorted({k for model in ("f", "g") for k, v in (utility.get(model) or {}).items()
                   if isinstance(v, (int, float))})
    for key in keys:
        values = [utility[m][key] for m in ("f", "g") if key in (utility.get(m) or {})]
        row[key] = sum(values) / len(values)
    row.update(quality or {})
    return row


def grid_points(row: dict) -> list[tuple[str, str | None, float]]:
    """(grid, method, knob value) for each grid this run is a point of."""
    baseline_captions = row["captions_per_image"] == 1
    clean_text = row["text_noise"] == 0
    removed = row["removal_count"] > 0
    renderings = row.get("renderings", 1)
    lock, scratch = row.get("lock") or "", bool(row.get("from_scratch"))
    plain = baseline_captions and clean_text and not removed and renderings == 1
    if lock or scratch:  # a point of the towers or the from-scratch grid alone
        if not plain or (lock and scratch):
            return []
        return [("towers", None, TOWER_VALUES[lock])] if lock else [("from-scratch", None, 1.0)]
    points = []
    if plain:  # both towers trained from the experiment's base: the start of both grids
        points += [("towers", None, TOWER_VALUES[""]), ("from-scratch", None, 0.0)]
    if clean_text and not removed and renderings in IMAGES_CAPTIONS_VALUES \
            and row["captions_per_image"] in IMAGES_CAPTIONS_VALUES:
        points.append(("images-captions", rendering_line(renderings), float(row["captions_per_image"])))
    if renderings != 1:  # the other grids vary their knob on the image alone
        return points
    if clean_text and not removed:
        points.append(("captions", None, float(row["captions_per_image"])))
    if baseline_captions and not removed:
        points.append(("text-noise", None, row["text_noise"]))
    if baseline_captions and clean_text:
        if removed:
            points.append(("removal", row["removal_method"], float(row["removal_count"])))
        else:  # N = 0 is the start of every removal method's curve
            points.extend(("removal", method, 0.0) for method in REMOVAL_METHODS)
    return points


def rendering_line(renderings: int) -> str:
    """The images-captions grid's line (its `method`) for runs with this many renderings per scene."""
    return f"{renderings} rendering{'s' if renderings != 1 else ''}"


def common_pair_means(rows: list[dict], scores: dict[str, pd.DataFrame]) -> None:
    """Add to each run of the removal grid its mean raw CLIPMem over the pairs that every run of the grid with its
    seed scores (`mean_clipmem_raw_common`), and how many those are (`common_pairs`).

    The plain mean is over the pairs a run scores, and a removal run scores none of the pairs it removed: removing
    the top-CLIPMem pairs lowers that mean by construction. On one fixed set of pairs the runs are comparable.
    `scores[row["run"]]` holds the run's `sample_id` and `clipmem_raw`.
    """
    by_seed: dict[int, list[dict]] = {}
    for row in rows:
        if any(grid == "removal" for grid, _, _ in grid_points(row)):
            by_seed.setdefault(row["seed"], []).append(row)
    for members in by_seed.values():
        if len(members) < 2:  # the baseline alone: no removal to compare with
            continue
        common = set.intersection(*(set(scores[r["run"]]["sample_id"]) for r in members))
        for r in members:
            frame = scores[r["run"]]
            values = frame.loc[frame["sample_id"].isin(common), "clipmem_raw"]
            r["mean_clipmem_raw_common"] = float(values.mean()) if len(values) else float("nan")
            r["common_pairs"] = len(common)


def metric_names(rows: list[dict]) -> list[str]:
    present = {k for row in rows for k in row}
    utility = [m for m in UTILITY_METRICS if m in present]
    utility += sorted(k for k in present if k.startswith("probe_") and k not in utility)
    truth = sorted(k for k in present if k.startswith(TRUTH_PREFIX))
    return ([m for m in MEMORIZATION_METRICS if m in present] + truth + utility
            + [m for m in DETECTION_METRICS if m in present])


def summarize(rows: list[dict]) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds of every metric, per grid, method and knob value."""
    records = []
    metrics = metric_names(rows)
    for row in rows:
        for grid, method, value in grid_points(row):
            for metric in metrics:
                if grid not in (grid_metrics(metric) or (grid,)):
                    continue
                if row.get(metric) is not None and not _is_nan(row[metric]):
                    records.append({"grid": grid, "method": method or "", "value": value, "metric": metric,
                                    "seed": row["seed"], "x": float(row[metric])})
    columns = ["grid", "method", "value", "metric", "mean", "std", "n"]
    if not records:
        return pd.DataFrame(columns=columns)
    long = pd.DataFrame(records)
    # a grid made of the baseline alone (not asked for) says nothing; nor does images-captions without renderings
    # (its 1 x 5 point is the captions grid's)
    spread = long.groupby("grid")["value"].nunique()
    long = long[long["grid"].isin(spread[spread > 1].index)]
    if not (long[long["grid"] == "images-captions"]["method"] != rendering_line(1)).any():
        long = long[long["grid"] != "images-captions"]
    if long.empty:
        return pd.DataFrame(columns=columns)
    out = (long.groupby(["grid", "method", "value", "metric"], sort=True)["x"]
           .agg(mean="mean", std=lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0, n="count").reset_index())
    out["grid"] = pd.Categorical(out["grid"], GRIDS, ordered=True)
    return out.sort_values(["grid", "method", "metric", "value"]).reset_index(drop=True)[columns] \
        .assign(grid=lambda d: d["grid"].astype(str))


def _is_nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def headline_metrics(metrics, grid: str | None = None) -> list[str]:
    """The panels of a figure: memorization, the linear probe (the published utility measure), retrieval.

    Of several probes the shape one is preferred on the built-in data, where colour saturates at 1.0. The removal
    grid's memorization panel is the mean over the pairs every run scores (common_pair_means); without it that
    panel is left out, since the mean over the pairs a run keeps drops by construction when the top ones go.
    """
    present = list(dict.fromkeys(metrics))
    probes = sorted((m for m in present if m.startswith("probe_")), key=lambda m: (m != "probe_shape", m))
    memorization = "mean_clipmem_raw_common" if grid == "removal" else "mean_clipmem_raw"
    if grid in PRETRAINED_GRIDS:  # which pairs are memorized, utility, and how well CLIPMem finds the swaps
        truth = [f"{TRUTH_PREFIX}{tag}" for tag in ("clean", "swapped", "atypical")]
        chosen = [*truth, *probes[:1], "swapped_auroc"]
    else:
        chosen = [memorization] + probes[:1] + [m for m in ("i2t_r1",) if m in present]
    return [m for m in chosen if m in present]


METHOD_COLOURS = {"": "#1f77b4", "top-clipmem": "#d62728", "lowest-similarity": "#2ca02c", "random": "#7f7f7f",
                  rendering_line(1): "#1f77b4", rendering_line(5): "#ff7f0e"}


# characters of a subplot title per line, by panel count: at the report's 1,100 px width and 13 px title font, a
# line wider than its panel runs into the next panel's title
TITLE_CHARACTERS = {1: 90, 2: 60, 3: 40, 4: 30}


def panel_title(label: str, panels: int) -> str:
    """`label` broken into lines (Plotly's <br>) that fit one of `panels` side-by-side panels."""
    return "<br>".join(textwrap.wrap(label, TITLE_CHARACTERS.get(panels, 24)))


def figures(summary: pd.DataFrame):
    """One Plotly figure per grid: mean raw CLIPMem, the linear probe and R@1 against the knob, ± std over seeds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    out = {}
    if summary.empty:
        return out
    for grid in GRIDS:
        part = summary[summary["grid"] == grid]
        if part.empty:
            continue
        panels = headline_metrics(part["metric"], grid)
        fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.08,
                            subplot_titles=[panel_title(metric_label(m), len(panels)) for m in panels])
        for col, metric in enumerate(panels, start=1):
            for method, line in part[part["metric"] == metric].groupby("method", sort=False):
                line = line.sort_values("value")
                name = method or grid
                fig.add_trace(go.Scatter(
                    x=line["value"], y=line["mean"], mode="lines+markers", name=name, legendgroup=name,
                    showlegend=col == 1, line=dict(color=METHOD_COLOURS.get(method, None)),
                    error_y=dict(type="data", array=line["std"], visible=True), customdata=line["n"],
                    hovertemplate="%{x}: %{y:.4f} ± %{error_y.array:.4f} over %{customdata} seeds"
                                  f"<extra>{name}: {metric_label(metric)}</extra>",
                ), row=1, col=col)
        fig.update_xaxes(title_text=KNOB_LABELS[grid])
        if grid in TICK_LABELS:
            ticks = TICK_LABELS[grid]
            fig.update_xaxes(tickvals=list(ticks), ticktext=list(ticks.values()))
        fig.update_annotations(font_size=13)
        fig.update_layout(title=f"{grid}: mean ± std over seeds (utility on S_E, mean of f and g)", height=420,
                          legend=dict(orientation="h", y=-0.3), margin=dict(t=80),
                          showlegend=grid in ("removal", "images-captions"))
        out[grid] = fig
    return out


def findings(summary: pd.DataFrame, utility_metric: str | None = None) -> list[str]:
    """Plain sentences comparing each knob's extremes with the baseline, with the spread over seeds."""
    if summary.empty:
        return []
    utility_metric = utility_metric or next(
        (m for m in summary["metric"].unique() if m.startswith("probe_shape")),
        next((m for m in summary["metric"].unique() if m not in MEMORIZATION_METRICS), None))

    def at(grid, method, value, metric):
        hit = summary[(summary.grid == grid) & (summary.method == method) & (summary.value == value)
                      & (summary.metric == metric)]
        return None if hit.empty else hit.iloc[0]

    def fmt(r):
        return f"{r['mean']:.4f} ± {r['std']:.4f}"

    def compare(label, grid, method, base_value, value):
        parts = []
        for metric in ("mean_clipmem_raw", utility_metric):
            a, b = at(grid, method, base_value, metric), at(grid, method, value, metric)
            if a is None or b is None:
                return None
            delta = b["mean"] - a["mean"]
            spread = max(a["std"], b["std"])
            verdict = ("lower" if delta < 0 else "higher") if abs(delta) > spread else "within the seed spread of"
            parts.append(f"{METRIC_LABELS.get(metric, metric)} {fmt(a)} → {fmt(b)} ({verdict}"
                         f"{' than' if verdict != 'within the seed spread of' else ''} the baseline)")
        return f"{label}: " + "; ".join(parts) + "."

    out = []
    for grid in ("captions", "text-noise"):
        values = sorted(summary[(summary.grid == grid)]["value"].unique())
        base = 1.0 if grid == "captions" else 0.0
        for value in values:
            if value == base:
                continue
            knob = f"{int(value)} captions per image" if grid == "captions" else f"σ = {value:g}"
            line = compare(knob, grid, "", base, value)
            if line:
                out.append(line)
    removal = summary[summary.grid == "removal"]
    for value in sorted(v for v in removal["value"].unique() if v > 0):
        cells = []
        for method in REMOVAL_METHODS:
            r = at("removal", method, value, utility_metric) if utility_metric else None
            if r is not None:
                cells.append((r["mean"], method, r))
        base = at("removal", REMOVAL_METHODS[0], 0.0, utility_metric) if utility_metric else None
        if cells and base is not None:
            ranked = ", ".join(f"{m} {fmt(r)}" for _, m, r in sorted(cells, key=lambda c: -c[0]))
            out.append(f"Removing {int(value)} pairs, {METRIC_LABELS.get(utility_metric, utility_metric)} "
                       f"(baseline {fmt(base)}): {ranked}.")
    return out


def t_interval(x, level: float = 0.95, signed: bool = True) -> tuple[str, tuple[float, float] | None]:
    """The mean of `x` (one value per seed) with its t-interval as text, and the interval's bounds; one value has
    none (None)."""
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    fmt = "{:+.4f}" if signed else "{:.4f}"
    if len(x) < 2:
        return f"{fmt.format(x.mean())} (one seed: no interval)", None
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    lo, hi = x.mean() - half, x.mean() + half
    return f"{fmt.format(x.mean())} [{fmt.format(lo)}, {fmt.format(hi)}]", (float(lo), float(hi))


def _by_seed(rows: list[dict], grid: str, metric: str) -> dict[int, dict[float, float]]:
    """{seed: {knob value: metric}} of one grid's runs that have the metric."""
    points: dict[int, dict[float, float]] = {}
    for row in rows:
        for point_grid, _, value in grid_points(row):
            if point_grid == grid and row.get(metric) is not None and not _is_nan(row[metric]):
                points.setdefault(row["seed"], {})[value] = float(row[metric])
    return points


def paired_difference(rows: list[dict], grid: str, metric: str, a: float, b: float,
                      level: float = 0.95) -> tuple[str, tuple[float, float] | None, int] | None:
    """`metric` at knob value a minus at b, per seed (paired: a seed's runs share split, initialisation and data
    order), as t_interval's (text, bounds) and the number of seeds; None when no seed has both."""
    points = _by_seed(rows, grid, metric)
    seeds = sorted(s for s, p in points.items() if a in p and b in p)
    if not seeds:
        return None
    text, bounds = t_interval([points[s][a] - points[s][b] for s in seeds], level)
    return text, bounds, len(seeds)


def sign_verdict(bounds: tuple[float, float] | None, above: str, below: str) -> str:
    """`above` or `below` when the interval of a difference lies on that side of 0, else "not distinguishable"."""
    if bounds is None or bounds[0] <= 0 <= bounds[1]:
        return "not distinguishable"
    return above if bounds[0] > 0 else below


def towers_verdict(rows: list[dict], level: float = 0.95) -> list[str]:
    """Which tower's training produces the memorization of swapped and of atypical pairs: per truth tag, mean raw
    CLIPMem with the image tower alone trained (text locked) minus with the text tower alone (image locked), paired
    over seeds; a tower is named only when the t-interval of the difference excludes 0."""
    image_only, text_only = TOWER_VALUES["text"], TOWER_VALUES["image"]
    out = []
    for tag in ("swapped", "atypical"):
        found = paired_difference(rows, "towers", f"{TRUTH_PREFIX}{tag}", image_only, text_only, level)
        if found is None:
            continue
        text, bounds, n = found
        verdict = sign_verdict(bounds, "the image tower's training produces more of it",
                               "the text tower's training produces more of it")
        out.append(f"Towers, memorization of {tag} pairs (mean raw CLIPMem, image tower only minus text tower only, "
                   f"{level:.0%} t-interval over {n} seed{'s' if n != 1 else ''}): {text}: {verdict}.")
    return out


def scratch_comparison(rows: list[dict], level: float = 0.95) -> str | None:
    """Fine-tuned from the base minus from scratch, paired over seeds: swapped-pair AUROC and average precision and
    the memorization of clean pairs, each named higher or lower only when its t-interval excludes 0."""
    parts, seeds = [], 0
    for metric in ("swapped_auroc", "swapped_average_precision", f"{TRUTH_PREFIX}clean"):
        found = paired_difference(rows, "from-scratch", metric, 0.0, 1.0, level)
        if found is None:
            continue
        text, bounds, seeds = found
        verdict = sign_verdict(bounds, "higher fine-tuned", "lower fine-tuned")
        parts.append(f"{metric_label(metric)} {text} ({verdict})")
    if not parts:
        return None
    return (f"Fine-tuned from the base minus from scratch ({level:.0%} t-intervals over {seeds} "
            f"seed{'s' if seeds != 1 else ''}): " + "; ".join(parts) + ".")


def interval_table(rows: list[dict], grid: str, metrics: list[str], level: float = 0.95) -> str:
    """Per setting of a categorical grid, each metric's mean over seeds with its t-interval."""
    metrics = [m for m in metrics if grid in (grid_metrics(m) or (grid,))]
    cells: dict[float, dict[str, str]] = {}
    seeds: dict[float, int] = {}
    for metric in metrics:
        values: dict[float, list[float]] = {}
        for by_value in _by_seed(rows, grid, metric).values():
            for value, x in by_value.items():
                values.setdefault(value, []).append(x)
        for value, xs in values.items():
            cells.setdefault(value, {})[metric] = t_interval(xs, level, signed=False)[0]
            seeds[value] = max(seeds.get(value, 0), len(xs))
    if len(cells) < 2:
        return ""
    used = [m for m in metrics if any(m in c for c in cells.values())]
    header = [KNOB_LABELS[grid], "seeds"] + [metric_label(m) for m in used]
    lines = [f"Mean over seeds [{level:.0%} t-interval]:", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for value in sorted(cells):
        lines.append("| " + " | ".join([TICK_LABELS[grid].get(value, f"{value:g}"), str(seeds[value])]
                                       + [cells[value].get(m, "—") for m in used]) + " |")
    return "\n".join(lines)


def axis_comparison(rows: list[dict], metric: str = "mean_clipmem_raw", level: float = 0.95) -> str | None:
    """Which axis of the images-captions grid lowers `metric` more: per seed, the change from 1 × 1 to 5 renderings
    × 1 caption and to 1 rendering × 5 captions, and their difference, each as a mean with a t-interval over the
    seeds that have all three runs (paired: a seed's runs share the split, initialisation and data order)."""
    import numpy as np

    points: dict[int, dict[tuple, float]] = {}
    for row in rows:
        for grid, line, captions in grid_points(row):
            if grid == "images-captions" and row.get(metric) is not None and not _is_nan(row[metric]):
                points.setdefault(row["seed"], {})[(row.get("renderings", 1), int(captions))] = float(row[metric])
    base, images, captions = (1, 1), (max(IMAGES_CAPTIONS_VALUES), 1), (1, max(IMAGES_CAPTIONS_VALUES))
    seeds = sorted(s for s, p in points.items() if {base, images, captions} <= set(p))
    if not seeds:
        return None
    by_images = np.array([points[s][images] - points[s][base] for s in seeds])
    by_captions = np.array([points[s][captions] - points[s][base] for s in seeds])
    images_text, _ = t_interval(by_images, level)
    captions_text, _ = t_interval(by_captions, level)
    difference_text, bounds = t_interval(by_images - by_captions, level)
    label = METRIC_LABELS.get(metric, metric)
    if bounds is None or bounds[0] <= 0 <= bounds[1]:
        verdict = "the two axes are not distinguishable"
    else:
        verdict = f"more {'captions' if bounds[0] > 0 else 'renderings'} lower it more"
    k = max(IMAGES_CAPTIONS_VALUES)
    return (f"Images × captions, change of {label} from 1 × 1 ({level:.0%} t-intervals over {len(seeds)} seeds): "
            f"{k} renderings × 1 caption {images_text}; 1 rendering × {k} captions {captions_text}; "
            f"renderings minus captions {difference_text}: {verdict}.")


# what a published quantity is compared with: the paper's CLIPMem is min-max scaled per model, so only the direction
# of a change compares with our raw mean; its accuracy is an ImageNet linear probe, ours the built-in set's shape probe
PUBLISHED_METRICS = {"clipmem": "mean_clipmem_raw", "accuracy": "probe_shape"}
PUBLISHED_QUANTITY_LABELS = {"clipmem": "CLIPMem", "accuracy": "probe %"}


def published_verdict(published_change: float, reading: float, bounds: tuple[float, float] | None) -> str:
    """Our paired change against the published one. A published change no larger than the reading uncertainty of a
    value is "no change", which ours agrees with when its interval holds 0; otherwise ours agrees when its interval
    excludes 0 on the published side and disagrees on the other. One seed (no interval): "not distinguishable"."""
    if bounds is None:
        return "not distinguishable"
    if abs(published_change) <= reading:
        return "agrees" if bounds[0] <= 0 <= bounds[1] else "disagrees"
    rises = published_change > 0
    return sign_verdict(bounds, "agrees" if rises else "disagrees", "disagrees" if rises else "agrees")


def _removal_pool(row: dict) -> int | None:
    """The pairs the baseline of a run scores (a removal run scores them all but the ones it removed); None without
    the run's scored-pair count."""
    return None if row.get("scored_pairs") is None else int(row["scored_pairs"]) + row["removal_count"]


def _published_n(row: dict) -> int | None:
    """The published N of 5,000 a run's removal count stands for (scoring.published.removal_counterpart)."""
    pool = _removal_pool(row)
    if not row["removal_count"] or pool is None:
        return 0 if not row["removal_count"] else None
    return removal_counterpart(row["removal_count"], pool)


def published_runs(rows: list[dict], point: PublishedPoint) -> list[dict]:
    """Our runs (one per seed) of the setting that reproduces a published point (scoring.published.PublishedPoint):
    the runs of its grid whose parameters are the point's, text noise on the normalised embedding (σ under the
    projection placement is not the published σ), a removal count at the published N's share (of several such
    counts, the nearest)."""
    if point.setting is None:
        return []
    found = []
    for row in rows:
        if not any(grid == point.grid for grid, _, _ in grid_points(row)):
            continue
        if point.grid == "text-noise" and row["text_noise"] and row.get("text_noise_on", "normalized") != "normalized":
            continue
        wanted = {k: v for k, v in point.setting.items() if k != "removal_count"}
        if any(not _same(row.get(key), value) for key, value in wanted.items()):
            continue
        if "removal_count" in point.setting and _published_n(row) != point.setting["removal_count"]:
            continue
        found.append(row)
    if len({r["removal_count"] for r in found}) > 1:  # two of our counts near one published share: the nearest
        share = point.setting["removal_count"] / REMOVAL_CANDIDATES
        best = min(found, key=lambda r: abs(r["removal_count"] / _removal_pool(r) - share))["removal_count"]
        found = [r for r in found if r["removal_count"] == best]
    return list({r["seed"]: r for r in found}.values())


def _same(a, b) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return a is not None and math.isclose(float(a), float(b), abs_tol=1e-12)
    return a == b


def _our_setting(point: PublishedPoint, runs: list[dict]) -> str:
    """Our runs' setting in words."""
    if point.setting is None:
        return "no counterpart"
    if not runs:
        return "not run"
    r = runs[0]
    if point.grid == "removal":
        if not r["removal_count"]:
            return "nothing removed"
        n, pool = r["removal_count"], _removal_pool(r)
        return f"{n} of {pool} removed ({n / pool:.1%}), {r['removal_method']}"
    if point.grid == "text-noise":
        return f"σ = {r['text_noise']:g}" + (", normalized" if r["text_noise"] else "")
    if point.grid == "images-captions":
        return f"{rendering_line(r['renderings'])} × {r['captions_per_image']} caption" \
               f"{'s' if r['captions_per_image'] != 1 else ''}"
    return f"{r['captions_per_image']} caption{'s' if r['captions_per_image'] != 1 else ''} per image"


def published_metric(quantity: str, grid: str, rows: list[dict]) -> str | None:
    """The metric of our rows a published quantity is compared with: mean raw CLIPMem (over the pairs every run
    of the seed scores, in the removal grid, when the rows have it), and the shape probe (another probe where the
    data has no shape labels)."""
    present = {k for row in rows for k, v in row.items() if v is not None and not _is_nan(v)}
    if quantity == "clipmem":
        if grid == "removal" and "mean_clipmem_raw_common" in present:
            return "mean_clipmem_raw_common"
        return PUBLISHED_METRICS[quantity]
    probes = sorted((m for m in present if m.startswith("probe_")),
                    key=lambda m: (m != PUBLISHED_METRICS[quantity], m))
    return probes[0] if probes else None


def published_comparison(rows: list[dict], points: tuple[PublishedPoint, ...] = PUBLISHED,
                         level: float = 0.95) -> list[dict]:
    """Each published figure (scoring.published.PUBLISHED, or `points`) of a grid our rows hold, beside our runs of
    the matching setting: the published value and its change from the source's baseline; our mean ± sd over
    seeds, and the paired (same seed) change from our baseline with its t-interval; and published_verdict.

    Accuracy is compared in percentage points (our probe × 100). A grid is shown when summarize has it."""
    import numpy as np

    shown = set(summarize(rows)["grid"])
    out = []
    for point in points:
        if point.grid not in shown:
            continue
        base = next(p for p in points if p.source == point.source and p.grid == point.grid and p.baseline)
        runs, base_runs = published_runs(rows, point), published_runs(rows, base)
        for quantity in QUANTITIES:
            published = point.value(quantity)
            metric = published_metric(quantity, point.grid, runs + base_runs)
            if published is None or metric is None:
                continue
            scale = 100.0 if quantity == "accuracy" else 1.0
            ours = {r["seed"]: float(r[metric]) * scale for r in runs
                    if r.get(metric) is not None and not _is_nan(r[metric])}
            theirs = {r["seed"]: float(r[metric]) * scale for r in base_runs
                      if r.get(metric) is not None and not _is_nan(r[metric])}
            record = {"source": point.source, "grid": point.grid, "published_setting": point.label,
                      "our_setting": _our_setting(point, runs), "quantity": quantity, "metric": metric,
                      "published": published, "published_change": None, "reading": point.reading(quantity),
                      "seeds": len(ours), "mean": None, "sd": None, "change": None, "bounds": None,
                      "change_seeds": 0, "verdict": "baseline" if point.baseline else "—"}
            if ours:
                x = np.array(list(ours.values()))
                record.update(mean=float(x.mean()), sd=float(x.std(ddof=1)) if len(x) > 1 else None)
            if not point.baseline:
                # rounded to the figures' precision, so that .436 - .438 is the -0.002 it reads as
                record["published_change"] = round(published - base.value(quantity), 6)
                paired = sorted(set(ours) & set(theirs))
                if paired:
                    differences = np.array([ours[s] - theirs[s] for s in paired])
                    record.update(change=float(differences.mean()), bounds=t_interval(differences, level)[1],
                                  change_seeds=len(paired))
                    record["verdict"] = published_verdict(record["published_change"], record["reading"],
                                                          record["bounds"])
            out.append(record)
    return out


def published_table(rows: list[dict], level: float = 0.95) -> str:
    """The "Published beside ours" section of report.md (published_comparison as a table with its caption);
    empty when no grid with a published counterpart has runs."""
    records = published_comparison(rows, level=level)
    if not records:
        return ""
    probe = next((r["metric"] for r in records if r["quantity"] == "accuracy"), "probe_shape")
    lines = [
        "## Published beside ours", "",
        "The paper's figures (SPEC.md; OpenCLIP ViT-Base on COCO) beside the runs of the matching setting. Its "
        "CLIPMem is min-max scaled per model, so only the direction of a change compares with our mean raw CLIPMem "
        f"(`mean_clipmem_raw`); its accuracy is an ImageNet linear probe, ours `{probe}` on S_E in percent. "
        f"Ours: mean ± sd over seeds; our change is paired (same seed) against our baseline, with its "
        f"{level:.0%} t-interval. A published change within the reading uncertainty of a value (Table 1: its last "
        "digit; plots: ±0.002 CLIPMem, ±0.3 points, ±1 point for the σ grid's accuracy) is \"no change\", and ours "
        "agrees when its interval holds 0; otherwise ours agrees when its interval excludes 0 on the published "
        "side, disagrees on the other, and is not distinguishable when it holds 0 (always, with one seed). Removal: "
        "N of 5,000 candidates is matched to our count as the same share of the scored pairs (within 10%).", "",
    ]
    if any(r["text_noise"] and r.get("text_noise_on", "normalized") != "normalized" for r in rows):
        lines += ["Runs with text noise on the projection output (`--text-noise-on projection`) are left out: "
                  "their σ is not the published σ (docs/experiments.md).", ""]
    header = ["source", "published setting", "our setting", "quantity", "published", "published change",
              "ours (mean ± sd, seeds)", f"our change [{level:.0%} CI]", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        digits = 4 if r["quantity"] == "clipmem" else 2
        # a published figure with the decimals its reading uncertainty allows (Table 1's accuracy has two)
        shown = max(1, -math.floor(math.log10(2 * r["reading"])))
        published = f"{r['published']:.{shown}f}"
        change = "—"
        if r["published_change"] is not None:
            change = f"{r['published_change']:+.{shown}f}"
            if abs(r["published_change"]) <= r["reading"]:
                change += f" (no change: ±{r['reading']:g})"
        ours = "—"
        if r["mean"] is not None:
            sd = f" ± {r['sd']:.{digits}f}" if r["sd"] is not None else ""
            ours = f"{r['mean']:.{digits}f}{sd} ({r['seeds']})"
        ours_change = "—"
        if r["change"] is not None:
            ours_change = f"{r['change']:+.{digits}f}"
            ours_change += (f" [{r['bounds'][0]:+.{digits}f}, {r['bounds'][1]:+.{digits}f}]" if r["bounds"]
                            else " (one seed)")
        lines.append("| " + " | ".join([r["source"], r["published_setting"], r["our_setting"],
                                        PUBLISHED_QUANTITY_LABELS[r["quantity"]], published, change, ours,
                                        ours_change, r["verdict"]]) + " |")
    return "\n".join(lines)


def markdown_table(summary: pd.DataFrame, grid: str, metrics: list[str]) -> str:
    part = summary[(summary.grid == grid) & summary.metric.isin(metrics)]
    if part.empty:
        return ""
    part = part.assign(cell=[f"{m:.4f} ± {s:.4f}" for m, s in zip(part["mean"], part["std"])])
    wide = part.pivot_table(index=["method", "value", "n"], columns="metric", values="cell", aggfunc="first")
    wide = wide[[m for m in metrics if m in wide.columns]].reset_index()
    header = ["method", KNOB_LABELS[grid], "seeds"] + [metric_label(m) for m in wide.columns[3:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in wide.iterrows():
        value = TICK_LABELS.get(grid, {}).get(r["value"], f"{r['value']:g}")
        lines.append("| " + " | ".join([r["method"] or "—", value, str(int(r["n"]))]
                                       + [str(r[m]) for m in wide.columns[3:]]) + " |")
    return "\n".join(lines)


class FigureExportWarning(UserWarning):
    """A report's PNG figures could not be written (no figure exporter); the report names them and the cause."""


def exporter_missing(exc: BaseException) -> str | None:
    """The cause, in one line, when `exc` is Plotly's image export failing for want of its exporter: kaleido
    not installed, no Chrome/Chromium for it, or a browser that does not start; None for any other error."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if isinstance(exc, RuntimeError) and ("Kaleido requires Google Chrome" in text
                                          or "requires the Kaleido package" in text):
        return f"{type(exc).__name__}: {text}"
    try:
        from choreographer.errors import BrowserFailedError, ChromeNotFoundError
    except ImportError:
        return None
    if isinstance(exc, (BrowserFailedError, ChromeNotFoundError)):
        return f"{type(exc).__name__}: {text}"
    return None


def write_report(rows: list[dict], out: Path, title: str, notes: list[str] = (), png: bool = True) -> Path:
    """report.md with the tables, the findings and each grid's figure as HTML and PNG beside it.

    Without a figure exporter (kaleido and a Chrome/Chromium) the PNGs are left out: the report says so under
    each figure and at its end, and a FigureExportWarning names the figures and the cause. Any other failure to
    write a figure raises."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    summary.to_csv(out / "summary.csv", index=False)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    metrics = metric_names(rows)
    lines = [f"# {title}", "", *notes, "", "## Findings", ""]
    found = findings(summary) + [line for line in (axis_comparison(rows),) if line] + towers_verdict(rows)
    found += [line for line in (scratch_comparison(rows),) if line]
    lines += [f"- {s}" for s in found] or ["- No grid has both a baseline and another setting yet."]
    published = published_table(rows)
    if published:
        lines += ["", published]
    png_problem, png_missing = None, []
    for grid, fig in figures(summary).items():
        html = out / f"{grid}.html"
        fig.write_html(html, include_plotlyjs="directory")
        lines += ["", f"## {grid}: {KNOB_LABELS[grid]}", "", f"Interactive figure: [{html.name}]({html.name})", ""]
        if png and png_problem is None:
            try:
                fig.write_image(out / f"{grid}.png", width=1100, height=480)
                lines += [f"![{grid}]({grid}.png)", ""]
            except Exception as exc:
                # only a missing exporter (kaleido, or the Chrome/Chromium it drives) is reported and passed
                # over: the HTML figure does not need it. Any other failure is a bug and propagates.
                png_problem = exporter_missing(exc)
                if png_problem is None:
                    raise
        if png and png_problem is not None:
            png_missing.append(grid)
            lines += [f"PNG figure not written: {png_problem}", ""]
        if grid in TICK_LABELS:
            lines += [interval_table(rows, grid, metrics), ""]
        lines.append(markdown_table(summary, grid, metrics))
    if png_missing:
        message = (f"PNG figures were not written for {', '.join(png_missing)} ({png_problem}); install Chromium "
                   "(or set BROWSER_PATH) and rerun the report; the HTML figures are complete.")
        lines += ["", message]
        warnings.warn(message, FigureExportWarning, stacklevel=2)
    lines += ["", "Per-run figures: `runs.csv`; aggregated table: `summary.csv`.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
