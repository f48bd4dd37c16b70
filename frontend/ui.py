"""Streamlit pieces every page shares: signing in, showing backend errors, the run picker, the filter sidebar,
badges."""

from __future__ import annotations

import html
import time
from dataclasses import replace
from typing import Any, Callable, TypeVar

import streamlit as st

from clipmem.frontend import api, charts
from clipmem.frontend.client import BackendError, BackendUnreachable, NotFound, Unauthorized, api_url
from clipmem.frontend.state import (FILTER_KEYS, ORDERS, PAGE_SIZES, PAGING_KEYS, Q_SCORE, Paging, ViewFilter,
                                    format_probability, format_score)
from clipmem.scoring.columns import REASON_LABELS, REASONS, SCORED_SPLITS

T = TypeVar("T")

SAVED_PARAMS = "_clipmem_view_params"    # the last run, filter and sample seen, carried across page switches
ALL = "(all)"
RUN_PICKER = "run_picker"
FIRST_PAINT_DONE = "_clipmem_first_paint_done"
FIRST_PAINT_S = 0.4
# the query params each page takes over from the last view when it is opened without any
CARRIED = {"explore": FILTER_KEYS, "export": FILTER_KEYS, "encoders": ("run",), "runs": ("run", "experiment"),
           "sample": ("run", "sample")}
# query params that do not belong to a run: they stay when another run is picked
RUN_INDEPENDENT = ("experiment",)
SCORE_HELP = ("`_f` = the model trained with the pair, `_g` = the model trained without it. clipmem and "
              "clipmem_contrastive are scaled to [0, 1] over the run; `_raw` are the unscaled differences.")


# ---------------------------------------------------------------- signing in

def require_access() -> dict:
    """Called before every page: what this browser session may do ({"token_required", "read", "write"}). When the
    backend needs a token, a visitor who has not given one this session sees the sign-in form and nothing else;
    the dashboard never acts with credentials of its own."""
    allowed = fetch(api.access)
    if not allowed["read"]:
        sign_in_form()
    if allowed["token_required"]:
        side = st.sidebar
        side.caption(":material/lock_open: Signed in · " + ("may tag pairs and delete runs" if allowed["write"]
                                                           else "read only"))
        if side.button("Sign out", icon=":material/logout:", key="sign_out"):
            api.sign_out()
            st.rerun()
    return allowed


def can_write() -> bool:
    """Whether this session's token may change the database (tag pairs, delete runs)."""
    return bool(fetch(api.access)["write"])


def sign_in_form(notice: str | None = None) -> None:
    """The form that asks for a token; stops the page."""
    st.title("Sign in", anchor=False)
    st.markdown(f"The clipmem backend at `{api_url().replace('`', '')}` needs a token. Give the read token "
                "(`CLIPMEM_API_TOKEN`) to browse, or the write token (`CLIPMEM_API_WRITE_TOKEN`) to also tag pairs "
                "and delete runs. It is kept for this browser tab only, until you sign out or reload.")
    if notice:
        st.warning(notice, icon=":material/lock:")
    with st.form("sign_in", clear_on_submit=True):
        token = st.text_input("Token", type="password", key="sign_in_token")
        submitted = st.form_submit_button("Sign in", icon=":material/login:", key="sign_in_submit")
    if submitted and token.strip():
        try:
            api.sign_in(token.strip())
        except Unauthorized:
            st.error("The backend does not accept this token.", icon=":material/key_off:")
        except BackendError as err:
            show_backend_error(err)
        else:
            st.rerun()
    st.stop()


# ---------------------------------------------------------------- errors

def show_backend_error(err: BackendError) -> None:
    if isinstance(err, Unauthorized):
        # the backend's tokens changed since this session learnt what it may do: ask for a token again
        had_token = api.session_token() is not None
        api.sign_out()
        api.access.clear()
        sign_in_form("The backend no longer accepts the token this tab signed in with; sign in again."
                     if had_token else None)
    if isinstance(err, BackendUnreachable):
        st.error("**The clipmem backend is not reachable.** " + err.message, icon=":material/cloud_off:")
        st.markdown("To start the stack on this machine, in two terminals:")
        st.code("clipmem ingest RUN_DIR      # once per finished run\n"
                "clipmem serve               # the backend, on http://127.0.0.1:8000", language="bash")
    elif isinstance(err, NotFound):
        st.warning(err.message, icon=":material/search_off:")
    else:
        st.error(err.message, icon=":material/error:")


def fetch(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the backend for what the page cannot do without; on failure explain why and stop the page."""
    try:
        return fn(*args, **kwargs)
    except BackendError as err:
        show_backend_error(err)
        st.stop()
        raise  # st.stop() raises; this line is never reached


def fetch_part(fn: Callable[..., T], *args: Any, what: str = "", **kwargs: Any) -> T | None:
    """Call the backend for one part of a page; on failure explain it in place and let the rest render."""
    try:
        return fn(*args, **kwargs)
    except BackendError as err:
        if what:
            err = type(err)(f"Could not load {what}. {err.message}", err.status)
        show_backend_error(err)
        return None


# ---------------------------------------------------------------- view state in the URL

def carry_view_params(page: str) -> None:
    """Called before each page runs: a page opened without its query params (a switch in the sidebar keeps
    at most the run in the URL) takes them from the last view, so the run, the filter and the pair follow
    the user from page to page."""
    st.session_state["_clipmem_page"] = page
    saved: dict = st.session_state.get(SAVED_PARAMS, {})
    keys = CARRIED.get(page, ())
    url_run = st.query_params.get("run")
    if saved and not any(k in st.query_params for k in keys if k != "run") and url_run in (None, saved.get("run")):
        restore = {k: v for k, v in saved.items() if k in keys and k not in st.query_params}
        if restore:
            st.query_params.update(restore)
    remember_params()


def remember_params() -> None:
    """Save the URL's run, filter and sample for the next page switch."""
    page = st.session_state.get("_clipmem_page")
    current = {k: st.query_params.get(k) for k in st.query_params if k not in PAGING_KEYS}
    saved: dict = dict(st.session_state.get(SAVED_PARAMS, {}))
    if current.get("run") and current.get("run") != saved.get("run"):
        saved = {}  # another run: its filter and sample do not carry over
    if page in ("explore", "export"):
        saved = {k: v for k, v in saved.items() if k not in FILTER_KEYS}  # this page's URL is the whole filter
    saved.update(current)
    st.session_state[SAVED_PARAMS] = saved


def set_params(flt: ViewFilter, paging: Paging | None = None) -> None:
    """Replace the URL's query params with this filter and page position."""
    params: dict[str, Any] = flt.to_params()
    if paging is not None:
        params.update(paging.to_params())
    st.query_params.from_dict(params)
    remember_params()


def explore_params(run_name: str) -> dict[str, str]:
    """The query params of the last Explore view of this run, for links back to it."""
    saved = st.session_state.get(SAVED_PARAMS, {})
    params = {k: v for k, v in saved.items() if k in FILTER_KEYS and saved.get("run") == run_name}
    params["run"] = run_name
    return params


# ---------------------------------------------------------------- run picker

def pick_run(page: str, draw: bool = True) -> dict:
    """The run the page shows (from the URL, else the newest) and its detail; draws the sidebar's run picker
    unless `draw` is False (the page then calls `run_picker` itself). Stops the page with a how-to when the
    backend holds no runs."""
    runs = fetch(api.runs)
    if not runs:
        st.info("The backend holds no runs yet. Score a run and ingest it, then reload this page:",
                icon=":material/inbox:")
        st.code("clipmem run --out runs/demo          # train f and g and score (synthetic data)\n"
                "clipmem ingest runs/demo             # load it into the backend's database", language="bash")
        st.stop()
    names = [r["name"] for r in runs]
    wanted = ViewFilter.from_params(st.query_params).run
    if wanted is not None and wanted not in names:
        st.warning(f"The backend has no run named “{wanted}” (deleted, or a link from another database); "
                   "showing the newest run instead.", icon=":material/search_off:")
    current = wanted if wanted in names else names[0]
    # set on every run: the picker of another page is another widget, which would start at the first (newest)
    # run, whatever the key still holds from the page before
    st.session_state[RUN_PICKER] = current
    if st.query_params.get("run") != current:
        st.query_params["run"] = current
        remember_params()
    if draw:
        run_picker(page)
    return fetch(api.run, current)


def run_picker(page: str) -> None:
    """The sidebar's run selector; choosing a run shows it from scratch (unfiltered, first page)."""
    runs = fetch(api.runs)
    by_name = {r["name"]: r for r in runs}

    def _on_change() -> None:
        chosen = st.session_state[RUN_PICKER]
        old = ViewFilter.from_params(st.query_params)
        # a new run starts unfiltered; the sort order and page size stay
        fresh = ViewFilter(run=chosen, sort=old.sort, order=old.order, size=old.size)
        kept = {k: st.query_params[k] for k in RUN_INDEPENDENT if k in CARRIED.get(page, ()) and k in st.query_params}
        st.query_params.from_dict(fresh.to_params() if page in ("explore", "export") else {"run": chosen, **kept})
        remember_params()

    st.sidebar.selectbox("Run", list(by_name), key=RUN_PICKER, on_change=_on_change,
                         format_func=lambda n: f"{n} · {by_name[n]['n_scored']:,} scored pairs",
                         help="Every run ingested into the backend, newest first.")


def pause_for_first_paint() -> None:
    """Once per session, after the main content: give the browser a moment to draw it before the sidebar's
    widgets and the first Plotly chart arrive. The chart makes the browser load and compile Plotly (~5 MB of
    JavaScript), which would otherwise hold up the first paint of the grid by about a second."""
    if not st.session_state.get(FIRST_PAINT_DONE):
        st.session_state[FIRST_PAINT_DONE] = True
        time.sleep(FIRST_PAINT_S)


# ---------------------------------------------------------------- the filter sidebar

FILTER_WIDGETS = ("score", "split", "truth", "tag", "q", "sort", "order", "size")


def _prefix() -> str:
    """Widget keys are per page (Explore and Export each have their own sidebar), so a page opened from
    another always sets its widgets from the URL."""
    return f"flt_{st.session_state.get('_clipmem_page', 'explore')}_"


def _keys() -> dict[str, str]:
    return {name: _prefix() + name for name in FILTER_WIDGETS}


def _significance_keys() -> dict[str, str]:
    """The keys of the memorized filters, kept apart from `_keys`: a run scored before significance testing
    never draws these widgets, so their state is not there to tell whether the sidebar was dropped."""
    return {name: _prefix() + name for name in ("memorized", "clipmem_q_max")}


def _reason_key() -> str:
    """Kept apart from `_keys` like the significance keys: a run scored before the evidence draws no reason filter."""
    return _prefix() + "reason"


def _range_key(score: str) -> str:
    return f"{_prefix()}range_{score}"


def truth_tags(run: dict) -> list[str]:
    """The run's truth tags, clean first, then by mean CLIPMem (highest first)."""
    tags = [t["truth"] for t in run["score_summary"]["by_truth"]]
    return sorted(tags, key=lambda t: t != "clean")


def _set_widgets(flt: ViewFilter) -> None:
    state = st.session_state
    KEYS = _keys()
    state[KEYS["score"]] = flt.score
    state[KEYS["split"]] = flt.split or ALL
    state[KEYS["truth"]] = flt.truth or ALL
    state[KEYS["tag"]] = flt.tag or ALL
    state[KEYS["q"]] = flt.q or ""
    state[KEYS["sort"]] = flt.sort
    state[KEYS["order"]] = flt.order
    state[KEYS["size"]] = flt.size
    SIGNIFICANCE = _significance_keys()
    state[SIGNIFICANCE["memorized"]] = flt.memorized
    state[SIGNIFICANCE["clipmem_q_max"]] = flt.clipmem_q_max
    state[_reason_key()] = flt.reason or ALL
    for key in [k for k in state if str(k).startswith(_prefix() + "range_")]:
        del state[key]
    state[_prefix() + "synced"] = flt.to_params()  # the filter the widgets were set from


def _filter_from_widgets(run: dict) -> ViewFilter:
    state = st.session_state
    KEYS = _keys()
    score = state[KEYS["score"]]
    lo = hi = None
    chosen = state.get(_range_key(score))
    ends = state.get(_range_key(score) + "_ends")  # the slider's ends, as last drawn
    if chosen is not None and ends is not None:
        lo_end, hi_end = ends
        lo = None if chosen[0] <= lo_end else float(chosen[0])
        hi = None if chosen[1] >= hi_end else float(chosen[1])
    pick = lambda key: None if state[KEYS[key]] == ALL else state[KEYS[key]]  # noqa: E731
    SIGNIFICANCE = _significance_keys()
    q_max = state.get(SIGNIFICANCE["clipmem_q_max"])
    reason = state.get(_reason_key(), ALL)
    return ViewFilter(run=run["name"], score=score, lo=lo, hi=hi, split=pick("split"), truth=pick("truth"),
                      tag=pick("tag"), q=(state[KEYS["q"]] or "").strip() or None,
                      memorized=bool(state.get(SIGNIFICANCE["memorized"])),
                      clipmem_q_max=None if q_max is None else float(q_max),
                      reason=None if reason == ALL else reason, sort=state[KEYS["sort"]],
                      order=state[KEYS["order"]], size=state[KEYS["size"]])


def view_filter(run: dict) -> ViewFilter:
    """The filter in force for this run, read from the URL; sets the sidebar's widgets when the URL changed
    by other means than those widgets (a link, a reload, the run picker)."""
    flt = replace(ViewFilter.from_params(st.query_params).with_scores(run["score_names"]), run=run["name"])
    widgets_gone = any(key not in st.session_state for key in _keys().values())  # dropped on another page
    if widgets_gone or st.session_state.get(_prefix() + "synced") != flt.to_params():
        _set_widgets(flt)
    return flt


def filter_sidebar(run: dict, flt: ViewFilter, page_size: bool = True) -> None:
    """The sidebar filters of Explore and Export; every change goes to the URL and back to page 1.

    Pages draw it after their main content, so the grid is on screen before the sidebar's chart."""
    scores = list(run["score_names"])
    KEYS = _keys()

    def _on_change() -> None:
        new = _filter_from_widgets(run)
        st.session_state[_prefix() + "synced"] = new.to_params()
        set_params(new)  # a changed filter starts again at the first page

    side = st.sidebar
    side.subheader("Filter", anchor=False)
    side.selectbox("Score", scores, key=KEYS["score"], on_change=_on_change, help=SCORE_HELP)
    score = st.session_state[KEYS["score"]]
    hist = fetch_part(api.histogram, run["name"], score, 40, what=f"the histogram of {score}")
    lo_end, hi_end = (float(hist["lo"]), float(hist["hi"])) if hist else (0.0, 1.0)
    if hi_end <= lo_end:
        hi_end = lo_end + 1.0
    range_key = _range_key(score)
    st.session_state[range_key + "_ends"] = (lo_end, hi_end)
    if range_key not in st.session_state:
        lo = flt.lo if flt.lo is not None and score == flt.score else lo_end
        hi = flt.hi if flt.hi is not None and score == flt.score else hi_end
        st.session_state[range_key] = (min(max(lo, lo_end), hi_end), max(min(hi, hi_end), lo_end))
    chart_slot = side.container(height=charts.RANGE_HISTOGRAM_PX, border=False) if hist is not None else None
    side.slider(f"{score} between", min_value=lo_end, max_value=hi_end, step=(hi_end - lo_end) / 200,
                key=range_key, on_change=_on_change, format="%.3f")

    significance_filters(run, _on_change)
    reason_filter(run, _on_change)

    side.selectbox("Split", [ALL, *SCORED_SPLITS], key=KEYS["split"], on_change=_on_change,
                   format_func=lambda s: {"candidate": "candidate · S_C, trained into f",
                                          "independent": "independent · S_I, trained into g"}.get(s, s),
                   help="Scored pairs come from S_C (trained into f only) and S_I (trained into g only).")
    truths = [ALL, *truth_tags(run)]
    if st.session_state[KEYS["truth"]] not in truths:
        truths.append(st.session_state[KEYS["truth"]])
    side.selectbox("Truth tag", truths, key=KEYS["truth"], on_change=_on_change,
                   help="Ground truth recorded with the data (e.g. swapped = the caption of another image).")
    tags = [ALL, *(t["tag"] for t in fetch_part(api.user_tags, run["name"], what="the user tags") or [])]
    if st.session_state[KEYS["tag"]] not in tags:
        tags.append(st.session_state[KEYS["tag"]])
    side.selectbox("User tag", tags, key=KEYS["tag"], on_change=_on_change,
                   help="Tags people put on pairs on the Sample page.")
    side.text_input("Caption contains", key=KEYS["q"], on_change=_on_change, placeholder="e.g. red circle",
                    help="Case-insensitive; matches any of the pair's captions.")
    side.selectbox("Sort by", scores, key=KEYS["sort"], on_change=_on_change)
    side.segmented_control("Order", ORDERS, key=KEYS["order"], on_change=_on_change, required=True,
                           format_func=lambda o: "highest first" if o == "desc" else "lowest first",
                           label_visibility="collapsed", width="stretch")
    if page_size:
        side.selectbox("Pairs per page", PAGE_SIZES, key=KEYS["size"], on_change=_on_change)
    unfiltered = ViewFilter(run=run["name"], sort=flt.sort, order=flt.order, size=flt.size)
    if flt != unfiltered and side.button("Clear filters", icon=":material/filter_alt_off:", width="stretch"):
        set_params(unfiltered)
        st.rerun()
    if chart_slot is not None:  # drawn last: the widgets above do not wait for Plotly
        lo_now, hi_now = st.session_state[range_key]
        chart_slot.plotly_chart(charts.range_histogram(hist["edges"], hist["counts"], lo_now, hi_now),
                                config={"displayModeBar": False, "staticPlot": True}, key=f"range_hist_{score}")


def flagged_rows(run: dict) -> list[dict] | None:
    """The run's pairs flagged memorized per truth tag, "all" last: [{truth, pairs, flagged, fraction}]; None for
    a run scored before significance testing."""
    return run.get("flagged_by_truth") or None


def significance_filters(run: dict, on_change: Callable[[], None]) -> None:
    """The sidebar's memorized filters: the run's own flag (q ≤ its FDR) and a q threshold of the user's
    choosing; for a run scored before significance testing, a note saying why there are none."""
    side = st.sidebar
    if Q_SCORE not in run["score_names"]:
        side.caption(":material/info: This run was scored before significance testing: its pairs have no p- or "
                     "q-values, so they cannot be filtered by them.")
        return
    SIGNIFICANCE = _significance_keys()
    side.checkbox("Only memorized pairs", key=SIGNIFICANCE["memorized"], on_change=on_change,
                  help=f"Pairs the run flagged memorized at FDR {run['fdr']:g}: their A_f − A_g is higher than the "
                       "run's null (the same score of pairs neither model trained on) allows, after "
                       f"Benjamini–Hochberg correction over the run's scored pairs (q ≤ {run['fdr']:g}).")
    side.number_input("q at most", key=SIGNIFICANCE["clipmem_q_max"], on_change=on_change, value=None,
                      min_value=0.0, max_value=1.0, step=0.01, format="%.3f", placeholder="any q",
                      help="Keep pairs whose Benjamini–Hochberg q-value is at most this: the expected share of "
                           "false discoveries among the pairs kept. Empty: no bound.")


def has_reasons(run: dict) -> bool:
    """Whether the run's pairs carry a reason and miscaption (runs scored before the evidence do not)."""
    return bool(run.get("has_reasons"))


REASON_HELP = ("Why the pair is memorized, from its neighbourhood under the model that never saw it (docs/why.md): "
               "mis-captioned = close neighbours of its image are captioned differently, and their captions fit it "
               "better than its own; atypical "
               "image or caption = nothing in the run is close to it, so it could only be learnt by heart, caption "
               "right or wrong; duplicate = a near-identical image captioned alike; typical = none of these.")


def reason_filter(run: dict, on_change: Callable[[], None]) -> None:
    """The sidebar's reason filter; for a run scored before the evidence, a note saying why there is none."""
    side = st.sidebar
    if not has_reasons(run):
        side.caption(":material/info: This run was scored before the evidence of why a pair is memorized: its pairs "
                     "have no reason or miscaption to filter by.")
        return
    side.selectbox("Reason", [ALL, *REASONS], key=_reason_key(), on_change=on_change,
                   format_func=lambda r: REASON_LABELS.get(r, r), help=REASON_HELP)


def likely_miscaptioned_button(run: dict, flt: ViewFilter) -> None:
    """One click to the pairs flagged memorized whose caption is likely wrong, most likely first: only for runs
    with both significance and the evidence."""
    if Q_SCORE not in run["score_names"] or not has_reasons(run):
        return
    if flt.is_likely_miscaptioned():
        if st.button("Show every pair again", icon=":material/filter_alt_off:", key="likely_miscaptioned_off"):
            set_params(replace(flt, memorized=False, reason=None))
            st.rerun()
    elif st.button("Memorized and likely mis-captioned", icon=":material/report:", key="likely_miscaptioned",
                   type="primary", help="Pairs flagged memorized whose reason is a wrong caption, sorted by "
                                        "miscaption, highest first. " + REASON_HELP):
        set_params(flt.likely_miscaptioned())
        st.rerun()


# ---------------------------------------------------------------- small pieces

TRUTH_BADGE_COLOURS = {"clean": "green", "swapped": "red", "wrong_attribute": "orange", "vague": "yellow",
                       "atypical": "violet", "duplicate": "blue"}


def truth_badge(tag: str) -> str:
    """Markdown for a truth tag, coloured like the charts' legend."""
    return f":{TRUTH_BADGE_COLOURS.get(tag, 'gray')}-badge[{escape_md(tag)}]"


REASON_BADGE_COLOURS = {"miscaptioned": "red", "atypical_image": "violet", "atypical_caption": "orange",
                        "duplicate": "blue", "typical": "gray"}


def reason_badge(reason: str | None) -> str:
    """Markdown for a pair's reason for being memorized; empty for a pair without one (a run scored before the
    evidence)."""
    if not reason:
        return ""
    label = escape_md(REASON_LABELS.get(reason, reason))
    return f":{REASON_BADGE_COLOURS.get(reason, 'gray')}-badge[:material/help: {label}]"


def user_tag_badges(tags: list[str]) -> str:
    return " ".join(f":blue-badge[:material/sell: {escape_md(t)}]" for t in tags)


def escape_md(text: str) -> str:
    """Text shown literally inside Streamlit markdown (captions can hold *, _, [, <, $ ...)."""
    text = html.escape(text, quote=False)
    for char in "\\`*_{}[]()#+-.!|$~:":
        text = text.replace(char, "\\" + char)
    return text


SHA256_SHOWN = 12  # hex digits of a base's SHA-256 shown: enough to tell bases apart at a glance


def training_base_text(base: dict | None) -> str | None:
    """Markdown saying what f and g started from and which towers trained (the API's `base` of a run); None for a
    backend that does not report it."""
    if not base:
        return None
    if not base.get("pretrained"):
        return "f and g trained from scratch (random initial weights), both towers trained"
    digest = base.get("sha256")
    text = f"f and g fine-tuned from **{escape_md(base['file_name'])}**"
    if digest:
        text += f" (sha256 `{digest[:SHA256_SHOWN]}…`)"
    towers = []
    if base.get("lock_image"):
        towers.append(f"image tower locked (unlocked groups {base['lock_image_unlocked_groups']}"
                      f"{', BatchNorm statistics frozen' if base.get('lock_image_freeze_bn_stats') else ''})")
    if base.get("lock_text"):
        towers.append(f"text tower locked (unlocked layers {base['lock_text_unlocked_layers']})")
    return text + ", " + (", ".join(towers) if towers else "both towers trained")


def short(text: str, limit: int) -> str:
    """The text cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def score_text(value: float | None, digits: int = 3) -> str:
    return format_score(value, digits)


def memorized_badge(memorized: bool | None, q: float | None) -> str:
    """Markdown for a pair's flag: a red "memorized" badge and its q when flagged, its q in grey when not; empty
    for a pair of a run scored before significance testing (no q). The q stays outside the badge, which would cut
    it off on a narrow tile."""
    if q is None:
        return ""
    q_text = f"q\u00a0=\u00a0{format_probability(q)}"  # no line break inside
    return f":red-badge[:material/flag: memorized] {q_text}" if memorized else f":gray[{q_text}]"
