"""Runs: every run with status, progress and ETA; click through to its detail page."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.charts import format_eta
from app.state import store

st.title("Runs")
s = store()


@st.fragment(run_every=3.0)
def table() -> None:
    runs = s.list_runs(limit=500)
    if not runs:
        st.info("No runs yet. Launch one from the Launch page.")
        st.markdown("[Launch a run](/launch)")
        return
    df = pd.DataFrame(
        [
            {
                "run": f"/run?run={r.id}",
                "name": r.name,
                "status": r.status,
                "method": r.method,
                "dataset": r.dataset,
                "owner": r.owner,
                "progress": float(r.progress or 0.0),
                "ETA": format_eta(r.eta_seconds) if r.status == "running" else "",
                "created": r.created_at,
                "worker": r.worker_host or "",
            }
            for r in runs
        ]
    )
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        column_config={
            "run": st.column_config.LinkColumn("run", display_text=r"run=(\w+)"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
        },
    )


table()
