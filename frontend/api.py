"""The backend calls the pages make, cached with `st.cache_data`, returning plain Python data.

Runs are named by their run name and pairs by their sample id, as in the backend's URLs.
TTLs: a run's summary, histograms, maps and detection change only when it is re-ingested
(5 min); the run list and pages of pairs are short-lived (30 s), and everything that shows
or filters by user tags is cleared at once by `tags_changed`; images and neighbours never
change (1 h).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pandas as pd
import streamlit as st

from frontend.client import ApiClient, BackendError, api_token, api_url
from frontend.state import ViewFilter

FRESH = 30
RUN = 300
FOREVER = 3600
EXPORT_TIMEOUT_S = 600  # a million-pair CSV takes a while to write


def client() -> ApiClient:
    """The process's client for the backend named by CLIPMEM_API_URL / CLIPMEM_API_TOKEN."""
    return _client(api_url(), api_token())


@st.cache_resource(show_spinner=False)
def _client(base_url: str, token: str | None) -> ApiClient:
    return ApiClient(base_url, token or "")


def _run_path(run: str) -> str:
    return f"/runs/{quote(run, safe='')}"


def _sample_path(sample_id: str) -> str:
    return quote(sample_id, safe="/")


def filter_query(flt: ViewFilter) -> dict[str, Any]:
    """The backend's filter parameters for a view filter."""
    params: dict[str, Any] = {"split": flt.split, "truth": flt.truth, "tag": flt.tag, "caption": flt.q}
    if flt.lo is not None:
        params[f"{flt.score}_min"] = flt.lo
    if flt.hi is not None:
        params[f"{flt.score}_max"] = flt.hi
    return params


# ---------------------------------------------------------------- runs

@st.cache_data(ttl=FRESH, show_spinner=False)
def runs() -> list[dict]:
    """Every run's summary, newest first."""
    return client().get_json("/runs")


@st.cache_data(ttl=RUN, show_spinner=False)
def run(name: str) -> dict:
    """A run's settings, utility of f and g, score names and score summary."""
    return client().get_json(_run_path(name))


def delete_run(name: str) -> None:
    client().delete(_run_path(name))
    st.cache_data.clear()  # also the experiments the run was part of


@st.cache_data(ttl=RUN, show_spinner=False)
def detection(name: str) -> dict:
    return client().get_json(f"{_run_path(name)}/detection")


@st.cache_data(ttl=RUN, show_spinner=False)
def encoders(name: str) -> dict:
    """Tower scores compared (correlation, means per truth tag), LayerMem per tower, block and truth tag,
    and the sample ids whose own layer curve is stored."""
    return client().get_json(f"{_run_path(name)}/encoders")


@st.cache_data(ttl=FOREVER, show_spinner=False)
def layer_curve(run_name: str, sample_id: str) -> dict:
    """One pair's memorization per block of each tower: {"image": [...], "text": [...]}."""
    return client().get_json(f"{_run_path(run_name)}/encoders/curves/{_sample_path(sample_id)}")["curves"]


@st.cache_data(ttl=RUN, show_spinner=False)
def comparison(run_a: str, run_b: str, score: str, k: int) -> dict:
    return client().get_json("/comparisons", run_a=run_a, run_b=run_b, score=score, k=k)


# ---------------------------------------------------------------- experiments

@st.cache_data(ttl=FRESH, show_spinner=False)
def experiments() -> list[dict]:
    """Every experiment with runs in the backend: name, runs, seeds, grids."""
    return client().get_json("/experiments")


@st.cache_data(ttl=FRESH, show_spinner=False)
def experiment(name: str) -> dict:
    """An experiment's per-run rows ("runs") and its summary over seeds ("summary": grid, method, value, metric,
    mean, std, n)."""
    return client().get_json(f"/experiments/{quote(name, safe='')}")


# ---------------------------------------------------------------- pairs

@st.cache_data(ttl=FRESH, show_spinner=False)
def samples(flt: ViewFilter, cursor: str | None) -> dict:
    """One page of the filter's pairs: {"items", "total", "next_cursor"}."""
    return client().get_json(f"{_run_path(flt.run)}/samples", **filter_query(flt), sort=flt.sort, order=flt.order,
                             limit=flt.size, cursor=cursor)


@st.cache_data(ttl=FRESH, show_spinner=False)
def sample(run_name: str, sample_id: str) -> dict:
    return client().get_json(f"{_run_path(run_name)}/samples/{_sample_path(sample_id)}")


@st.cache_data(ttl=FOREVER, show_spinner=False, max_entries=500)
def image(run_name: str, sample_id: str, size: int) -> bytes:
    return client().get_bytes(f"{_run_path(run_name)}/images/{_sample_path(sample_id)}", size=size)


@st.cache_data(ttl=FOREVER, show_spinner=False, max_entries=200)
def images(run_name: str, sample_ids: tuple[str, ...], size: int) -> dict[str, bytes | str]:
    """Many thumbnails fetched in parallel: sample id -> image bytes, or why that one failed."""
    api = client()

    def one(sample_id: str) -> bytes | str:
        try:
            return api.get_bytes(f"{_run_path(run_name)}/images/{_sample_path(sample_id)}", size=size)
        except BackendError as err:
            return err.message

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(sample_ids, pool.map(one, sample_ids)))


@st.cache_data(ttl=FOREVER, show_spinner=False)
def neighbours(run_name: str, sample_id: str, k: int) -> dict:
    return client().get_json(f"{_run_path(run_name)}/neighbours/{_sample_path(sample_id)}", k=k)


@st.cache_data(ttl=RUN, show_spinner=False)
def histogram(run_name: str, score: str, bins: int = 40, by_truth: bool = False) -> dict:
    """Counts of a score over all the run's scored pairs, in equal-width bins spanning its range:
    lo, hi, edges, counts, by_truth (per truth tag, when asked) and matched."""
    return client().get_json(f"{_run_path(run_name)}/histogram", score=score, bins=bins, by_truth=by_truth)


@st.cache_data(ttl=RUN, show_spinner=False)
def embedding_map(run_name: str, modality: str, score: str, max_points: int) -> pd.DataFrame:
    """One row per embedded pair (a uniform sample of max_points): sample_id, split, truth, the score, and
    its position on f's map (f_x, f_y) and on g's (g_x, g_y). attrs["total"]: embedded pairs in the run."""
    body = client().get_json(f"{_run_path(run_name)}/maps", modality=modality, score=score, max_points=max_points)
    frame = pd.DataFrame({key: body[key] for key in ("sample_id", "split", "truth", "f_x", "f_y", "g_x", "g_y")})
    frame[score] = pd.to_numeric(pd.Series(body["score_value"], dtype="object"), errors="coerce")
    frame.attrs["total"] = body["total_points"]
    frame.attrs["method"] = body["method"]
    return frame


@st.cache_data(ttl=FRESH, show_spinner=False)
def user_tags(run_name: str) -> list[dict]:
    """[{"tag", "pairs"}] for every user tag of the run."""
    return client().get_json(f"{_run_path(run_name)}/tags")


def add_tag(run_name: str, sample_id: str, tag: str) -> dict:
    result = client().post_json(f"{_run_path(run_name)}/tags/{quote(tag, safe='')}", {"sample_ids": [sample_id]})
    tags_changed()
    return result


def remove_tag(run_name: str, sample_id: str, tag: str) -> dict:
    result = client().delete(f"{_run_path(run_name)}/tags/{quote(tag, safe='')}", sample_id=[sample_id])
    tags_changed()
    return result


def tags_changed() -> None:
    """Everything that shows or filters by user tags is stale after a tag change."""
    for cached in (samples, sample, user_tags):
        cached.clear()


# ---------------------------------------------------------------- export

def export_selection(flt: ViewFilter, limit: int | None = None) -> bytes:
    """The filter's pairs (the first `limit` in its sort order) as CSV, with every score."""
    return client().get_bytes(f"{_run_path(flt.run)}/exports/selection.csv", timeout=EXPORT_TIMEOUT_S,
                              **filter_query(flt), sort=flt.sort, order=flt.order, limit=limit)


def export_open_clip(flt: ViewFilter, model: str, limit: int | None = None) -> bytes:
    """Model f's (or g's) training data minus the filter's pairs (the first `limit` in its sort order), as
    open_clip's training CSV."""
    return client().get_bytes(f"{_run_path(flt.run)}/exports/open_clip.csv", timeout=EXPORT_TIMEOUT_S,
                              **filter_query(flt), sort=flt.sort, order=flt.order, limit=limit, model=model)
