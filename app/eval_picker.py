"""The run -> checkpoint -> layer picker shared by the evaluation pages (clusters, retrieval,
embeddings): shows the empty states, keeps the choice in the URL, returns the stored row."""

from __future__ import annotations

import streamlit as st

from app.artifacts import layer_rank, layers_of, newest_per_key, row_for, steps_of
from app.state import link, no_runs_message, pick_run, store, synced_selectbox
from sslengine.store import EvalResultRecord, RunRecord


def runs_with_results(kind: str, what: str, empty_help: str):
    """(runs that have `kind` results, newest result rows); stops the page when there are none.

    `what` names the results in messages ("no retrieval index"), `empty_help` says how to make
    some. A run id in the URL that has no results (or no longer exists) gets a warning.
    """
    s = store()
    runs = s.list_runs(limit=500)
    if not runs:
        no_runs_message()
        st.stop()
    rows = newest_per_key(s.list_eval_results(kind=kind))
    with_rows = [r for r in runs if any(x.run_id == r.id for x in rows)]
    if not with_rows:
        st.info(f"No {what} yet. {empty_help}")
        link("runs", "All runs", icon=":material/list:")
        st.stop()
    wanted = st.query_params.get("run")
    if wanted and wanted not in {r.id for r in with_rows}:
        st.warning(
            f"Run '{wanted}' has no {what}"
            + ("" if s.get_run(wanted) else " (it does not exist; deleted?)")
            + "; showing another run."
        )
        del st.query_params["run"]
    return with_rows, rows


def pick_result(
    kind: str, what: str, empty_help: str, stacked: bool = False
) -> tuple[RunRecord, EvalResultRecord]:
    """Run, checkpoint and layer pickers (one row, or the run above the other two when
    `stacked`); returns the chosen run and result row, or stops the page."""
    with_rows, rows = runs_with_results(kind, what, empty_help)
    if stacked:
        run = pick_run(with_rows)
        c2, c3 = st.columns(2)
    else:
        c1, c2, c3 = st.columns([3, 1, 1])
        with c1:
            run = pick_run(with_rows)
    mine = [r for r in rows if r.run_id == run.id]
    with c2:
        step = synced_selectbox("Checkpoint step", steps_of(mine), "step", key="step")
    with c3:
        layers = sorted({r.layer or "" for r in mine if r.checkpoint_step == step}, key=layer_rank)
        layer = synced_selectbox("Layer", layers or layers_of(mine), "layer", key="layer")
    row = row_for(mine, step, layer)
    if row is None:
        st.error(f"No {what} for this checkpoint and layer.")
        st.stop()
    return run, row
