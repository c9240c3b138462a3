"""Run detail: status, progress with ETA, live curves, cancel; `?run=<id>` is shareable."""

from __future__ import annotations

import streamlit as st
import yaml

from app.charts import format_eta, line_chart
from app.state import store
from tasks.submit import cancel

MAX_POINTS = 2000
LIVE = {"queued", "running"}

s = store()
run_id = st.query_params.get("run")
if not run_id:
    runs = s.list_runs(limit=200)
    if not runs:
        st.title("Run detail")
        st.info("No runs yet. Start one on the Launch page.")
        st.markdown("[Launch a run](/launch)")
        st.stop()
    labels = {r.id: f"{r.name} ({r.id}, {r.status})" for r in runs}
    run_id = st.selectbox("Run", list(labels), format_func=labels.get)
    st.query_params["run"] = run_id

run = s.get_run(run_id)
if run is None:
    st.title("Run detail")
    st.error(f"Run '{run_id}' does not exist (it may have been deleted).")
    st.stop()

st.title(f"{run.name}")
st.caption(f"run {run.id} · {run.method} on {run.dataset} · {run.backbone} · owner {run.owner}")


@st.fragment(run_every=2.0 if run.status in LIVE else None)
def live() -> None:
    r = s.get_run(run_id)
    if r is None:
        st.error(f"Run '{run_id}' was deleted.")
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Status", r.status)
    c2.metric("Step", f"{r.step} / {r.total_steps or '?'}")
    c3.metric("ETA", format_eta(r.eta_seconds) if r.status == "running" else "—")
    last_knn = s.last_metric(run_id, "knn_top1_k20")
    c4.metric("kNN top-1 (k=20)", f"{last_knn[1] * 100:.1f}%" if last_knn else "—")
    st.progress(
        min(1.0, max(0.0, r.progress or 0.0)), text=f"{(r.progress or 0) * 100:.1f}% · {r.status}"
    )
    if r.status == "failed" and r.error:
        st.error("The run failed:")
        st.code(r.error[-3000:])
    keys = set(s.metric_keys(run_id))
    if "loss" not in keys:
        st.info("No metrics yet: the run has not logged its first steps.")
        return
    st.plotly_chart(
        line_chart({"loss": s.metric_series(run_id, "loss", MAX_POINTS)}, "Loss"), key="loss_chart"
    )
    cols = st.columns(2)
    for col, key, title in (
        (cols[0], "lr", "Learning rate"),
        (cols[1], "throughput", "Throughput (images/s)"),
    ):
        if key in keys:
            col.plotly_chart(
                line_chart({key: s.metric_series(run_id, key, MAX_POINTS)}, title),
                key=f"{key}_chart",
            )
    cols = st.columns(2)
    if "online_probe_acc" in keys:
        cols[0].plotly_chart(
            line_chart(
                {"online probe": s.metric_series(run_id, "online_probe_acc", MAX_POINTS)},
                "Online linear probe accuracy",
            ),
            key="probe_chart",
        )
    if "embed_std" in keys:
        ref = s.last_metric(run_id, "embed_std_ref")
        cols[1].plotly_chart(
            line_chart(
                {"std of normalised embeddings": s.metric_series(run_id, "embed_std", MAX_POINTS)},
                "Collapse: embedding std vs 1/sqrt(d)",
                ref_line=ref[1] if ref else None,
            ),
            key="std_chart",
        )


live()

if run.status in LIVE and st.button("Cancel run", type="secondary", key="cancel"):
    cancel(run_id, store=s)
    st.toast(f"Cancel requested for {run_id}")
    st.rerun()

with st.expander("Config"):
    st.code(yaml.safe_dump(run.config, sort_keys=False), language="yaml")
ckpts = s.list_checkpoints(run_id)
with st.expander(f"Checkpoints ({len(ckpts)})"):
    for c in ckpts:
        st.text(f"step {c.step}: {c.path}")
