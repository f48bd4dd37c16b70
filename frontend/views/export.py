"""Export: download the pairs of the current filter, or a model's training set without them."""

from __future__ import annotations

import re

import streamlit as st

from clipmem.frontend import api, ui
from clipmem.frontend.state import ViewFilter

PREPARED = "_clipmem_export"  # the file last prepared in this session: {(kind, request): bytes}


def export_block(kind: str, request: tuple, label: str, file_name: str, make, enabled: bool) -> None:
    """A button that asks the backend for the file, then a download button for it.

    The file is made on demand (a million-pair export is large), and a failure shows as a message here."""
    prepared: dict = st.session_state.setdefault(PREPARED, {})
    key = (kind, request)
    if key not in prepared:
        if st.button(f"Prepare {label}", icon=":material/build:", key=f"prepare_{kind}", disabled=not enabled):
            with st.spinner("The backend is writing the file…"):
                data = ui.fetch_part(make, what=label)
            if data is not None:
                prepared.clear()
                prepared[key] = data
                st.rerun()
        return
    data = prepared[key]
    st.download_button(f"Download {file_name}", data=data, file_name=file_name, mime="text/csv",
                       icon=":material/download:", key=f"download_{kind}", type="primary", on_click="ignore")
    st.caption(f"{len(data) / 1e6:.2f} MB, ready to save.")


def body(run: dict, flt: ViewFilter) -> None:
    page = ui.fetch_part(api.samples, flt, None, what="the pairs of this filter")
    if page is None:
        return
    matching = page["total"]
    st.markdown(f"The current filter — **{flt.describe()}**, sorted by `{flt.sort}` "
                f"({'highest' if flt.order == 'desc' else 'lowest'} first) — selects **{matching:,}** of the "
                f"{run['n_scored']:,} scored pairs of run **{ui.escape_md(run['name'])}**. Change it in the sidebar.")
    st.page_link("views/explore.py", label="See these pairs on Explore", icon=":material/grid_view:",
                 query_params=flt.to_params())
    if matching == 0:
        st.info("Nothing to export: no pair matches the filter.", icon=":material/filter_alt_off:")
        return
    top = st.number_input("Keep only the first N pairs in this order (0 = all of them)", min_value=0,
                          max_value=matching, value=0, step=10, key="export_top",
                          help="E.g. the 100 most memorized pairs: sort by clipmem, highest first, N = 100.",
                          width=360)
    limit = int(top) or None
    selected = limit or matching
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", run["name"]).strip("-")

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("The selected pairs", anchor=False)
        st.markdown(f"**{selected:,} rows**, one per pair: sample id, split, truth tag, which model trained on it, "
                    "first caption, image path and every score, in the sort order. For review in a spreadsheet or "
                    "a notebook.")
        export_block("selection", (flt, limit), "the selection CSV", f"{stem}-selection.csv",
                     lambda: api.export_selection(flt, limit), enabled=True)
    with right:
        st.subheader("A training set without them", anchor=False)
        model = st.segmented_control("Training data of", ["f", "g"], default="f", key="export_model", required=True,
                                     format_func=lambda m: {"f": "f (S_S + S_C)", "g": "g (S_S + S_I)"}[m])
        st.markdown(f"Model {model}'s training pairs **minus the {selected:,} selected ones**, as open_clip's "
                    "training CSV (tab-separated `filepath`, `title`; one line per caption). Retrain on it, score "
                    "again and compare the runs on the Runs page.")
        st.code(f"python -m open_clip_train.main --train-data {stem}-{model}-train-minus-selection.csv "
                "--csv-img-key filepath --csv-caption-key title ...", language="bash", wrap_lines=True)
        export_block("open_clip", (flt, limit, model), "the open_clip training CSV",
                     f"{stem}-{model}-train-minus-selection.csv", lambda: api.export_open_clip(flt, model, limit),
                     enabled=True)


run = ui.pick_run("export")
flt = ui.view_filter(run)
st.title("Export", anchor=False)
body(run, flt)
ui.filter_sidebar(run, flt, page_size=False)
