"""Shared, cached handles for the pages: the store (migrated once per process)."""

from __future__ import annotations

import streamlit as st

from sslengine.store import Store, migrate


@st.cache_resource
def store() -> Store:
    migrate()
    return Store.default()


def run_url(run_id: str) -> str:
    return f"/run?run={run_id}"


def link_to_run(run_id: str, label: str) -> None:
    """A same-tab link to the run page (markdown links would open a new tab)."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(
            "views/run.py", label=label, icon=":material/monitoring:", query_params={"run": run_id}
        )
    except StreamlitAPIException:  # a page rendered on its own (AppTest): no navigation
        st.markdown(f"[{label}]({run_url(run_id)})")
