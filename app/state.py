"""Shared handles and small widgets for the pages: the store, links, URL-synced pickers.

Every selection a page makes is mirrored into the URL (``st.query_params``), so a page's URL
opens the same view for anyone it is shared with; a pick read from the URL that no longer
exists (a deleted run, a stale step) falls back to the first option with a message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import streamlit as st

from sslengine.store import RunRecord, Store, migrate

T = TypeVar("T")

# url_path -> page file, as registered in app/main.py
PAGE_FILES = {
    "runs": "views/runs.py",
    "launch": "views/launch.py",
    "run": "views/run.py",
    "compare": "views/compare.py",
    "layers": "views/layers.py",
    "clusters": "views/clusters.py",
    "retrieval": "views/retrieval.py",
    "embeddings": "views/embeddings.py",
}


@st.cache_resource
def store() -> Store:
    migrate()
    return Store.default()


def url(page: str, **params: Any) -> str:
    """A relative URL to ``page`` (a url_path) with query parameters."""
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"/{page}" + (f"?{query}" if query else "")


def link(page: str, label: str, icon: str | None = None, **params: Any) -> None:
    """A same-tab link to another page (markdown links would open a new tab)."""
    from streamlit.errors import StreamlitAPIException

    query = {k: str(v) for k, v in params.items() if v is not None}
    try:
        st.page_link(PAGE_FILES[page], label=label, icon=icon, query_params=query or None)
    except StreamlitAPIException:  # a page rendered on its own (AppTest): no navigation
        st.markdown(f"[{label}]({url(page, **query)})")


def link_to_run(run_id: str, label: str) -> None:
    link("run", label, icon=":material/monitoring:", run=run_id)


def run_label(run: RunRecord) -> str:
    return f"{run.name} · {run.method} · {run.id} ({run.status})"


def synced_selectbox(
    label: str,
    options: Sequence[T],
    param: str,
    format_func: Callable[[T], str] = str,
    key: str | None = None,
    default: T | None = None,
    help: str | None = None,
) -> T | None:
    """A selectbox whose choice is read from and written to ``?param=``.

    The URL value wins on first render; a URL value that is not an option (deleted run,
    stale step) is reported once and replaced by ``default`` / the first option.
    """
    key = key or f"pick.{param}"
    options = list(options)
    if not options:
        return None
    as_text = [str(o) for o in options]
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]  # options changed under the widget (another run picked)
    wanted = st.query_params.get(param)
    if wanted is not None and wanted in as_text:
        index = as_text.index(wanted)
    else:
        if wanted is not None and key not in st.session_state:
            st.warning(f"{param} '{wanted}' from the URL is not available here; showing another.")
        index = options.index(default) if default in options else 0
    value = st.selectbox(label, options, index=index, key=key, format_func=format_func, help=help)
    if value is not None and st.query_params.get(param) != str(value):
        st.query_params[param] = str(value)
    return value


def pick_run(
    runs: Sequence[RunRecord], label: str = "Run", param: str = "run", key: str | None = None
) -> RunRecord | None:
    """Choose one of ``runs`` (newest first), synced with ``?run=``."""
    by_id = {r.id: r for r in runs}
    chosen = synced_selectbox(
        label, list(by_id), param, format_func=lambda i: run_label(by_id[i]), key=key
    )
    return None if chosen is None else by_id[chosen]


def multi_runs_param(param: str = "runs") -> list[str]:
    """Run ids listed in ``?runs=a,b,c``."""
    raw = st.query_params.get(param) or ""
    return [r for r in (p.strip() for p in raw.split(",")) if r]


def no_runs_message(what: str = "runs") -> None:
    st.info(f"No {what} yet. Start a pretraining run on the Launch page.")
    link("launch", "Launch a run", icon=":material/rocket_launch:")
