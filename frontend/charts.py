"""Every chart of the dashboard, as Plotly figures built from plain data (no Streamlit, no HTTP here)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# one colour per ground-truth tag across every chart; "clean" is the quiet majority
TRUTH_COLOURS = {
    "clean": "#8c99a6",
    "swapped": "#d62728",
    "wrong_attribute": "#ff7f0e",
    "vague": "#bcbd22",
    "atypical": "#9467bd",
    "duplicate": "#17becf",
}
OTHER_COLOURS = ("#1f77b4", "#2ca02c", "#e377c2", "#8c564b", "#7f7f7f")
F_COLOUR = "#1f77b4"   # the model trained with the pair
G_COLOUR = "#ff7f0e"   # the model trained without it
RANGE_COLOUR = "#e4572e"
RANGE_HISTOGRAM_PX = 70
SCORE_SCALE = "Viridis"


def truth_colour_map(tags: Sequence[str]) -> dict[str, str]:
    colours: dict[str, str] = {}
    spare = iter(OTHER_COLOURS * (1 + len(tags) // len(OTHER_COLOURS)))
    for tag in tags:
        colours[tag] = TRUTH_COLOURS.get(tag) or next(spare)
    return colours


def _compact(fig: go.Figure, height: int, margin: int = 4) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=margin, r=margin, t=margin, b=margin),
                      showlegend=False, bargap=0.02)
    return fig


def _centres(edges: Sequence[float]) -> np.ndarray:
    edges = np.asarray(edges, dtype=float)
    return (edges[:-1] + edges[1:]) / 2


def range_histogram(edges: Sequence[float], counts: Sequence[int], lo: float | None, hi: float | None) -> go.Figure:
    """The small histogram under the score slider: bins inside [lo, hi] highlighted."""
    centres = _centres(edges)
    width = np.diff(np.asarray(edges, dtype=float))
    low = -np.inf if lo is None else lo
    high = np.inf if hi is None else hi
    inside = (centres >= low) & (centres <= high)
    colours = np.where(inside, RANGE_COLOUR, "#c9ced6")
    fig = go.Figure(go.Bar(x=centres, y=counts, width=width, marker_color=colours,
                           hovertemplate="%{x:.3f}: %{y} pairs<extra></extra>"))
    fig.update_xaxes(range=[edges[0], edges[-1]], showticklabels=False, showgrid=False)
    fig.update_yaxes(visible=False)
    return _compact(fig, height=RANGE_HISTOGRAM_PX, margin=0)


def truth_histogram(edges: Sequence[float], counts_by_truth: Mapping[str, Sequence[int]], score: str,
                    marker: float | None = None, marker_label: str | None = None, height: int = 260) -> go.Figure:
    """A score's distribution, stacked by truth tag, with an optional vertical marker (this pair)."""
    centres = _centres(edges)
    width = np.diff(np.asarray(edges, dtype=float))
    colours = truth_colour_map(list(counts_by_truth))
    fig = go.Figure()
    for tag, counts in counts_by_truth.items():
        fig.add_trace(go.Bar(x=centres, y=counts, width=width, name=tag, marker_color=colours[tag],
                             hovertemplate=f"{tag}: %{{y}} pairs at %{{x:.3f}}<extra></extra>"))
    fig.update_layout(barmode="stack", xaxis_title=score, yaxis_title="pairs", legend_title_text="truth")
    if marker is not None:
        fig.add_vline(x=marker, line_color="black", line_width=2, line_dash="dash",
                      annotation_text=marker_label or "this pair", annotation_position="top")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), bargap=0.02,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def views_chart(views_f: Sequence[float], views_g: Sequence[float]) -> go.Figure:
    """Alignment of each scoring view under f and under g: the gap between the dots is the memorization."""
    views = [f"view {i + 1}" for i in range(max(len(views_f), len(views_g)))]
    fig = go.Figure()
    for i, (a, b) in enumerate(zip(views_f, views_g)):
        fig.add_shape(type="line", x0=b, x1=a, y0=views[i], y1=views[i], line=dict(color="#c9ced6", width=3))
    fig.add_trace(go.Scatter(x=list(views_f), y=views[:len(views_f)], mode="markers", name="trained with it (A_f)",
                             marker=dict(color=F_COLOUR, size=11),
                             hovertemplate="%{y}: A_f %{x:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=list(views_g), y=views[:len(views_g)], mode="markers",
                             name="trained without it (A_g)", marker=dict(color=G_COLOUR, size=11, symbol="diamond"),
                             hovertemplate="%{y}: A_g %{x:.4f}<extra></extra>"))
    fig.update_layout(height=60 + 26 * len(views), margin=dict(l=10, r=10, t=30, b=10),
                      xaxis_title="cosine(image view, caption view)",
                      yaxis=dict(autorange="reversed"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def encoder_scatter(frame: pd.DataFrame, x: str, y: str) -> go.Figure:
    """Image-side against text-side memorization per pair, coloured by truth tag."""
    tags = sorted(frame["truth"].unique(), key=lambda t: (t != "clean", t))
    colours = truth_colour_map(tags)
    fig = go.Figure()
    for tag in tags:
        rows = frame[frame["truth"] == tag]
        fig.add_trace(go.Scattergl(x=rows[x], y=rows[y], mode="markers", name=tag,
                                   marker=dict(color=colours[tag], size=6 if tag == "clean" else 8,
                                               opacity=0.55 if tag == "clean" else 0.9),
                                   customdata=rows[["sample_id"]].to_numpy(),
                                   hovertemplate=f"%{{customdata[0]}} · {tag}<br>{x} %{{x:.3f}}<br>{y} %{{y:.3f}}"
                                                 "<extra></extra>"))
    low = float(np.nanmin([frame[x].min(), frame[y].min()]))
    high = float(np.nanmax([frame[x].max(), frame[y].max()]))
    fig.add_shape(type="line", x0=low, y0=low, x1=high, y1=high, line=dict(color="#999", dash="dot"))
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=x, yaxis_title=y,
                      legend_title_text="truth")
    return fig


TOWER_COLOURS = {"image": "#2a9d8f", "text": "#e76f51"}


def error_bars(estimates: Sequence[float], lo: Sequence[float | None], hi: Sequence[float | None],
               axis: str = "y") -> dict:
    """Plotly error bars (`error_y` or `error_x`) that reach from each estimate to [lo, hi]; an estimate
    without an interval gets none. Plotly wants distances from the estimate, not the interval's ends."""
    up = [None if h is None or e is None else max(float(h) - float(e), 0.0) for e, h in zip(estimates, hi)]
    down = [None if low is None or e is None else max(float(e) - float(low), 0.0) for e, low in zip(estimates, lo)]
    if all(u is None for u in up) and all(d is None for d in down):
        return {}
    return {f"error_{axis}": dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1.5, width=4)}


def layer_curves(layers: Sequence[Mapping], value: str, title: str,
                 reference: Mapping[str, Sequence[float]] | None = None) -> go.Figure:
    """Memorization per transformer block, one line per tower (blocks numbered from the input).

    `layers`: rows with tower, layer and `value`, and the 95% interval of the mean as `{value}_lo` and
    `{value}_hi` where the run has one (drawn as error bars); `reference`: per tower, a dashed curve to compare
    with."""
    fig = go.Figure()
    for tower in ("image", "text"):
        rows = sorted((r for r in layers if r["tower"] == tower), key=lambda r: r["layer"])
        if not rows:
            continue
        y = [r[value] for r in rows]
        bars = error_bars(y, [r.get(f"{value}_lo") for r in rows], [r.get(f"{value}_hi") for r in rows])
        fig.add_trace(go.Scatter(x=[r["layer"] for r in rows], y=y, mode="lines+markers",
                                 name=f"{tower} tower", line=dict(color=TOWER_COLOURS[tower], width=3),
                                 hovertemplate=f"{tower} block %{{x}}: %{{y:.5f}}<extra></extra>", **bars))
    for tower, values in (reference or {}).items():
        fig.add_trace(go.Scatter(x=list(range(1, len(values) + 1)), y=list(values), mode="lines+markers",
                                 name=f"{tower} tower, run mean", line=dict(color=TOWER_COLOURS.get(tower),
                                                                            dash="dot"),
                                 marker=dict(symbol="circle-open", size=10),
                                 hovertemplate=f"run mean, {tower} block %{{x}}: %{{y:.5f}}<extra></extra>"))
    blocks = max([r["layer"] for r in layers] + [len(v) for v in (reference or {}).values()] + [1])
    fig.add_hline(y=0, line_color="#999", line_width=1)
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), title=title, xaxis_title="block",
                      yaxis_title=value, xaxis=dict(dtick=1, range=[0.6, blocks + 0.4]),
                      yaxis=dict(exponentformat="e"),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, title_text=""))
    return fig


def unit_mem_curves(layers: Sequence[Mapping], title: str) -> go.Figure:
    """UnitMem per block, one line per tower (the mean of f's and g's), with each model's own value as open
    markers: f over the S_C pairs it trained on, g over S_I. `layers`: rows with tower, layer, unit_mem,
    unit_mem_f and unit_mem_g; rows whose unit_mem is null are left out."""
    fig = go.Figure()
    for tower in ("image", "text"):
        rows = sorted((r for r in layers if r["tower"] == tower and r.get("unit_mem") is not None),
                      key=lambda r: r["layer"])
        if not rows:
            continue
        x = [r["layer"] for r in rows]
        colour = TOWER_COLOURS[tower]
        fig.add_trace(go.Scatter(x=x, y=[r["unit_mem"] for r in rows], mode="lines+markers", name=f"{tower} tower",
                                 line=dict(color=colour, width=3),
                                 hovertemplate=f"{tower} block %{{x}}: UnitMem %{{y:.4f}}<extra></extra>"))
        for model, symbol in (("f", "triangle-up-open"), ("g", "triangle-down-open")):
            fig.add_trace(go.Scatter(x=x, y=[r.get(f"unit_mem_{model}") for r in rows], mode="markers",
                                     name=f"{tower}, model {model}", marker=dict(color=colour, symbol=symbol, size=10),
                                     hovertemplate=f"{tower} block %{{x}}, {model}: %{{y:.4f}}<extra></extra>"))
    blocks = max([r["layer"] for r in layers] + [1])
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), title=title, xaxis_title="block",
                      yaxis_title="unit_mem", xaxis=dict(dtick=1, range=[0.6, blocks + 0.4]), yaxis=dict(range=[0, 1]),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, title_text=""))
    return fig


def pair_layer_curves(curves: Mapping[str, Sequence[float]], run_layers: Sequence[Mapping], title: str) -> go.Figure:
    """One pair's memorization per block of each tower, against the run's mean curves (truth "all")."""
    rows = [{"tower": tower, "layer": i + 1, "layer_mem": v} for tower, values in curves.items()
            for i, v in enumerate(values)]
    mean = {tower: [r["layer_mem"] for r in sorted(run_layers, key=lambda r: r["layer"])
                    if r["tower"] == tower and r["truth"] == "all"] for tower in curves}
    return layer_curves(rows, "layer_mem", title, reference=mean)


def embedding_map(frame: pd.DataFrame, title: str, color: str = "clipmem") -> go.Figure:
    """A 2-D map of one model's embeddings (columns x, y, sample_id, truth, `color`): scored pairs coloured by
    the score, unscored ones (S_E) grey underneath. customdata carries (sample_id, truth) for selections."""
    fig = go.Figure()
    unscored = frame[frame[color].isna()]
    scored = frame[frame[color].notna()]
    if len(unscored):
        fig.add_trace(go.Scattergl(
            x=unscored["x"], y=unscored["y"], mode="markers", name="not scored (S_E)",
            marker=dict(color="#c9ced6", size=4), customdata=unscored[["sample_id", "truth"]].to_numpy(),
            hovertemplate="%{customdata[0]} · S_E, not scored<extra></extra>"))
    fig.add_trace(go.Scattergl(
        x=scored["x"], y=scored["y"], mode="markers", name=color,
        marker=dict(color=scored[color], colorscale=SCORE_SCALE, size=6, opacity=0.85,
                    colorbar=dict(title=dict(text=color), thickness=10)),
        customdata=scored[["sample_id", "truth"]].to_numpy(),
        hovertemplate="%{customdata[0]} · %{customdata[1]}<br>" + color + " %{marker.color:.3f}<extra></extra>"))
    fig.update_layout(height=440, margin=dict(l=10, r=10, t=40, b=10), title=title, dragmode="lasso",
                      showlegend=False, xaxis=dict(showticklabels=False, title=None),
                      yaxis=dict(showticklabels=False, title=None))
    return fig


def tradeoff_scatter(frame: pd.DataFrame, utility: str) -> go.Figure:
    """Mean CLIPMem against utility, one point per run: lower-right is the better mitigation."""
    fig = go.Figure(go.Scatter(
        x=frame[utility], y=frame["mean_clipmem"], mode="markers+text", text=frame["name"],
        textposition="top center", marker=dict(size=12, color=F_COLOUR),
        hovertemplate="%{text}<br>" + utility + " %{x:.3f}<br>mean CLIPMem %{y:.3f}<extra></extra>"))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=f"{utility} (utility of f)",
                      yaxis_title="mean CLIPMem", xaxis=dict(range=_padded(frame[utility], 0.02)),
                      yaxis=dict(range=_padded(frame["mean_clipmem"], 0.01)))
    return fig


def _padded(values: pd.Series, least: float) -> list[float]:
    """An axis range around the values with room for labels, also when they are all equal."""
    low, high = float(values.min()), float(values.max())
    pad = max(least, 0.15 * (high - low))
    return [low - pad, high + pad]


def roc_chart(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]]) -> go.Figure:
    """ROC curves (false-positive rate, true-positive rate, AUROC) per score."""
    fig = go.Figure()
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(color="#999", dash="dot"))
    for name, (fpr, tpr, auroc) in curves.items():
        fig.add_trace(go.Scatter(x=list(fpr), y=list(tpr), mode="lines", name=f"{name} ({auroc:.3f})"))
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="false-positive rate",
                      yaxis_title="true-positive rate", xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]),
                      legend_title_text="score (AUROC)")
    return fig


def roc_from_histograms(positive: Sequence[int], negative: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of "score above a bin edge" from the score's histograms of positives and negatives.

    Thresholds at bin edges, high to low; exact up to the binning.
    """
    pos = np.asarray(positive, dtype=float)[::-1].cumsum()
    neg = np.asarray(negative, dtype=float)[::-1].cumsum()
    tpr = np.concatenate([[0.0], pos / pos[-1]]) if pos[-1] else np.zeros(len(pos) + 1)
    fpr = np.concatenate([[0.0], neg / neg[-1]]) if neg[-1] else np.zeros(len(neg) + 1)
    return fpr, tpr


def compare_by_truth(rows: Sequence[Mapping], run_a: str, run_b: str, score: str) -> go.Figure:
    """Mean of a score per truth tag in two runs, over the pairs scored in both."""
    tags = [r["truth"] for r in rows]
    fig = go.Figure([
        go.Bar(x=tags, y=[r["mean_a"] for r in rows], name=run_a, marker_color=F_COLOUR,
               customdata=[r["pairs"] for r in rows],
               hovertemplate="%{x}: %{y:.3f} (%{customdata} pairs)<extra>" + run_a + "</extra>"),
        go.Bar(x=tags, y=[r["mean_b"] for r in rows], name=run_b, marker_color=G_COLOUR,
               customdata=[r["pairs"] for r in rows],
               hovertemplate="%{x}: %{y:.3f} (%{customdata} pairs)<extra>" + run_b + "</extra>"),
    ])
    fig.update_layout(barmode="group", height=320, margin=dict(l=10, r=10, t=30, b=10), yaxis_title=f"mean {score}",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


NULL_COLOUR = "#c9ced6"
PAIR_COLOUR = "#d62728"


def null_histogram(null: Sequence[float], value: float, lo: float | None, hi: float | None, score: str,
                   bins: int = 30, height: int = 300) -> go.Figure:
    """Where a pair's score falls against its null: the same score of pairs neither model trained on.

    Grey bars: the null's histogram (`bins` equal bins over the null's range). The pair: a red line at `value`
    and a point above the bars whose horizontal error bar is its 95% interval [lo, hi] over the scoring views.
    The x axis spans the null, the value and the interval, so a pair far in the tail stays in view."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    fig = go.Figure()
    top = 1
    if len(null):
        counts, edges = np.histogram(null, bins=bins)
        top = int(counts.max())
        fig.add_trace(go.Bar(x=_centres(edges), y=counts, width=np.diff(edges), name="null", marker_color=NULL_COLOUR,
                             hovertemplate="%{y} null pairs at %{x:.4f}<extra></extra>"))
    ends = [float(v) for v in ((null.min(), null.max()) if len(null) else ()) + (value, lo, hi) if v is not None]
    span = max(ends) - min(ends) or 1e-3
    fig.add_vline(x=value, line_color=PAIR_COLOUR, line_width=2)
    fig.add_trace(go.Scatter(x=[value], y=[top * 1.08], mode="markers", name="this pair",
                             marker=dict(color=PAIR_COLOUR, size=10), **error_bars([value], [lo], [hi], axis="x"),
                             hovertemplate="this pair %{x:.4f}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), bargap=0.02, showlegend=False,
                      xaxis=dict(title=score, range=[min(ends) - 0.05 * span, max(ends) + 0.05 * span]),
                      yaxis=dict(title="null pairs", range=[0, top * 1.2]))
    return fig


def interval_bars(categories: Sequence[str], series: Mapping[str, Sequence[tuple[float, float | None, float | None]]],
                  yaxis_title: str, colours: Mapping[str, str] | None = None, height: int = 320) -> go.Figure:
    """Grouped bars, one group per category and one bar per series, each with its 95% interval as an error
    bar. `series`: name -> one (estimate, lo, hi) per category; lo/hi None draws no error bar."""
    fig = go.Figure()
    spare = iter(OTHER_COLOURS * (1 + len(series) // len(OTHER_COLOURS)))
    for name, values in series.items():
        estimates = [v[0] for v in values]
        fig.add_trace(go.Bar(x=list(categories), y=estimates, name=name,
                             marker_color=(colours or {}).get(name) or next(spare),
                             **error_bars(estimates, [v[1] for v in values], [v[2] for v in values]),
                             hovertemplate=f"{name}, %{{x}}: %{{y:.5f}}<extra></extra>"))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=30, b=10), yaxis_title=yaxis_title,
                      yaxis=dict(exponentformat="e"), legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def flagged_bars(rows: Sequence[Mapping]) -> go.Figure:
    """The fraction of each truth tag's pairs flagged memorized (rows: truth, pairs, flagged, fraction)."""
    tags = [r["truth"] for r in rows]
    colours = truth_colour_map(tags)
    fig = go.Figure(go.Bar(
        x=tags, y=[r["fraction"] for r in rows], marker_color=[colours[t] for t in tags],
        text=[f"{r['flagged']:,} of {r['pairs']:,}" for r in rows], textposition="outside",
        hovertemplate="%{x}: %{y:.1%} flagged (%{text})<extra></extra>"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
                      yaxis=dict(title="flagged memorized", tickformat=".0%", range=[0, 1.1]))
    return fig


def pair_trajectory(points: Sequence[Mapping]) -> go.Figure:
    """A pair's A_f and A_g (left axis) and A_f - A_g (right axis) after each tracked epoch, with the null's 95th
    percentile of A_f - A_g (the memorization threshold) dashed."""
    epochs = [p["epoch"] for p in points]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=epochs, y=[p["align_f"] for p in points], name="A_f · trained with it",
                             mode="lines+markers", line=dict(color=F_COLOUR)))
    fig.add_trace(go.Scatter(x=epochs, y=[p["align_g"] for p in points], name="A_g · trained without it",
                             mode="lines+markers", line=dict(color=G_COLOUR)))
    fig.add_trace(go.Scatter(x=epochs, y=[p["clipmem_raw"] for p in points], name="A_f − A_g",
                             mode="lines+markers", line=dict(color="#222", width=3), yaxis="y2"))
    if any(p.get("null_p95") is not None for p in points):
        fig.add_trace(go.Scatter(x=epochs, y=[p.get("null_p95") for p in points], name="null's 95th percentile",
                                 mode="lines", line=dict(color=RANGE_COLOUR, dash="dash"), yaxis="y2"))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch",
                      yaxis=dict(title="alignment (cosine)"),
                      yaxis2=dict(title="A_f − A_g", overlaying="y", side="right", showgrid=False),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def tag_trajectories(curves: Sequence[Mapping], null: Sequence[Mapping]) -> go.Figure:
    """Mean raw CLIPMem per truth tag over the tracked epochs (rows truth, epoch, clipmem_raw {estimate, lo, hi}),
    each point with its 95% interval, and the null's 95th percentile per epoch (the mean over directions) dashed."""
    fig = go.Figure()
    tags = sorted({c["truth"] for c in curves} - {"all"})
    colours = truth_colour_map(tags)
    for tag in tags:
        rows = sorted((c for c in curves if c["truth"] == tag), key=lambda c: c["epoch"])
        estimates = [r["clipmem_raw"]["estimate"] for r in rows]
        fig.add_trace(go.Scatter(x=[r["epoch"] for r in rows], y=estimates, name=tag, mode="lines+markers",
                                 line=dict(color=colours[tag]),
                                 **error_bars(estimates, [r["clipmem_raw"]["lo"] for r in rows],
                                              [r["clipmem_raw"]["hi"] for r in rows]),
                                 hovertemplate=f"{tag}, epoch %{{x}}: %{{y:.5f}}<extra></extra>"))
    if null:
        by_epoch = pd.DataFrame(list(null)).groupby("epoch")["p95"].mean()
        fig.add_trace(go.Scatter(x=by_epoch.index.tolist(), y=by_epoch.tolist(), name="null's 95th percentile",
                                 mode="lines", line=dict(color=RANGE_COLOUR, dash="dash")))
    fig.add_hline(y=0, line_color="#999", line_width=1)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch",
                      yaxis_title="mean A_f − A_g", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def dynamics_map(frame: pd.DataFrame) -> go.Figure:
    """The training-dynamics map (Data Maps): one point per pair (columns sample_id, truth, mean_raw, variability,
    mem_epoch), mean raw CLIPMem over the tracked epochs against its variability, one trace per truth tag.
    customdata carries (sample_id, truth) for selections."""
    fig = go.Figure()
    tags = sorted(frame["truth"].unique())
    colours = truth_colour_map(tags)
    for tag in tags:
        rows = frame[frame["truth"] == tag]
        fig.add_trace(go.Scattergl(
            x=rows["variability"], y=rows["mean_raw"], mode="markers", name=tag,
            marker=dict(color=colours[tag], size=6, opacity=0.8), customdata=rows[["sample_id", "truth"]].to_numpy(),
            hovertemplate="%{customdata[0]} · %{customdata[1]}<br>mean A_f − A_g %{y:.4f}<br>variability "
                          "%{x:.4f}<extra></extra>"))
    fig.update_layout(height=440, margin=dict(l=10, r=10, t=30, b=10), dragmode="lasso",
                      xaxis_title="variability (sd of A_f − A_g over the tracked epochs)",
                      yaxis_title="mean A_f − A_g over the tracked epochs",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig
