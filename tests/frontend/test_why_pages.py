"""Why a pair is memorized (issue 18) on the dashboard: the reason badge and filters on Explore, the evidence panel
on the Sample page, the reason-by-truth table on the Runs page, and what a run scored before the evidence shows.

The pages run (Streamlit AppTest) against a backend of their own serving two made-up runs
(backend.synthetic_run): WHY, with the evidence and significance, and OLD, scored before the evidence. What they
show is checked against WHY's own files read with pandas."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from clipmem.frontend.state import ViewFilter
from clipmem.scoring.columns import REASON_LABELS, REASONS
from clipmem.scoring.rundir import RunDir
from tests.frontend.conftest import APP
from tests.frontend.stack import backend
from tests.frontend.test_pages import count_shown, widget

WHY, OLD = "why", "old"
GRID = 24


@dataclass(frozen=True)
class WhyStack:
    url: str
    scores: pd.DataFrame       # WHY's scores.parquet
    neighbours: pd.DataFrame   # WHY's neighbours.parquet
    captions: dict[str, list[str]]  # WHY's captions per sample id (samples.parquet)


@pytest.fixture(scope="module")
def why_stack(tmp_path_factory) -> WhyStack:
    from clipmem.backend.db import make_engine, migrate
    from clipmem.backend.ingest import ingest
    from clipmem.backend.synthetic_run import write_synthetic_run

    root = tmp_path_factory.mktemp("why_stack")
    database_url = f"sqlite:///{root / 'why.db'}"
    old = write_synthetic_run(root / OLD, 60, 60, 100, 40, seed=3, significance=True, evidence=False)
    why = write_synthetic_run(root / WHY, 60, 60, 100, 40, seed=11, significance=True, optional_scores=True)
    engine = make_engine(database_url)
    try:
        migrate(engine)
        ingest(engine, old, name=OLD)
        ingest(engine, why, name=WHY)
    finally:
        engine.dispose()
    files = RunDir(why)
    samples = pd.read_parquet(files.samples)
    with backend(database_url, root) as url:
        yield WhyStack(url, pd.read_parquet(files.scores), pd.read_parquet(files.neighbours),
                       {s: list(c) for s, c in zip(samples["sample_id"], samples["captions"])})


@pytest.fixture()
def open_why(why_stack, monkeypatch):
    """open_why(page, **query_params) -> a finished AppTest run of that page against the WHY/OLD backend."""
    monkeypatch.setenv("CLIPMEM_API_URL", why_stack.url)
    st.cache_data.clear()

    def _open(page: str, **params: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params.update(params)
        at.run()
        if page != "explore":
            at.query_params.update(params)
            at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield _open
    st.cache_data.clear()


def shown_ids(at) -> list[str]:
    """The sample ids of Explore's tiles, in order (from their Open links)."""
    return [parse_qs(link.proto.query_string)["sample"][0] for link in at.get("page_link")
            if "sample=" in link.proto.query_string]


def tile_lines(at) -> list[str]:
    return [md.value for md in at.markdown if md.value.startswith("CLIPMem")]


def plain(text: str) -> str:
    """Markdown as the user reads it: escapes undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", text))


def badge_labels(lines: list[str]) -> list[str]:
    return [plain(m.group(1)) for line in lines if (m := re.search(r"-badge\[:material/help: ([^\]]+)\]", line))]


def listing(api_url: str, **params) -> dict:
    import httpx

    response = httpx.get(f"{api_url}/runs/{WHY}/samples", params={"limit": GRID, **params}, timeout=30)
    response.raise_for_status()
    return response.json()


# ---------------------------------------------------------------- the view state

def test_the_reason_round_trips_through_the_url_and_a_bad_one_is_dropped():
    flt = ViewFilter(run="demo", reason="atypical_image", memorized=True)
    assert flt.to_params() == {"run": "demo", "memorized": "true", "reason": "atypical_image"}
    assert ViewFilter.from_params(flt.to_params()) == flt
    assert ViewFilter.from_params({"reason": "wrong"}).reason is None
    # a run scored before the evidence has no miscaption: its filter drops the reason
    assert flt.with_scores(["clipmem", "clipmem_q"]) == ViewFilter(run="demo", memorized=True)
    assert flt.with_scores(["clipmem", "clipmem_q", "miscaption"]) is flt
    one_click = ViewFilter(run="demo", truth="swapped", size=48).likely_miscaptioned()
    assert one_click == ViewFilter(run="demo", truth="swapped", size=48, memorized=True, reason="miscaptioned",
                                   sort="miscaption", order="desc")
    assert one_click.describe() == "truth swapped, flagged memorized, reason mis-captioned"


# ---------------------------------------------------------------- Explore

def test_each_tile_carries_its_reason_and_the_reason_filter_shows_the_backends_listing(open_why, why_stack):
    scores = why_stack.scores.set_index("sample_id")
    at = open_why("explore", run=WHY)
    ids = shown_ids(at)
    assert len(ids) == GRID
    assert badge_labels(tile_lines(at)) == [REASON_LABELS[r] for r in scores.loc[ids, "reason"]]
    assert widget(at.selectbox, "Reason").options == ["(all)", *(REASON_LABELS[r] for r in REASONS)]

    widget(at.selectbox, "Reason").select("atypical_image").run()
    assert not at.exception
    assert at.query_params["reason"] == "atypical_image"
    wanted = scores[scores["reason"] == "atypical_image"].sort_values("clipmem", ascending=False)
    assert 0 < len(wanted) < len(scores)
    assert count_shown(at) == len(wanted)
    assert shown_ids(at) == [i["sample_id"] for i in listing(why_stack.url, reason="atypical_image")["items"]] \
        == list(wanted.index[:GRID])
    assert set(badge_labels(tile_lines(at))) == {"atypical image"}


def test_one_click_shows_the_memorized_and_likely_miscaptioned_pairs_most_likely_first(open_why, why_stack):
    scores = why_stack.scores
    wanted = scores[scores["memorized"] & (scores["reason"] == "miscaptioned")].sort_values("miscaption",
                                                                                              ascending=False)
    assert 0 < len(wanted) < (scores["reason"] == "miscaptioned").sum(), "WHY has no such pairs to tell apart"
    at = open_why("explore", run=WHY)
    at.button(key="likely_miscaptioned").click().run()
    assert not at.exception
    assert {k: at.query_params[k] for k in ("memorized", "reason", "sort")} == {
        "memorized": "true", "reason": "miscaptioned", "sort": "miscaption"}
    assert count_shown(at) == len(wanted)
    assert shown_ids(at) == list(wanted["sample_id"][:GRID])
    assert [re.search(r"miscaption\u00a0([\d.]+)", line).group(1) for line in tile_lines(at)] == [
        f"{v:.2f}" for v in wanted["miscaption"][:GRID]]
    # the sidebar shows the filter the click set
    assert widget(at.selectbox, "Reason").value == "miscaptioned"
    assert at.checkbox(key="flt_explore_memorized").value

    at.button(key="likely_miscaptioned_off").click().run()
    assert "reason" not in at.query_params and "memorized" not in at.query_params
    assert count_shown(at) == len(scores)


def test_a_run_scored_before_the_evidence_has_no_reason_filter_or_badge(open_why):
    at = open_why("explore", run=OLD, reason="miscaptioned")
    assert count_shown(at) == 120
    assert not [s for s in at.selectbox if s.label == "Reason"]
    assert not [b for b in at.button if b.key == "likely_miscaptioned"]
    assert any("scored before the evidence" in c.value for c in at.sidebar.caption)
    assert not badge_labels(tile_lines(at))


# ---------------------------------------------------------------- Sample

def test_the_evidence_panel_shows_the_reason_drops_and_neighbours_of_the_pair(open_why, why_stack):
    scores = why_stack.scores
    pair = scores.loc[scores["miscaption"].idxmax()]
    at = open_why("sample", run=WHY, sample=pair["sample_id"])
    assert "Why is it memorized?" in [h.value for h in at.header]
    text = [plain(md.value) for md in at.markdown]
    reason_line = next(t for t in text if "miscaption **" in t)
    assert f"{REASON_LABELS[pair['reason']]}] miscaption **{pair['miscaption']:.3f}**" in reason_line
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Image-swap drop"] == f"{pair['mem_swap_image']:.4f}"
    assert metrics["Text-swap drop"] == f"{pair['mem_swap_text']:.4f}"
    assert metrics["A_f − A_g (raw CLIPMem)"] == f"{pair['clipmem_raw']:.4f}"
    assert metrics["Nearest other image"] == f"{pair['image_neighbour_sim']:.3f}"
    assert metrics["Neighbours' captions agree"] == f"{pair['neighbour_agreement']:.3f}"
    assert metrics["Neighbours' captions fit it better by"] == f"{pair['neighbour_caption_margin']:.3f}"

    rows = why_stack.neighbours[why_stack.neighbours["sample_id"] == pair["sample_id"]].sort_values("rank")
    images = rows[rows["kind"] == "image"]
    assert len(images) > 0
    # each nearest image with its first caption and how well that caption agrees with this pair's, in rank order
    quoted = [t[1:-1] for t in text if t.startswith("“") and t.endswith("”")]
    assert quoted == [why_stack.captions[n][0] for n in images["neighbour_id"]]
    agrees = [m.group(1) for t in text if (m := re.search(r"caption agrees \*\*([-\d.]+)\*\*", t))]
    assert agrees == [f"{a:.2f}" for a in images["agreement"]]
    # the nearest captions, as a table
    table = next(d.value for d in at.dataframe if "image agrees" in d.value.columns)
    captions = rows[rows["kind"] == "caption"]
    assert list(table["caption"]) == [why_stack.captions[n][0] for n in captions["neighbour_id"]]
    assert list(table["similarity"]) == pytest.approx(list(captions["similarity"]))
    assert list(table["image agrees"]) == pytest.approx(list(captions["agreement"]))


def test_the_sample_page_of_a_run_scored_before_the_evidence_says_so(open_why):
    at = open_why("explore", run=OLD)
    at = open_why("sample", run=OLD, sample=shown_ids(at)[0])
    assert any("scored before clipmem stored the evidence" in i.value for i in at.info)
    assert not at.error
    assert not [m for m in at.metric if m.label == "Image-swap drop"]


# ---------------------------------------------------------------- Runs

def test_the_reason_by_truth_table_counts_the_runs_pairs(open_why, why_stack):
    scores = why_stack.scores

    truths = sorted(scores["truth"].unique(), key=lambda t: (t != "clean", t))

    def expected(frame: pd.DataFrame) -> pd.DataFrame:
        """Every reason and every truth tag of the run's scored pairs, zeros included."""
        table = pd.crosstab(frame["reason"], frame["truth"]).reindex(index=list(REASONS), columns=truths,
                                                                     fill_value=0)
        table["all"] = table.sum(axis=1)
        table.index = [REASON_LABELS[r] for r in table.index]
        return table

    def shown(at) -> pd.DataFrame:
        table = next(d.value for d in at.dataframe if "all" in d.value.columns)
        table.index = list(table.index)
        table.columns = list(table.columns)
        return table.astype(int)

    at = open_why("runs", run=WHY)
    assert f"Why memorized, against the truth · {WHY}" in [h.value for h in at.header]
    pd.testing.assert_frame_equal(shown(at), expected(scores), check_names=False)
    at.toggle(key="reasons_memorized_only").set_value(True).run()
    assert not at.exception
    memorized = scores[scores["memorized"]]
    assert 0 < len(memorized) < len(scores)
    pd.testing.assert_frame_equal(shown(at), expected(memorized), check_names=False)

    at = open_why("runs", run=OLD)
    assert any("scored before the evidence" in i.value for i in at.info)
