"""The backend calls the pages make, cached with `st.cache_data`, returning plain Python data.

Every call carries the token of the browser session making it (`session_token`, set by signing in), and
every cached answer is kept per token (`per_credential`): a visitor never gets data fetched with another
visitor's credentials, and the dashboard process holds no token of its own.

Runs are named by their run name and pairs by their sample id, as in the backend's URLs.
TTLs: a run's summary, histograms, maps and detection change only when it is re-ingested
(5 min); the run list and pages of pairs are short-lived (30 s), and everything that shows
or filters by user tags is cleared at once by `tags_changed`; images and neighbours never
change (1 h).
"""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import quote

import pandas as pd
import streamlit as st

from clipmem.frontend.client import ApiClient, BackendError, api_url
from clipmem.frontend.state import ViewFilter

FRESH = 30
RUN = 300
FOREVER = 3600
EXPORT_TIMEOUT_S = 600  # a million-pair CSV takes a while to write


TOKEN_KEY = "_clipmem_token"  # in st.session_state: the token this browser session signed in with


def session_token() -> str | None:
    """The token this browser session signed in with; None for a visitor who has not signed in."""
    return st.session_state.get(TOKEN_KEY)


def sign_in(token: str) -> dict:
    """Check a token against the backend (GET /access) and, when the backend knows it, keep it for this browser
    session; returns what it allows. Raises Unauthorized for a token the backend does not know."""
    probe = ApiClient(api_url(), token)
    try:
        allowed = probe.get_json("/access")
    finally:
        probe.close()
    st.session_state[TOKEN_KEY] = token
    return allowed


def sign_out() -> None:
    st.session_state.pop(TOKEN_KEY, None)


def client() -> ApiClient:
    """A client for the backend named by CLIPMEM_API_URL, sending this browser session's token."""
    return _client(api_url(), session_token())


@st.cache_resource(show_spinner=False, max_entries=64)
def _client(base_url: str, token: str | None) -> ApiClient:
    return ApiClient(base_url, token)


def _credential() -> str:
    """What cached answers are keyed by: a digest of the session's token ("" without one)."""
    token = session_token()
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def per_credential(ttl: int, max_entries: int | None = None) -> Callable:
    """`st.cache_data` whose key also holds the calling session's credential, so an answer fetched with one
    token is only ever returned to sessions holding that token (anonymous visitors share theirs only with
    each other). `.clear()` clears the function's answers for every credential."""

    def decorate(fn: Callable) -> Callable:
        def keyed(credential: str, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)  # fn's client() sends the token `credential` was made from

        # st.cache_data tells functions apart by module and qualified name: each wrapped function its own
        keyed.__module__, keyed.__qualname__, keyed.__name__ = fn.__module__, fn.__qualname__, fn.__name__
        cached = st.cache_data(ttl=ttl, show_spinner=False, max_entries=max_entries)(keyed)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return cached(_credential(), *args, **kwargs)

        call.clear = cached.clear
        return call

    return decorate


@per_credential(ttl=FRESH)
def access() -> dict:
    """What this session's token allows: {"token_required", "read", "write"}."""
    return client().get_json("/access")


def _run_path(run: str) -> str:
    return f"/runs/{quote(run, safe='')}"


def _sample_path(sample_id: str) -> str:
    return quote(sample_id, safe="/")


def filter_query(flt: ViewFilter) -> dict[str, Any]:
    """The backend's filter parameters for a view filter."""
    params: dict[str, Any] = {"split": flt.split, "truth": flt.truth, "tag": flt.tag, "caption": flt.q,
                              "reason": flt.reason}
    if flt.lo is not None:
        params[f"{flt.score}_min"] = flt.lo
    if flt.hi is not None:
        params[f"{flt.score}_max"] = flt.hi
    if flt.memorized:
        params["memorized"] = "true"
    if flt.clipmem_q_max is not None:
        # the score range may bound clipmem_q too: both apply
        bound = params.get("clipmem_q_max")
        params["clipmem_q_max"] = flt.clipmem_q_max if bound is None else min(bound, flt.clipmem_q_max)
    return params


# ---------------------------------------------------------------- runs

@per_credential(ttl=FRESH)
def runs() -> list[dict]:
    """Every run's summary, newest first."""
    return client().get_json("/runs")


@per_credential(ttl=RUN)
def run(name: str) -> dict:
    """A run's settings, utility of f and g, score names and score summary."""
    return client().get_json(_run_path(name))


def delete_run(name: str) -> None:
    client().delete(_run_path(name))
    st.cache_data.clear()  # also the experiments the run was part of


@per_credential(ttl=RUN)
def null(name: str) -> dict:
    """The run's null: the raw scores of its S_E pairs, which neither model trained on, per direction they are
    the null of ("by_key": {null_for: {"values", "mean", "sd"}}), with the run's fdr and null_pairs. Runs
    scored before significance testing have none (NotFound)."""
    return client().get_json(f"{_run_path(name)}/null")


@per_credential(ttl=RUN)
def detection(name: str) -> dict:
    return client().get_json(f"{_run_path(name)}/detection")


@per_credential(ttl=RUN)
def encoders(name: str) -> dict:
    """Tower scores compared (correlation, means per truth tag), LayerMem per tower, block and truth tag,
    and the sample ids whose own layer curve is stored."""
    return client().get_json(f"{_run_path(name)}/encoders")


@per_credential(ttl=FOREVER)
def layer_curve(run_name: str, sample_id: str) -> dict:
    """One pair's memorization per block of each tower: {"image": [...], "text": [...]}."""
    return client().get_json(f"{_run_path(run_name)}/encoders/curves/{_sample_path(sample_id)}")["curves"]


@per_credential(ttl=RUN)
def comparison(run_a: str, run_b: str, score: str, k: int) -> dict:
    return client().get_json("/comparisons", run_a=run_a, run_b=run_b, score=score, k=k)


# ---------------------------------------------------------------- experiments

@per_credential(ttl=FRESH)
def experiments() -> list[dict]:
    """Every experiment with runs in the backend: name, runs, seeds, grids."""
    return client().get_json("/experiments")


@per_credential(ttl=FRESH)
def experiment(name: str) -> dict:
    """An experiment's per-run rows ("runs") and its summary over seeds ("summary": grid, method, value, metric,
    mean, std, n)."""
    return client().get_json(f"/experiments/{quote(name, safe='')}")


# ---------------------------------------------------------------- pairs

@per_credential(ttl=FRESH)
def samples(flt: ViewFilter, cursor: str | None) -> dict:
    """One page of the filter's pairs: {"items", "total", "next_cursor"}."""
    return client().get_json(f"{_run_path(flt.run)}/samples", **filter_query(flt), sort=flt.sort, order=flt.order,
                             limit=flt.size, cursor=cursor)


@per_credential(ttl=FRESH)
def sample(run_name: str, sample_id: str) -> dict:
    return client().get_json(f"{_run_path(run_name)}/samples/{_sample_path(sample_id)}")


@per_credential(ttl=FOREVER, max_entries=500)
def image(run_name: str, sample_id: str, size: int) -> bytes:
    return client().get_bytes(f"{_run_path(run_name)}/images/{_sample_path(sample_id)}", size=size)


@per_credential(ttl=FOREVER, max_entries=200)
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


@per_credential(ttl=FOREVER)
def neighbours(run_name: str, sample_id: str, k: int) -> dict:
    return client().get_json(f"{_run_path(run_name)}/neighbours/{_sample_path(sample_id)}", k=k)


@per_credential(ttl=RUN)
def evidence(run_name: str, sample_id: str) -> dict:
    """Why the pair is memorized: its reason and miscaption, the signals behind them, the with-versus-without and
    encoder-swap drops, and its nearest images and captions under the model that did not train on it
    ("image_neighbours", "caption_neighbours"; "available" False for runs scored before the evidence)."""
    return client().get_json(f"{_run_path(run_name)}/samples/{_sample_path(sample_id)}/evidence")


@per_credential(ttl=RUN)
def trajectory(run_name: str, sample_id: str) -> dict:
    """A scored pair's A_f, A_g and raw scores after each tracked epoch ("points", each with the null's 95th
    percentile "null_p95"), and its mem_epoch, mem_auc, mem_variability; "available" False for untracked runs."""
    return client().get_json(f"{_run_path(run_name)}/samples/{_sample_path(sample_id)}/trajectory")


@per_credential(ttl=RUN)
def run_trajectory(run_name: str) -> dict:
    """Mean raw CLIPMem with its interval per truth tag and tracked epoch ("curves") and the null's 95th percentile
    per epoch and direction ("null"); "available" False for untracked runs."""
    return client().get_json(f"{_run_path(run_name)}/trajectory")


@per_credential(ttl=RUN)
def dynamics(run_name: str, max_points: int) -> pd.DataFrame:
    """The training-dynamics map: one row per scored pair (a uniform sample of max_points) with sample_id, truth,
    mean_raw, variability and mem_epoch. attrs: "available", "message", "total" (the run's pairs), "epochs"."""
    body = client().get_json(f"{_run_path(run_name)}/dynamics", max_points=max_points)
    frame = pd.DataFrame({key: body[key] for key in ("sample_id", "truth", "mean_raw", "variability")})
    frame["mem_epoch"] = pd.to_numeric(pd.Series(body["mem_epoch"], dtype="object"), errors="coerce")
    frame.attrs.update({key: body[key] for key in ("available", "message", "total", "epochs")})
    return frame


@per_credential(ttl=RUN)
def reasons(run_name: str, memorized_only: bool) -> dict:
    """Counts of the run's scored pairs per reason and truth tag (only those flagged memorized, when asked)."""
    return client().get_json(f"{_run_path(run_name)}/reasons", memorized_only=memorized_only)


@per_credential(ttl=RUN)
def histogram(run_name: str, score: str, bins: int = 40, by_truth: bool = False) -> dict:
    """Counts of a score over all the run's scored pairs, in equal-width bins spanning its range:
    lo, hi, edges, counts, by_truth (per truth tag, when asked) and matched."""
    return client().get_json(f"{_run_path(run_name)}/histogram", score=score, bins=bins, by_truth=by_truth)


@per_credential(ttl=RUN)
def embedding_map(run_name: str, modality: str, score: str, max_points: int) -> pd.DataFrame:
    """One row per embedded pair (a uniform sample of max_points): sample_id, split, truth, the score, and
    its position on f's map (f_x, f_y) and on g's (g_x, g_y). attrs["total"]: embedded pairs in the run."""
    body = client().get_json(f"{_run_path(run_name)}/maps", modality=modality, score=score, max_points=max_points)
    frame = pd.DataFrame({key: body[key] for key in ("sample_id", "split", "truth", "f_x", "f_y", "g_x", "g_y")})
    frame[score] = pd.to_numeric(pd.Series(body["score_value"], dtype="object"), errors="coerce")
    frame.attrs["total"] = body["total_points"]
    frame.attrs["method"] = body["method"]
    return frame


@per_credential(ttl=FRESH)
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
