"""Encoders: which tower memorizes — image side against text side, per-layer curves, and the embedding maps."""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from clipmem.frontend import api, charts, ui

MAP_POINTS = 5000
LISTED = 50
SIDES = {"scaled to [0, 1]": ("mem_image", "mem_text"), "raw": ("mem_image_raw", "mem_text_raw")}
TOWER_COLUMNS = {"mem_image_raw": "image side", "mem_text_raw": "text side",
                 "mem_swap_image": "swap drop, image", "mem_swap_text": "swap drop, text"}


def tower_scores(run: dict, summary: dict) -> None:
    st.header("Image side against text side", anchor=False)
    scores = set(run["score_names"])
    scales = {label: pair for label, pair in SIDES.items() if set(pair) <= scores}
    if not summary["has_tower_scores"] or not scales:
        st.info("**This run has no per-tower scores** (`mem_image`, `mem_text`). They are SSLMem on each tower "
                "alone — the image tower on two augmentations of the image, the text tower on two captions — and "
                "come from scoring's encoder attribution, which this run was scored without. A run scored with it "
                "shows here, per pair, whether the image or the text tower memorized it.", icon=":material/info:")
        return
    label = st.segmented_control("Scale", list(scales), default=next(iter(scales)), key="side_scale",
                                 required=True)
    x, y = scales[label]
    image_side = ui.fetch_part(api.embedding_map, run["name"], "image", x, MAP_POINTS, what=f"the {x} scores")
    text_side = ui.fetch_part(api.embedding_map, run["name"], "image", y, MAP_POINTS, what=f"the {y} scores")
    scatter_col, means_col = st.columns([3, 2], gap="large")
    if image_side is not None and text_side is not None:
        frame = image_side[["sample_id", "truth", x]].merge(text_side[["sample_id", y]], on="sample_id")
        frame = frame.dropna(subset=[x, y])
        with scatter_col:
            st.plotly_chart(charts.encoder_scatter(frame, x, y), key="side_scatter")
            sampled = image_side.attrs.get("total", len(image_side)) > len(image_side)
            st.caption(f"{len(frame):,} scored pairs{' (a uniform sample)' if sampled else ''}. Above the "
                       "diagonal: memorized more on the text side.")
    with means_col:
        overall = next((t for t in summary["by_truth"] if t["truth"] == "all"), None)
        if overall is not None:
            st.markdown(tower_finding(overall))
            if overall.get("verdict"):
                st.caption(f"Over all scored pairs: {overall['verdict']}.")
        left, right = st.columns(2)
        left.metric("Pearson r, image vs text", ui.score_text(summary["pearson"]))
        right.metric("Spearman ρ", ui.score_text(summary["spearman"]))
    tower_means(summary["by_truth"])


def tower_finding(overall: dict) -> str:
    """Which tower carries more of the memorization, said only when the interval of the difference excludes 0."""
    pairs = f"Over the run's {overall['pairs']:,} scored pairs"
    if overall["text_exceeds_image"] or overall.get("image_exceeds_text"):
        leader = "text" if overall["text_exceeds_image"] else "image"
        return (f"{pairs} the **{leader} tower** carries more of the memorization (the published finding on COCO: "
                "the text tower).")
    return (f"{pairs} **neither tower** carries clearly more of the memorization: text side and image side are not "
            "distinguishable at this run's size.")


def tower_means(by_truth: list[dict]) -> None:
    """Image-side and text-side means per truth tag with their 95% intervals, and the verdict of each tag."""
    tags = [t["truth"] for t in by_truth]
    series = {}
    for column, label in (("mem_image_raw", "image side"), ("mem_text_raw", "text side")):
        series[label] = [(t["means"][column], (t.get("intervals") or {}).get(column, {}).get("lo"),
                          (t.get("intervals") or {}).get(column, {}).get("hi")) for t in by_truth]
    st.plotly_chart(charts.interval_bars(tags, series, "mean memorization (raw)",
                                         colours={"image side": charts.TOWER_COLOURS["image"],
                                                  "text side": charts.TOWER_COLOURS["text"]}),
                    key="tower_means_chart")
    st.caption("Mean image-side and text-side memorization per truth tag; error bars are 95% intervals over the "
               "tag's pairs (the bootstrap; above 20,000 pairs the normal interval, which equals it there). A tower "
               "carries more only where the interval of the difference excludes 0.")
    table = pd.DataFrame([{"truth": t["truth"], "pairs": t["pairs"],
                           **{TOWER_COLUMNS[k]: v for k, v in t["means"].items() if k in TOWER_COLUMNS},
                           "text against image": t.get("verdict"), "swap drops": t.get("swap_verdict")}
                          for t in by_truth]).dropna(axis="columns", how="all")
    st.dataframe(table, hide_index=True, width="stretch", key="tower_means",
                 column_config={**{c: st.column_config.NumberColumn(format="%.5f") for c in TOWER_COLUMNS.values()},
                                "text against image": st.column_config.TextColumn(width="large"),
                                "swap drops": st.column_config.TextColumn(width="large")})
    st.caption("Raw means per truth tag. The swap drops are how much memorization falls when that tower of "
               "the model trained with the pair is replaced by the other model's.")


def layer_section(run: dict, summary: dict) -> None:
    st.header("Memorization per layer", anchor=False)
    layers = summary["layers"]
    if not layers:
        st.info("**This run has no per-layer memorization** (LayerMem: the image- and text-side scores of each "
                "transformer block's mean-pooled output). Scoring's encoder attribution writes it; this run was "
                "scored without it.", icon=":material/info:")
        return
    truths = sorted({r["truth"] for r in layers}, key=lambda t: (t != "all", t != "clean", t))
    truth = st.selectbox("Pairs", truths, key="layer_truth", width=320,
                         format_func=lambda t: "all scored pairs" if t == "all" else f"truth tag {t}")
    chosen = [r for r in layers if r["truth"] == truth]
    left, right = st.columns(2, gap="large")
    left.plotly_chart(charts.layer_curves(chosen, "layer_mem", "LayerMem per block"), key="layer_mem_chart")
    right.plotly_chart(charts.layer_curves(chosen, "delta_layer_mem", "ΔLayerMem: increase over the previous block"),
                       key="layer_delta_chart")
    pairs = chosen[0]["pairs"] if chosen else 0
    bars = ("Error bars: 95% bootstrap intervals over the pairs." if any(r.get("layer_mem_lo") is not None
                                                                       for r in chosen)
            else "This run's layer means have no intervals (scored before they were measured).")
    st.caption(f"Means over {pairs:,} pairs. {bars} Blocks are numbered from the input; the last block feeds the "
               "projection into the joint space.")
    unit_section([r for r in layers if r["truth"] == "all"])
    curve_ids = summary["curve_sample_ids"]
    if curve_ids:
        with st.expander(f"One pair's curve ({len(curve_ids)} of the most memorized pairs have one)"):
            sample_id = st.selectbox("Pair", curve_ids, key="curve_pair")
            curves = ui.fetch_part(api.layer_curve, run["name"], sample_id, what=f"the layer curve of {sample_id}")
            if curves is not None:
                st.plotly_chart(charts.pair_layer_curves(curves, layers, f"{sample_id} against the run's mean"),
                                key="pair_curve_chart")
                st.page_link("views/sample.py", label=f"Open {sample_id}", icon=":material/open_in_full:",
                             query_params={"run": run["name"], "sample": sample_id})


def unit_section(overall: list[dict]) -> None:
    """UnitMem per block beside LayerMem: a property of each model's units over all the pairs it trained on, so
    one curve per tower whatever truth tag is chosen above."""
    if not any(r.get("unit_mem") is not None for r in overall):
        st.caption("This run has no UnitMem: it was scored before clipmem measured it, or it is a k-fold or "
                   "replica run, where UnitMem is not defined (docs/layers.md).")
        return
    left, right = st.columns(2, gap="large")
    left.plotly_chart(charts.unit_mem_curves(overall, "UnitMem per block"), key="unit_mem_chart")
    right.markdown("**UnitMem** (clipmem's extension, after Wang et al., *Localizing Memorization in SSL Vision "
                   "Encoders*, NeurIPS 2024): for each unit of a block (an MLP hidden unit; a channel of a ResNet "
                   "stage), its highest mean activation on one training pair against its mean on the model's other "
                   "training pairs, (μ_max − μ_−max) / (μ_max + μ_−max), averaged over the block's units. 1: the "
                   "units each respond to a single pair; 0: they respond to all pairs alike. The line is the mean of "
                   "f (over the S_C pairs it trained on) and g (over S_I), the triangles each model's own value.")


def maps_section(run: dict) -> None:
    st.header("Embedding maps of f and g", anchor=False)
    st.caption("Each model's embeddings projected to 2-D (one projection per model, shared by its images and "
               "captions), coloured by CLIPMem; grey points are held-out S_E pairs, which have no score. Draw a box "
               "or lasso on either map to list those pairs.")
    modality = st.segmented_control("Embeddings", ["image", "text"], default="image", key="map_modality",
                                    required=True, format_func=lambda m: f"{m} embeddings")
    points = ui.fetch_part(api.embedding_map, run["name"], modality, "clipmem", MAP_POINTS,
                           what="the embedding maps")
    if points is None or points.empty:
        return
    selected: list[str] = []
    method = points.attrs.get("method", "")
    for column, model in zip(st.columns(2, gap="medium"), ("f", "g")):
        frame = points.rename(columns={f"{model}_x": "x", f"{model}_y": "y"})
        with column:
            event = st.plotly_chart(charts.embedding_map(frame, f"{model} · {modality} embeddings ({method})"),
                                    key=f"map_{model}_{modality}", on_select="rerun", selection_mode=("box", "lasso"))
        for point in (event.selection.points if event else None) or []:
            custom = point.get("customdata")
            if custom and str(custom[0]) not in selected:
                selected.append(str(custom[0]))
    total = points.attrs.get("total", len(points))
    st.caption(f"{len(points):,} points" + (f", a uniform sample of the run's {total:,} embedded pairs"
                                             if total > len(points) else ", every embedded pair of the run") + ".")
    if not selected:
        st.caption("No points selected.")
        return
    st.subheader(f"{len(selected):,} selected pairs", anchor=False)
    listing = []
    for sample_id in selected[:LISTED]:
        item = ui.fetch_part(api.sample, run["name"], sample_id, what=f"pair {sample_id}")
        if item is None:
            break
        listing.append({"sample": sample_id, "caption": item["captions"][0], "truth": item["truth"],
                        "split": item["split"], "clipmem": (item.get("scores") or {}).get("clipmem"),
                        "open": "sample?" + urlencode({"run": run["name"], "sample": sample_id})})
    if len(selected) > LISTED:
        st.caption(f"The first {LISTED} of them.")
    table = pd.DataFrame(listing).sort_values("clipmem", ascending=False, na_position="last")
    st.dataframe(table, hide_index=True, width="stretch", key="selected_pairs",
                 column_config={"clipmem": st.column_config.NumberColumn("CLIPMem", format="%.3f"),
                                "caption": st.column_config.TextColumn(width="large"),
                                "open": st.column_config.LinkColumn("open", display_text="open pair")})


run = ui.pick_run("encoders")
st.title("Encoders", anchor=False)
summary = ui.fetch_part(api.encoders, run["name"], what="the encoder summary")
if summary is not None:
    tower_scores(run, summary)
    layer_section(run, summary)
maps_section(run)
