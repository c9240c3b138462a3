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


def page(file: str, title: str, icon: str, url_path: str) -> st.Page:
    return st.Page(str(PAGES / file), title=title, icon=icon, url_path=url_path)


# The default page is served at "/" whatever its url_path says; a hidden one forwards from
# there to /runs, so every page (Runs included) has its own shareable path.
home = st.Page(
    str(PAGES / "home.py"), title="Home", url_path="home", default=True, visibility="hidden"
)

nav = st.navigation(
    {
        "": [home],
        "Training": [
            page("runs.py", "Runs", ":material/list:", "runs"),
            page("launch.py", "Launch", ":material/rocket_launch:", "launch"),
            page("run.py", "Run detail", ":material/monitoring:", "run"),
            page("compare.py", "Compare", ":material/compare_arrows:", "compare"),
        ],
        "Evaluation": [
            page("layers.py", "Layer-wise probes", ":material/stacked_line_chart:", "layers"),
            page("clusters.py", "Clusters", ":material/bubble_chart:", "clusters"),
            page("retrieval.py", "Retrieval", ":material/image_search:", "retrieval"),
            page("embeddings.py", "Embeddings", ":material/scatter_plot:", "embeddings"),
        ],
    }
)
from app.auth import login_gate  # noqa: E402

login_gate()  # hosted mode (SSL_HOSTED=1): sign-in in the sidebar; local mode: no login
nav.run()
