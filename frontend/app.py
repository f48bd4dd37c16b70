"""The clipmem dashboard. Run it with `clipmem ui` (or `streamlit run frontend/app.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run frontend/app.py` from a checkout that is not pip-installed still finds the package
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from clipmem.frontend import ui  # noqa: E402

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="clipmem", page_icon="🧠", layout="wide")

pages = {
    "Browse": [
        st.Page(VIEWS / "explore.py", title="Explore", icon=":material/grid_view:", url_path="explore", default=True),
        st.Page(VIEWS / "sample.py", title="Sample", icon=":material/image_search:", url_path="sample"),
    ],
    "Analyse": [
        st.Page(VIEWS / "encoders.py", title="Encoders", icon=":material/compare_arrows:", url_path="encoders"),
        st.Page(VIEWS / "runs.py", title="Runs", icon=":material/table_chart:", url_path="runs"),
    ],
    "Act": [
        st.Page(VIEWS / "export.py", title="Export", icon=":material/download:", url_path="export"),
    ],
}
page = st.navigation(pages)
ui.carry_view_params(page.title.lower())
ui.require_access()  # a visitor of a backend with tokens signs in before any page shows data
page.run()
