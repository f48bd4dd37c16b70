"""Every page of the dashboard (Streamlit AppTest) against the live test backend."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from tests.frontend.conftest import PLAIN, PLAIN_B, PLAIN_BASE_SHA256, TINY, probability

GRID = 24


def count_shown(at) -> int:
    """The "N of M scored pairs match" count at the top of Explore."""
    for md in at.markdown:
        found = re.match(r"\*\*([\d,]+)\*\* of [\d,]+ scored pairs match", md.value)
        if found:
            return int(found.group(1).replace(",", ""))
    raise AssertionError("Explore shows no match count")


def backend_total(api, run: str, **params) -> int:
    response = api.get(f"/runs/{run}/samples", params={"limit": 1, **params})
    response.raise_for_status()
    return response.json()["total"]


def tile_scores(at) -> list[float]:
    return [float(m.group(1)) for md in at.markdown if (m := re.match(r"CLIPMem \*\*([\d.]+)\*\*", md.value))]


def widget(elements, label):
    matches = [e for e in elements if e.label == label]
    assert matches, f"no widget labelled {label!r}"
    return matches[0]


def chart_data(at, key: str) -> list[dict]:
    """The traces of the Plotly chart drawn with `key`, as the browser receives them."""
    chart = next(c for c in at.get("plotly_chart") if c.proto.id and key in c.proto.id)
    return json.loads(chart.proto.spec)["data"]


# ---------------------------------------------------------------- Explore

def test_explore_shows_the_grid_and_every_filter(open_page, api):
    at = open_page("explore", run=TINY)
    assert at.title[0].value == "Explore"
    assert count_shown(at) == backend_total(api, TINY) == 240
    assert len(at.get("image")) == GRID
    assert len(at.get("page_link")) == GRID
    labels = {s.label for s in at.selectbox}
    assert {"Run", "Score", "Split", "Truth tag", "User tag", "Sort by", "Pairs per page"} <= labels
    assert widget(at.slider, "clipmem between").value == (0.0, 1.0)
    assert widget(at.text_input, "Caption contains").value == ""
    assert len(at.sidebar.get("plotly_chart")) == 1  # the histogram drawn over the slider
    scores = tile_scores(at)
    assert scores == sorted(scores, reverse=True) and scores[0] == 1.0


def test_truth_filter_changes_the_results_and_the_url(open_page, api):
    at = open_page("explore", run=TINY)
    widget(at.selectbox, "Truth tag").select("swapped").run()
    assert not at.exception
    swapped = backend_total(api, TINY, truth="swapped")
    assert 0 < swapped < 240
    assert count_shown(at) == swapped
    assert at.query_params["truth"] == "swapped"
    badges = [md.value for md in at.markdown if md.value.startswith("CLIPMem")]
    assert len(badges) == min(swapped, GRID) and all("swapped" in b for b in badges)


def test_score_slider_filters_by_range(open_page, api):
    at = open_page("explore", run=TINY)
    widget(at.slider, "clipmem between").set_range(0.6, 1.0).run()
    assert not at.exception
    expected = backend_total(api, TINY, clipmem_min=0.6)
    assert count_shown(at) == expected < 240
    assert float(at.query_params["lo"]) == pytest.approx(0.6)
    assert "hi" not in at.query_params  # the top of the range is the run's maximum: no bound
    assert min(tile_scores(at)) >= 0.6


def test_only_memorized_pairs_are_those_whose_q_is_within_the_fdr(open_page, tiny_files):
    scores, fdr = tiny_files.scores, tiny_files.fdr
    by_clipmem = scores.sort_values("clipmem", ascending=False, kind="stable")
    flagged = by_clipmem[by_clipmem["clipmem_q"] <= fdr]
    at = open_page("explore", run=TINY)
    # every tile carries its q; the flagged ones say so
    shown = [md.value for md in at.markdown if md.value.startswith("CLIPMem")]
    top = by_clipmem.head(GRID)
    assert [re.search(r"q\s=\s([-\d.e]+\d)", line).group(1) for line in shown] == [
        probability(q) for q in top["clipmem_q"]]
    assert ["memorized]" in line for line in shown] == list(top["clipmem_q"] <= fdr)

    at.checkbox(key="flt_explore_memorized").check().run()
    assert not at.exception
    assert at.query_params["memorized"] == "true"
    assert count_shown(at) == len(flagged)
    badges = re.findall(r"memorized\] q\s=\s([-\d.e]+\d)", " ".join(md.value for md in at.markdown))
    assert badges == [probability(q) for q in flagged["clipmem_q"].head(GRID)]

    # a q threshold of the user's choosing: halfway between two of the run's q-values, so rounding cannot matter
    at.checkbox(key="flt_explore_memorized").uncheck().run()
    distinct = np.unique(scores["clipmem_q"])
    assert len(distinct) > 2, "the tiny run's q-values are all alike: no threshold to test"
    middle = len(distinct) // 2
    threshold = round(float(distinct[middle - 1] + distinct[middle]) / 2, 6)
    at.number_input(key="flt_explore_clipmem_q_max").set_value(threshold).run()
    assert not at.exception
    assert float(at.query_params["clipmem_q_max"]) == pytest.approx(threshold)
    assert count_shown(at) == int((scores["clipmem_q"] <= threshold).sum())
    assert "memorized" not in at.query_params


def test_a_run_scored_before_significance_has_no_memorized_filter(open_page, api):
    """PLAIN_B is made up without null.parquet or p/q columns, as runs scored before significance testing: a link
    asking for its memorized pairs shows all its pairs, and the sidebar says why there is no such filter."""
    at = open_page("explore", run=PLAIN_B, memorized="true", clipmem_q_max="0.01")
    assert count_shown(at) == backend_total(api, PLAIN_B) == 120
    assert not at.checkbox and not at.number_input
    assert any("scored before significance testing" in c.value for c in at.sidebar.caption)
    assert not any(re.search(r"q\s=\s", md.value) for md in at.markdown)


def test_caption_search_sort_order_and_other_score(open_page, api):
    at = open_page("explore", run=TINY)
    widget(at.text_input, "Caption contains").input("circle").run()
    assert count_shown(at) == backend_total(api, TINY, caption="circle") > 0
    at.button_group(key="flt_explore_order").set_value("asc").run()
    scores = tile_scores(at)
    assert scores == sorted(scores)
    widget(at.selectbox, "Sort by").select("clipscore_g").run()
    assert not at.exception
    assert at.query_params["sort"] == "clipscore_g" and at.query_params["order"] == "asc"
    assert any(md.value.startswith("`clipscore_g`") or "`clipscore_g`" in md.value for md in at.markdown)


def test_a_shared_url_restores_the_view(open_page, api):
    at = open_page("explore", run=TINY, truth="swapped", sort="clipscore_g", order="asc", lo="0.2", q="a")
    assert widget(at.selectbox, "Truth tag").value == "swapped"
    assert widget(at.selectbox, "Sort by").value == "clipscore_g"
    assert widget(at.text_input, "Caption contains").value == "a"
    assert widget(at.slider, "clipmem between").value[0] == pytest.approx(0.2)
    assert count_shown(at) == backend_total(api, TINY, truth="swapped", clipmem_min=0.2, caption="a")


def test_next_and_previous_page_follow_the_cursor(open_page):
    at = open_page("explore", run=TINY)
    first_page = tile_scores(at)
    at.button(key="next_top").click().run()
    assert not at.exception
    assert "cursor" in at.query_params
    assert any(md.value.startswith("page 2 · pairs 25–48 of 240") for md in at.markdown)
    second_page = tile_scores(at)
    assert second_page[0] <= first_page[-1]
    at.button(key="prev_top").click().run()
    assert "cursor" not in at.query_params
    assert tile_scores(at) == first_page


def test_the_filter_follows_the_user_across_pages(open_page, api):
    at = open_page("explore", run=TINY, truth="swapped")
    swapped = count_shown(at)
    for page in ("runs", "export", "explore"):
        at.query_params.clear()  # what a switch in the sidebar does to the URL
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception
        assert at.query_params["run"] == TINY
        assert widget(at.selectbox, "Run").value == TINY  # the picker too, not the newest run (plain-b)
    assert at.query_params["truth"] == "swapped"
    assert count_shown(at) == swapped
    assert widget(at.selectbox, "Truth tag").value == "swapped"


def test_a_bad_url_value_falls_back_instead_of_failing(open_page):
    at = open_page("explore", run=TINY, sort="no_such_score", size="7", order="sideways", lo="abc")
    assert count_shown(at) == 240
    assert widget(at.selectbox, "Sort by").value == "clipmem"
    assert not at.error


def test_an_unknown_run_says_so_and_shows_the_newest(open_page):
    at = open_page("explore", run="no-such-run")
    assert any("no run named" in w.value for w in at.warning)
    assert widget(at.selectbox, "Run").value == PLAIN_B


# ---------------------------------------------------------------- Sample

def top_pair(api, run: str = TINY) -> dict:
    return api.get(f"/runs/{run}/samples", params={"limit": 1}).json()["items"][0]


def test_sample_page_shows_the_pair_in_full(open_page, api):
    pair = top_pair(api)
    detail = api.get(f"/runs/{TINY}/samples/{pair['sample_id']}").json()
    at = open_page("sample", run=TINY, sample=pair["sample_id"])
    assert at.title[0].value == f"Sample {pair['sample_id']}"
    # the captions in full, numbered, as the user reads them (markdown escapes undone)
    shown = [html.unescape(re.sub(r"\\(.)", r"\1", md.value)) for md in at.markdown]
    numbered = "\n".join(f"{i}. {caption}" for i, caption in enumerate(detail["captions"], start=1))
    assert len(detail["captions"]) >= 1 and numbered in shown
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["A_f · trained with it"] == f"{detail['align_f']:.4f}"
    assert metrics["A_g · trained without it"] == f"{detail['align_g']:.4f}"
    assert metrics["CLIPMem"] == "1.000"
    has_curve = pair["sample_id"] in api.get(f"/runs/{TINY}/encoders").json()["curve_sample_ids"]
    charts = {c.proto.id for c in at.get("plotly_chart")}
    # the pair against the null, per-view alignments, place in the distribution, its layer curve
    assert len(charts) == 3 + has_curve
    headers = [s.value for s in at.subheader]
    seen_by = detail["seen_by"]
    assert f"Model {seen_by} · trained with this pair" in headers
    assert any(h.endswith("trained without it") for h in headers)
    evidence = api.get(f"/runs/{TINY}/samples/{pair['sample_id']}/evidence").json()
    # the pair, its nearest images in the evidence panel, and 8 nearest images under each model
    assert len(at.get("image")) == 1 + len(evidence["image_neighbours"]) + 2 * 8
    assert len(at.dataframe) >= 2


def test_sample_page_draws_the_pair_against_its_null(open_page, tiny_files):
    scores, null, fdr = tiny_files.scores, tiny_files.null, tiny_files.fdr
    for pair in (scores.loc[scores["clipmem_q"].idxmin()], scores.loc[scores["clipmem_q"].idxmax()]):
        at = open_page("sample", run=TINY, sample=pair["sample_id"])
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["p-value"] == probability(pair["clipmem_p"])
        assert metrics["q-value"] == probability(pair["clipmem_q"])
        assert metrics[f"At FDR {fdr:g}"] == ("memorized" if pair["clipmem_q"] <= fdr else "not flagged")
        bars, point = chart_data(at, "null_chart")
        # the null of the pair's direction: the S_E pairs' raw scores with its split as null_for (published scheme)
        own = null.loc[null["null_for"] == pair["split"], "clipmem_raw"].to_numpy()
        assert len(own) == (null["null_for"] == pair["split"]).sum() > 0
        counts = plotly_array(bars["y"])
        assert sum(counts) == len(own)
        centres, widths = np.asarray(plotly_array(bars["x"])), np.asarray(plotly_array(bars["width"]))
        assert centres[0] - widths[0] / 2 == pytest.approx(own.min()) and \
            centres[-1] + widths[-1] / 2 == pytest.approx(own.max())
        # the pair: its raw score, and its interval over the views as the error bar
        assert plotly_array(point["x"]) == pytest.approx([pair["clipmem_raw"]])
        assert plotly_array(point["error_x"]["array"]) == pytest.approx([pair["clipmem_raw_hi"] - pair["clipmem_raw"]])
        assert plotly_array(point["error_x"]["arrayminus"]) == pytest.approx(
            [pair["clipmem_raw"] - pair["clipmem_raw_lo"]])
        text = " ".join(md.value for md in at.markdown)
        assert f"{pair['clipmem_raw_lo']:.4f} to {pair['clipmem_raw_hi']:.4f}" in text


def test_sample_page_of_a_run_scored_before_significance_says_so(open_page, api):
    pair = top_pair(api, PLAIN_B)
    at = open_page("sample", run=PLAIN_B, sample=pair["sample_id"])
    assert any("scored before significance testing" in i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if c.proto.id and "null_chart" in c.proto.id]
    assert {m.label for m in at.metric} == {"A_f · trained with it", "A_g · trained without it", "A_f − A_g", "CLIPMem"}


def test_sample_and_runs_pages_name_the_base_and_the_lock_a_run_used(open_page, api):
    # PLAIN's config.json: fine-tuned from /models/bases/base-seed7.pt, text tower locked (tests/frontend/conftest.py)
    at = open_page("sample", run=PLAIN, sample=top_pair(api, PLAIN)["sample_id"])
    captions = [re.sub(r"\\(.)", r"\1", c.value) for c in at.caption]
    assert (f"f and g fine-tuned from **base-seed7.pt** (sha256 `{PLAIN_BASE_SHA256[:12]}…`), text tower locked "
            "(unlocked layers 0)") in captions
    at = open_page("sample", run=TINY, sample=top_pair(api)["sample_id"])
    assert "f and g trained from scratch (random initial weights), both towers trained" in [c.value for c in at.caption]
    at = open_page("runs", run=PLAIN)
    table = at.dataframe[0].value.set_index("run")
    assert (table.loc[PLAIN, "base"], table.loc[PLAIN, "locked"]) == ("base-seed7.pt", "text")
    assert (table.loc[TINY, "base"], table.loc[TINY, "locked"]) == ("scratch", "none")
    assert any("fine-tuned from **base-seed7.pt**" in re.sub(r"\\(.)", r"\1", c.value) for c in at.caption)


def test_tags_are_added_filtered_and_removed(open_page, api):
    pair = top_pair(api)["sample_id"]
    at = open_page("sample", run=TINY, sample=pair)
    widget(at.text_input, "Add a tag").input("needs-review")
    at.button[[b.label for b in at.button].index("Add tag")].click().run()
    assert not at.exception and not at.error
    assert api.get(f"/runs/{TINY}/samples/{pair}").json()["tags"] == ["needs-review"]
    assert at.button(key="untag_needs-review")

    explore = open_page("explore", run=TINY, tag="needs-review")
    assert count_shown(explore) == 1
    assert "needs\\-review" in " ".join(md.value for md in explore.markdown)

    at.button(key="untag_needs-review").click().run()
    assert not at.exception
    assert api.get(f"/runs/{TINY}/samples/{pair}").json()["tags"] == []
    assert not [b for b in at.button if b.key == "untag_needs-review"]


def test_an_invalid_tag_is_refused_with_the_rule(open_page, api):
    pair = top_pair(api)["sample_id"]
    at = open_page("sample", run=TINY, sample=pair)
    widget(at.text_input, "Add a tag").input("no/slashes")
    at.button[[b.label for b in at.button].index("Add tag")].click().run()
    assert not at.exception
    assert at.error and "letters, digits" in at.error[0].value
    assert api.get(f"/runs/{TINY}/samples/{pair}").json()["tags"] == []


def test_an_unscored_pair_says_why_it_has_no_comparison(open_page, api):
    held_out = api.get(f"/runs/{TINY}/maps", params={"max_points": 5000}).json()
    sample_id = next(s for s, split in zip(held_out["sample_id"], held_out["split"]) if split == "extra")
    at = open_page("sample", run=TINY, sample=sample_id)
    assert any("only S_C and S_I pairs are scored" in i.value for i in at.info)
    assert not at.metric
    assert any("never saw it" in s.value for s in at.subheader)


def test_a_missing_pair_and_no_pair(open_page):
    at = open_page("sample", run=TINY, sample="no-such-pair")
    assert any("no-such-pair" in w.value for w in at.warning)
    at = open_page("sample", run=TINY)
    assert any("No pair is chosen" in i.value for i in at.info)
    at.button[0].click().run()
    assert not at.exception
    assert at.title[0].value.startswith("Sample ")


# ---------------------------------------------------------------- Encoders

def test_encoders_page_says_what_a_run_without_attribution_lacks(open_page):
    at = open_page("encoders", run=PLAIN)
    infos = " ".join(i.value for i in at.info)
    assert "no per-tower scores" in infos and "mem_image" in infos
    assert "no per-layer memorization" in infos
    assert len(at.get("plotly_chart")) == 2  # only the maps of f and g
    at.button_group(key="map_modality").set_value("text").run()
    assert not at.exception and len(at.get("plotly_chart")) == 2


def normal_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, lo, hi): the normal-approximation 95% interval of a mean, a second method beside the bootstrap."""
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def test_encoders_page_compares_the_towers_and_their_layers(open_page, api, tiny_files):
    summary = api.get(f"/runs/{TINY}/encoders").json()
    assert summary["has_tower_scores"] and summary["layers"] and summary["curve_sample_ids"]
    at = open_page("encoders", run=TINY)
    assert not at.info
    # the per-pair scatter, means per truth tag, LayerMem, ΔLayerMem and UnitMem, one pair's layer curve, the maps
    assert len(at.get("plotly_chart")) == 8
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pearson r, image vs text"] == f"{summary['pearson']:.3f}"
    means = next(d.value for d in at.dataframe if "image side" in d.value.columns)
    assert list(means["truth"]) == [t["truth"] for t in summary["by_truth"]]

    # the bars: each side's mean per truth tag from scores.parquet; the error bars of the large groups agree with
    # a normal-approximation interval (the bootstrap's percentile ends differ from it by sampling only)
    scores = tiny_files.scores
    groups = {"all": scores, **dict(iter(scores.groupby("truth")))}
    image_bars, text_bars = chart_data(at, "tower_means_chart")
    tags = plotly_array(image_bars["x"])
    assert tags == list(means["truth"])
    for bars, column in ((image_bars, "mem_image_raw"), (text_bars, "mem_text_raw")):
        heights = dict(zip(tags, plotly_array(bars["y"])))
        up = dict(zip(tags, plotly_array(bars["error_y"]["array"])))
        down = dict(zip(tags, plotly_array(bars["error_y"]["arrayminus"])))
        for tag in tags:
            values = groups[tag][column].to_numpy()
            assert heights[tag] == pytest.approx(values.mean(), abs=1e-9)
            if len(values) >= 100:
                mean, lo, hi = normal_interval(values)
                assert heights[tag] + up[tag] == pytest.approx(hi, abs=0.2 * (hi - mean))
                assert heights[tag] - down[tag] == pytest.approx(lo, abs=0.2 * (hi - mean))

    # the verdict over all pairs: the paired difference text - image per pair, and its direction when a normal
    # interval leaves no doubt about it
    difference = (scores["mem_text_raw"] - scores["mem_image_raw"]).to_numpy()
    mean, lo, hi = normal_interval(difference)
    caption = next(c.value for c in at.caption if c.value.startswith("Over all scored pairs: "))
    found = re.search(r"(text side|image side)(?: > | and )(text side|image side).*\(difference (-?[\d.]+), 95% CI "
                      r"(-?[\d.]+) to (-?[\d.]+)\)", caption)
    assert found, caption
    sign = 1 if found.group(1) == "text side" else -1
    shown = sign * float(found.group(3))
    assert shown == pytest.approx(mean, abs=10 ** -(len(found.group(3).split(".")[1])))
    finding = " ".join(md.value for md in at.markdown if md.value.startswith("Over the run's"))
    if lo > 0.2 * (hi - mean):
        assert "text side > image side" in caption and "the **text tower** carries more" in finding
    elif hi < -0.2 * (hi - mean):
        assert "image side > text side" in caption and "the **image tower** carries more" in finding
    elif abs(mean) < 0.8 * (hi - mean):
        assert "not distinguishable at this run's size" in caption and "**neither tower**" in finding

    # LayerMem per block with the intervals of layers.parquet as error bars
    layers = tiny_files.layers
    drawn = {trace["name"]: trace for trace in chart_data(at, "layer_mem_chart")}
    for tower in ("image", "text"):
        rows = layers[(layers["tower"] == tower) & (layers["truth"] == "all")].sort_values("layer")
        trace = drawn[f"{tower} tower"]
        assert plotly_array(trace["y"]) == pytest.approx(rows["layer_mem"].tolist())
        assert plotly_array(trace["error_y"]["array"]) == pytest.approx(
            (rows["layer_mem_hi"] - rows["layer_mem"]).tolist())
        assert plotly_array(trace["error_y"]["arrayminus"]) == pytest.approx(
            (rows["layer_mem"] - rows["layer_mem_lo"]).tolist())
    # UnitMem per block from layers.parquet: the mean as the line, f's and g's values as markers
    drawn = {trace["name"]: trace for trace in chart_data(at, "unit_mem_chart")}
    for tower in ("image", "text"):
        rows = layers[(layers["tower"] == tower) & (layers["truth"] == "all")].sort_values("layer")
        for name, column in ((f"{tower} tower", "unit_mem"), (f"{tower}, model f", "unit_mem_f"),
                             (f"{tower}, model g", "unit_mem_g")):
            assert plotly_array(drawn[name]["y"]) == pytest.approx(rows[column].tolist()), name
    at.selectbox(key="layer_truth").select("clean").run()
    assert chart_data(at, "unit_mem_chart")  # not a truth-tag quantity: the same chart for every tag
    at.button_group(key="side_scale").set_value("raw").run()
    assert not at.exception
    last = summary["curve_sample_ids"][-1]
    at.selectbox(key="curve_pair").select(last).run()
    assert not at.exception
    curve = next(c for c in at.get("plotly_chart") if c.key == "pair_curve_chart")
    assert f"{last} against the run's mean" in curve.proto.spec


# ---------------------------------------------------------------- Runs

def test_runs_page_lists_runs_tradeoff_detection_and_comparison(open_page, api, tiny_files):
    at = open_page("runs", run=TINY)
    runs_table = at.dataframe[0].value
    assert set(runs_table["run"]) == {TINY, PLAIN, PLAIN_B}
    assert {"mean CLIPMem", "i2t_r1"} <= set(runs_table.columns)
    detection = api.get(f"/runs/{TINY}/detection").json()
    table = next(d.value for d in at.dataframe if "AUROC" in d.value.columns)
    assert list(table["score"]) == [row["score"] for row in detection["faulty"]]
    assert table["AUROC"].tolist() == pytest.approx([row["auroc"] for row in detection["faulty"]])
    assert len(at.get("plotly_chart")) == 3  # trade-off, flagged pairs per truth tag, ROC
    # flagged pairs per truth tag, as counted from the run's scores.parquet
    scores, fdr = tiny_files.scores, tiny_files.fdr
    flags = scores.assign(flagged=scores["clipmem_q"] <= fdr).groupby("truth")["flagged"].agg(["size", "sum"])
    flagged = next(d.value for d in at.dataframe if "flagged" in d.value.columns).set_index("truth")
    assert list(flagged.index) == [*sorted(flags.index), "all"]
    for tag, row in flags.iterrows():
        assert (flagged.loc[tag, "pairs"], flagged.loc[tag, "flagged"]) == (row["size"], row["sum"])
        assert flagged.loc[tag, "fraction"] == pytest.approx(row["sum"] / row["size"])
    assert flagged.loc["all", "flagged"] == flags["sum"].sum()
    assert runs_table.set_index("run").loc[TINY, "flagged memorized"] == flags["sum"].sum()
    # the mean of clipmem_raw over the clean pairs with its interval, against a normal-approximation interval
    means = next(d.value for d in at.dataframe if "clipmem_raw 95% interval" in d.value.columns).set_index("truth")
    clean = scores.loc[scores["truth"] == "clean", "clipmem_raw"].to_numpy()
    mean, lo, hi = normal_interval(clean)
    assert means.loc["clean", "clipmem_raw"] == pytest.approx(mean, rel=1e-5)
    shown_lo, shown_hi = map(float, means.loc["clean", "clipmem_raw 95% interval"].split(" to "))
    assert shown_lo == pytest.approx(lo, abs=0.2 * (hi - mean)) and shown_hi == pytest.approx(hi, abs=0.2 * (hi - mean))
    at.radio(key="detection_kind").set_value("swapped").run()
    assert not at.exception
    assert any("no scored pair in common" in i.value for i in at.info)  # tiny and the made-up runs


def test_runs_page_compares_two_runs(open_page, api):
    at = open_page("runs", run=PLAIN)
    at.selectbox(key="compare_with").select(PLAIN_B).run()
    assert not at.exception
    expected = api.get("/comparisons", params={"run_a": PLAIN, "run_b": PLAIN_B, "score": "clipmem", "k": 100}).json()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs scored in both"] == f"{expected['shared_pairs']:,}" == "120"
    # a run scored before significance testing: no flagged pairs to count, and a note saying why
    assert any("scored before significance testing" in i.value for i in at.info)
    assert pd.isna(at.dataframe[0].value.set_index("run").loc[PLAIN, "flagged memorized"])
    assert metrics["Spearman rank correlation"] == f"{expected['spearman']:.3f}"
    assert len(at.get("plotly_chart")) == 3  # trade-off, ROC, means by truth tag in both runs


# ---------------------------------------------------------------- Export

def test_export_downloads_the_filter_and_the_training_set_without_it(open_page, api):
    at = open_page("export", run=TINY, truth="swapped")
    swapped = backend_total(api, TINY, truth="swapped")
    assert any(f"selects **{swapped}**" in md.value for md in at.markdown)
    at.button(key="prepare_selection").click().run()
    assert not at.exception and not at.error
    prepared = at.session_state["_clipmem_export"]
    selection = pd.read_csv(io.BytesIO(next(iter(prepared.values()))))
    assert len(selection) == swapped and set(selection["truth"]) == {"swapped"}
    assert at.get("download_button")

    at.button(key="prepare_open_clip").click().run()
    assert not at.exception and not at.error
    training = pd.read_csv(io.BytesIO(next(iter(at.session_state["_clipmem_export"].values()))), sep="\t")
    assert list(training.columns) == ["filepath", "title"]
    removed = {f"{sid}.png" for sid in selection["sample_id"]}
    assert not any(path.rsplit("/", 1)[-1] in removed for path in training["filepath"])

    # only the 5 most memorized of them
    at.number_input(key="export_top").set_value(5).run()
    at.button(key="prepare_selection").click().run()
    top = pd.read_csv(io.BytesIO(next(iter(at.session_state["_clipmem_export"].values()))))
    assert list(top["sample_id"]) == list(selection["sample_id"][:5])


def test_export_of_the_memorized_pairs_holds_exactly_the_flagged_pairs(open_page, tiny_files):
    scores, fdr = tiny_files.scores, tiny_files.fdr
    flagged = scores[scores["clipmem_q"] <= fdr].sort_values("clipmem", ascending=False, kind="stable")
    at = open_page("export", run=TINY, memorized="true")
    assert any("**flagged memorized**" in md.value and f"selects **{len(flagged)}**" in md.value
               for md in at.markdown)
    at.button(key="prepare_selection").click().run()
    assert not at.exception and not at.error
    saved = pd.read_csv(io.BytesIO(next(iter(at.session_state["_clipmem_export"].values()))))
    assert saved["sample_id"].tolist() == flagged["sample_id"].tolist()


# ---------------------------------------------------------------- the backend missing or refusing

@pytest.mark.parametrize("page", ["explore", "sample", "encoders", "runs", "export"])
def test_an_unreachable_backend_says_how_to_start_it(page, app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.frontend.conftest import APP
    from tests.frontend.stack import free_port

    monkeypatch.setenv("CLIPMEM_API_URL", f"http://127.0.0.1:{free_port()}")
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    if page != "explore":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception
    assert "not reachable" in at.error[0].value
    assert any("clipmem serve" in c.value for c in at.code)


PAGES = ("explore", "sample", "encoders", "runs", "export")


def locked_app(page: str = "explore", **params: str):
    """A fresh browser session (AppTest) of the dashboard on the token-protected backend, showing `page`."""
    from streamlit.testing.v1 import AppTest

    from tests.frontend.conftest import APP

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(params)
    at.run()
    if page != "explore":
        at.query_params.update(params)
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sign_in(at, token: str):
    at.text_input(key="sign_in_token").input(token)
    at.button(key="sign_in_submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shows_no_data(at) -> None:
    """The sign-in form and nothing read from the backend: no pairs, images, tables, charts or run names."""
    from tests.frontend.conftest import KEPT

    assert at.title[0].value == "Sign in"
    assert at.text_input(key="sign_in_token").proto.type == at.text_input(key="sign_in_token").proto.PASSWORD
    assert not at.get("image") and not at.dataframe and not at.get("plotly_chart") and not at.selectbox
    texts = " ".join(e.value for e in (*at.markdown, *at.caption, *at.info, *at.warning) if isinstance(e.value, str))
    assert "scored pairs" not in texts and KEPT not in texts
    assert not [b for b in at.button if b.key == "delete_run"]


def test_a_visitor_without_a_token_sees_nothing_even_when_others_signed_in(locked_env, monkeypatch):
    """The dashboard's own environment holds both tokens (as docker-compose.yml once gave it one): a visitor
    must still sign in, and answers cached for a signed-in session must not reach an anonymous one."""
    from tests.frontend.conftest import KEPT, READ_TOKEN, WRITE_TOKEN

    monkeypatch.setenv("CLIPMEM_API_TOKEN", READ_TOKEN)
    monkeypatch.setenv("CLIPMEM_API_WRITE_TOKEN", WRITE_TOKEN)
    signed_in = sign_in(locked_app(run=KEPT), WRITE_TOKEN)
    assert count_shown(signed_in) == 120  # the cache now holds the run's pages, fetched with the write token
    for page in PAGES:
        shows_no_data(locked_app(page, run=KEPT, sample="pair-0000200"))


def test_a_wrong_token_is_refused(locked_env):
    at = sign_in(locked_app(), "not-a-token")
    assert "does not accept this token" in at.error[0].value
    shows_no_data(at)


def test_the_read_token_browses_but_cannot_tag_or_delete(locked_env):
    from tests.frontend.conftest import KEPT, READ_TOKEN

    at = sign_in(locked_app(run=KEPT), READ_TOKEN)
    assert not at.error
    assert count_shown(at) == locked_env.get(f"/runs/{KEPT}/samples?limit=1").json()["total"] == 120
    assert len(at.get("image")) == GRID
    assert any("read only" in c.value for c in at.sidebar.caption)
    at.switch_page("views/runs.py").run()
    assert not at.exception and not at.error
    assert at.dataframe and not [b for b in at.button if b.key == "delete_run"]
    assert any("needs the write token" in c.value for c in at.caption)
    at.query_params["sample"] = "pair-0000200"
    at.switch_page("views/sample.py").run()
    assert not at.exception and not at.error
    assert "Captions" in [s.value for s in at.subheader]
    assert not [t for t in at.text_input if t.label == "Add a tag"]
    # signing out forgets the token
    at.button(key="sign_out").click().run()
    shows_no_data(at)


def test_the_write_token_deletes_a_run(locked_env):
    from tests.frontend.conftest import WRITE_TOKEN

    doomed = locked_env.add_run("doomed-apptest", seed=21)
    at = sign_in(locked_app("runs", run=doomed), WRITE_TOKEN)
    assert not at.error
    assert any("may tag pairs and delete runs" in c.value for c in at.sidebar.caption)
    at.text_input(key="delete_confirm").input(doomed).run()
    at.button(key="delete_run").click().run()
    assert not at.exception and not at.error
    assert locked_env.get(f"/runs/{doomed}").status_code == 404


def test_an_empty_backend_says_how_to_add_a_run(stack_dir, app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.frontend.conftest import APP
    from tests.frontend.stack import backend

    with backend(f"sqlite:///{stack_dir / 'empty.db'}", stack_dir) as url:
        monkeypatch.setenv("CLIPMEM_API_URL", url)
        at = AppTest.from_file(str(APP), default_timeout=30).run()
        assert not at.exception and not at.error
        assert "holds no runs yet" in at.info[0].value
        assert any("clipmem ingest" in c.value for c in at.code)


def test_picking_another_run_starts_its_view_unfiltered(open_page):
    at = open_page("explore", run=TINY, truth="swapped", sort="align_f")
    widget(at.selectbox, "Run").select(PLAIN).run()
    assert not at.exception
    assert at.query_params["run"] == PLAIN and "truth" not in at.query_params
    assert at.query_params["sort"] == "align_f"  # the sort order stays
    assert count_shown(at) == 120
    assert widget(at.selectbox, "Truth tag").value == "(all)"


# ---------------------------------------------------------------- experiments on the Runs page

EXPERIMENT = "mitig"
OTHER_EXPERIMENT = "noise"
REMOVAL_EXPERIMENT = "removal"
TUNED_EXPERIMENT = "tuned"
# ids run on from the 20 shared pairs: the baseline scores pair-0000020..59, the run without its top 3 pairs (3 fewer
# candidates) pair-0000020..56, so both runs' removal-grid CLIPMem is over those 37 pairs
REMOVAL_COMMON = [f"pair-{i:07d}" for i in range(20, 57)]


@pytest.fixture(scope="module")
def experiment_backend(tmp_path_factory):
    """A backend of its own holding three runs of one experiment (baseline on two seeds, 2 captions per image),
    two of another (text noise), two of a third (a baseline and 3 pairs removed) and a run outside them; yields its
    URL and the folder of the run directories."""
    from clipmem.backend.db import make_engine, migrate
    from clipmem.backend.ingest import ingest
    from clipmem.backend.synthetic_run import write_synthetic_run
    from tests.frontend.stack import backend

    root = tmp_path_factory.mktemp("experiment_stack")
    engine = make_engine(f"sqlite:///{root / 'experiments.db'}")
    migrate(engine)
    base = {"experiment": EXPERIMENT, "text_noise": 0.0, "removal_method": None, "removal_count": 0}
    for name, seed, captions in (("mitig-c1-s0", 0, 1), ("mitig-c1-s1", 1, 1), ("mitig-c2-s0", 0, 2)):
        utility = {"i2t_r1": 0.5 + 0.05 * captions, "probe_shape": 0.6 + 0.03 * captions + 0.01 * seed}
        ingest(engine, write_synthetic_run(root / name, 20, 20, 20, 10, seed=80 + seed + captions, utility=utility,
                                           experiment={**base, "seed": seed, "captions_per_image": captions}))
    for name, noise in (("noise-n0-s0", 0.0), ("noise-n0.1-s0", 0.1)):
        ingest(engine, write_synthetic_run(root / name, 20, 20, 20, 10, seed=85 + int(noise * 10),
                                           experiment={**base, "experiment": OTHER_EXPERIMENT, "seed": 0,
                                                       "captions_per_image": 1, "text_noise": noise}))
    for name, candidates, method, count in (("removal-base-s0", 20, None, 0),
                                            ("removal-top3-s0", 17, "top-clipmem", 3)):
        ingest(engine, write_synthetic_run(root / name, candidates, 20, 20, 10, seed=87 + count,
                                           experiment={**base, "experiment": REMOVAL_EXPERIMENT, "seed": 0,
                                                       "captions_per_image": 1, "removal_method": method,
                                                       "removal_count": count}))
    for seed in (0, 1):  # the towers and from-scratch grids (issue 17): 4 settings on 2 seeds
        for lock, scratch in (("", False), ("text", False), ("image", False), ("", True)):
            ingest(engine, write_synthetic_run(
                # 120 scored pairs: every run has swapped pairs (5% of them)
                root / f"tuned-{lock or 'both'}{'-scratch' if scratch else ''}-s{seed}", 60, 60, 20, 10,
                seed=90 + 4 * seed + len(lock) + scratch,
                experiment={**base, "experiment": TUNED_EXPERIMENT, "seed": seed, "captions_per_image": 1,
                            "lock": lock, "from_scratch": scratch}))
    ingest(engine, write_synthetic_run(root / "loose", 20, 20, 20, 10, seed=89))
    engine.dispose()
    with backend(f"sqlite:///{root / 'experiments.db'}", root) as url:
        yield url, root


def plotly_array(value) -> list:
    """An array of a figure's JSON: a list, or Plotly's typed-array form {"dtype", "bdata"}."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def test_runs_page_shows_the_experiment_figures(experiment_backend, monkeypatch):
    import httpx
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from clipmem.scoring.experiment_report import figures, scratch_comparison, towers_verdict
    from tests.frontend.conftest import APP

    url, root = experiment_backend
    monkeypatch.setenv("CLIPMEM_API_URL", url)
    monkeypatch.delenv("CLIPMEM_API_TOKEN", raising=False)
    st.cache_data.clear()
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["run"] = "loose"
    at.run()
    at.switch_page("views/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="experiment_picker")
    assert picker.value == EXPERIMENT and at.query_params["experiment"] == EXPERIMENT
    detail = httpx.get(f"{url}/experiments/{EXPERIMENT}").json()
    # the figure of the captions grid, as scoring.experiment_report draws it from the endpoint's summary
    expected = figures(pd.DataFrame(detail["summary"]))["captions"]
    chart = next(c for c in at.get("plotly_chart") if c.proto.id and "experiment_captions_chart" in c.proto.id)
    shown = json.loads(chart.proto.spec)["data"]
    assert [t["name"] for t in shown] == [t.name for t in expected.data]
    for drawn, wanted in zip(shown, expected.data):
        assert plotly_array(drawn["x"]) == pytest.approx(list(wanted.x))
        assert plotly_array(drawn["y"]) == pytest.approx(list(wanted.y))
    # the per-run table: one row per run of the experiment, with its parameters and means
    table = next(d.value for d in at.dataframe if "captions_per_image" in d.value.columns)
    assert sorted(table["run"]) == ["mitig-c1-s0", "mitig-c1-s1", "mitig-c2-s0"]
    assert table.set_index("run")["mean_clipmem_raw"].to_dict() == pytest.approx(
        {r["run"]: r["mean_clipmem_raw"] for r in detail["runs"]})
    runs_table = at.dataframe[0].value
    assert runs_table.set_index("run")["experiment"].to_dict()["mitig-c2-s0"] == EXPERIMENT

    # another experiment: its figures, and the choice in the URL, which stays when another run is picked
    at.selectbox(key="experiment_picker").select(OTHER_EXPERIMENT).run()
    assert not at.exception
    assert at.query_params["experiment"] == OTHER_EXPERIMENT
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert any("experiment_text-noise_chart" in k for k in keys) and not any("experiment_captions" in k for k in keys)
    widget(at.selectbox, "Run").select("mitig-c1-s0").run()
    assert not at.exception
    assert at.query_params["run"] == "mitig-c1-s0" and at.query_params["experiment"] == OTHER_EXPERIMENT
    assert at.selectbox(key="experiment_picker").value == OTHER_EXPERIMENT

    # the removal grid: its memorization panel is the mean over the pairs both runs score, from the runs' files
    at.selectbox(key="experiment_picker").select(REMOVAL_EXPERIMENT).run()
    assert not at.exception
    chart = next(c for c in at.get("plotly_chart") if c.proto.id and "experiment_removal_chart" in c.proto.id)
    spec = json.loads(chart.proto.spec)
    assert [a["text"] for a in spec["layout"]["annotations"]][0] == "mean raw CLIPMem, pairs scored in every run"
    common = [pd.read_parquet(root / name / "scores.parquet").set_index("sample_id").loc[REMOVAL_COMMON,
                                                                                       "clipmem_raw"].mean()
              for name in ("removal-base-s0", "removal-top3-s0")]
    top = next(t for t in spec["data"] if t["name"] == "top-clipmem" and t.get("xaxis", "x") == "x")
    assert plotly_array(top["x"]) == [0.0, 3.0]
    assert plotly_array(top["y"]) == pytest.approx(common, abs=1e-7)  # float32 files, doubles in the database
    table = next(d.value for d in at.dataframe if "common_pairs" in d.value.columns)
    assert table.set_index("run")["common_pairs"].to_dict() == {"removal-base-s0": 37, "removal-top3-s0": 37}

    # the towers and from-scratch grids: their figures, the towers verdict and the scratch comparison
    at.selectbox(key="experiment_picker").select(TUNED_EXPERIMENT).run()
    assert not at.exception
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert any("experiment_towers_chart" in k for k in keys) and any("experiment_from-scratch_chart" in k
                                                                     for k in keys)
    rows = httpx.get(f"{url}/experiments/{TUNED_EXPERIMENT}").json()["runs"]
    assert len(rows) == 8 and {(r["lock"], r["from_scratch"]) for r in rows} == {
        ("", False), ("text", False), ("image", False), ("", True)}
    text = [m.value for m in at.markdown]
    lines = [line for line in towers_verdict(rows) + [scratch_comparison(rows)] if line]
    assert lines and all(line in text for line in lines)
    assert any(line.startswith("Towers, memorization of swapped pairs") and "over 2 seeds" in line for line in lines)
    st.cache_data.clear()


def test_runs_page_without_experiments_has_no_experiment_section(open_page):
    at = open_page("runs", run=PLAIN)
    assert not [s for s in at.selectbox if s.key == "experiment_picker"]
    assert "experiment" not in at.dataframe[0].value.columns
