"""Dashboard entry point: `streamlit run app/main.py` (multipage via st.navigation)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ first, not the repo root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="sslengine", page_icon=":material/neurology:", layout="wide")

PAGES = ROOT / "app" / "views"
nav = st.navigation(
    [
        st.Page(
            str(PAGES / "runs.py"),
            title="Runs",
            icon=":material/list:",
            url_path="runs",
            default=True,
        ),
        st.Page(
            str(PAGES / "launch.py"),
            title="Launch",
            icon=":material/rocket_launch:",
            url_path="launch",
        ),
        st.Page(
            str(PAGES / "run.py"), title="Run detail", icon=":material/monitoring:", url_path="run"
        ),
    ]
)
nav.run()
