"""Compare: several runs' curves for one metric overlaid, and their final metrics side by side.

`?runs=a,b,c&key=loss` is shareable.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.artifacts import latest_step_rows
from app.charts import line_chart
from app.state import multi_runs_param, no_runs_message, run_label, store

MAX_POINTS = 1500
# Shown first in the metric picker, in this order; any other logged key follows.
PREFERRED = (
    "loss",
    "knn_top1_k20",
    "online_probe_acc",
    "effective_rank",
    "embed_std",
    "lr",
    "throughput",
)
FINAL_KEYS = ("loss", "online_probe_acc", "knn_top1_k20", "knn_top1_k200", "effective_rank")

st.title("Compare runs")
s = store()
runs = s.list_runs(limit=500)
if not runs:
    no_runs_message()
    st.stop()

by_id = {r.id: r for r in runs}
wanted = multi_runs_param()
missing = [r for r in wanted if r not in by_id]
if missing:
    st.warning(f"Not found (deleted?): {', '.join(missing)}")
default = [r for r in wanted if r in by_id] or [r.id for r in runs[:3]]
chosen = st.multiselect(
    "Runs", list(by_id), default=default, format_func=lambda i: run_label(by_id[i]), key="runs"
)
if ",".join(chosen) != st.query_params.get("runs"):
    st.query_params["runs"] = ",".join(chosen)
if not chosen:
    st.info("Pick one or more runs.")
    st.stop()

keys_by_run = {r: set(s.metric_keys(r)) for r in chosen}
all_keys = set().union(*keys_by_run.values())
if not all_keys:
    st.info("None of these runs has logged metrics yet.")
    st.stop()
ordered = [k for k in PREFERRED if k in all_keys] + sorted(all_keys - set(PREFERRED))
qp_key = st.query_params.get("key")
key = st.selectbox(
    "Metric", ordered, index=ordered.index(qp_key) if qp_key in ordered else 0, key="metric_key"
)
st.query_params["key"] = key

series = {}
for rid in chosen:
    if key in keys_by_run[rid]:
        series[f"{by_id[rid].name} ({rid})"] = s.metric_series(rid, key, MAX_POINTS)
absent = [by_id[r].name for r in chosen if key not in keys_by_run[r]]
st.plotly_chart(line_chart(series, key, y_title=key), key="compare_chart")
if absent:
    st.caption(f"Not logged by: {', '.join(absent)}")

st.subheader("Final metrics")
probe_rows = latest_step_rows(s.list_eval_results(kind="probe"))
table = []
for rid in chosen:
    r = by_id[rid]
    row = {
        "run": rid,
        "name": r.name,
        "method": r.method,
        "dataset": r.dataset,
        "status": r.status,
        "step": r.step,
    }
    for k in FINAL_KEYS:
        last = s.last_metric(rid, k)
        row[k] = None if last is None else last[1]
    probes = [p for p in probe_rows if p.run_id == rid and "top1" in p.metrics]
    if probes:
        best = max(probes, key=lambda p: p.metrics["top1"])
        row["best probe top-1"] = best.metrics["top1"]
        row["best probe layer"] = best.layer
    table.append(row)
st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
