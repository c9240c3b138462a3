"""Runs: every run with status, progress, ETA and best kNN; filters, search, per-run actions
(cancel, resume, clone, delete after confirmation) and the queue/worker status."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from app.auth import actor, current_user, may_act_on
from app.charts import format_eta
from app.queue_status import QueueStatus, QueueStatusPoller
from app.state import link, link_to_run, run_label, store, url
from sslengine.store import RUN_STATUSES, RunRecord
from tasks.submit import BrokerUnavailable, cancel, delete, resume

LIVE = {"queued", "running"}
st.title("Runs")
s = store()

# ---- filters (mirrored in the URL: ?status=running,failed&method=simclr&q=cifar)
qp_status = [x for x in (st.query_params.get("status") or "").split(",") if x in RUN_STATUSES]
f1, f2, f3 = st.columns([2, 1, 2])
statuses = f1.multiselect(
    "Status", list(RUN_STATUSES), default=qp_status, key="f.status", placeholder="any status"
)
all_runs = s.list_runs(limit=1000)
methods = sorted({r.method for r in all_runs})
qp_method = st.query_params.get("method")
method = f2.selectbox(
    "Method",
    ["(any)", *methods],
    index=(methods.index(qp_method) + 1) if qp_method in methods else 0,
    key="f.method",
)
search = f3.text_input(
    "Search", value=st.query_params.get("q", ""), key="f.q", placeholder="name, id, notes, dataset…"
)
for param, value in (("status", ",".join(statuses)), ("method", method), ("q", search)):
    if value and value != "(any)":
        st.query_params[param] = value
    elif param in st.query_params:
        del st.query_params[param]


def filtered_runs() -> list[RunRecord]:
    return s.list_runs(
        status=statuses or None,
        search=search.strip() or None,
        method=None if method == "(any)" else method,
        limit=1000,
    )


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 2)


@st.fragment(run_every=3.0)
def table() -> None:
    runs = filtered_runs()
    if not all_runs and not runs:
        st.info("No runs yet. Launch one from the Launch page.")
        link("launch", "Launch a run", icon=":material/rocket_launch:")
        return
    if not runs:
        st.info("No run matches these filters.")
        return
    # one statement for the whole column, not one per run
    last_knn = s.last_metric_many([r.id for r in runs], "knn_top1_k20")
    rows = []
    for r in runs:
        knn = last_knn.get(r.id)
        rows.append(
            {
                "run": url("run", run=r.id),
                "name": r.name,
                "status": r.status,
                "method": r.method,
                "dataset": r.dataset,
                "owner": r.owner,
                "progress": float(r.progress or 0.0),
                "ETA": format_eta(r.eta_seconds) if r.status == "running" else "",
                "best kNN %": _pct(knn[1]) if knn else None,
                "started": r.started_at,
                "created": r.created_at,
                "worker": r.worker_host or "",
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        column_config={
            "run": st.column_config.LinkColumn("run", display_text=r"run=(\w+)"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
            "best kNN %": st.column_config.NumberColumn(
                "kNN top-1 %", help="last logged kNN top-1 (k=20)", format="%.1f"
            ),
            "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm"),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
    )
    st.caption(f"{len(runs)} run(s) · refreshed every 3 s")


table()

# ---- actions on one run
runs = filtered_runs()
if runs:
    st.subheader("Actions")
    by_id = {r.id: r for r in runs}
    wanted = st.query_params.get("run")
    ids = list(by_id)
    run_id = st.selectbox(
        "Selected run",
        ids,
        index=ids.index(wanted) if wanted in by_id else 0,
        format_func=lambda i: run_label(by_id[i]),
        key="selected_run",
    )
    st.query_params["run"] = run_id
    run = s.get_run(run_id)
    if run is None:
        st.error(f"Run '{run_id}' no longer exists.")
    else:
        has_ckpt = s.latest_checkpoint(run.id) is not None
        a1, a2, a3, a4, a5 = st.columns(5)
        with a1:
            link_to_run(run.id, "Open")
        with a2:
            link("launch", "Clone into form", icon=":material/content_copy:", clone=run.id)
        user = current_user()
        allowed = may_act_on(user, run.owner)
        if a3.button("Cancel", key="act.cancel", disabled=run.status not in LIVE or not allowed):
            try:
                cancel(run.id, store=s, **actor(user))
            except (KeyError, PermissionError) as err:
                st.error(str(err))
            else:
                st.toast(f"Cancel requested for {run.id}")
                st.rerun()
        resumable = run.status not in LIVE and has_ckpt
        if a4.button(
            "Resume",
            key="act.resume",
            disabled=not resumable or not allowed,
            help="queue it again; the worker continues from the latest checkpoint"
            if resumable
            else "only a stopped run with a checkpoint can be resumed",
        ):
            try:
                resume(run.id, store=s, **actor(user))
            except (BrokerUnavailable, ValueError, KeyError, PermissionError) as err:
                st.error(str(err))
            else:
                st.toast(f"Run {run.id} queued again")
                st.rerun()
        if a5.button(
            "Delete…",
            key="act.delete",
            disabled=run.status in LIVE or not allowed,
            help="cancel it first" if run.status in LIVE else "asks for confirmation",
        ):
            st.session_state.confirm_delete = run.id
        if st.session_state.get("confirm_delete") == run.id:
            st.warning(
                f"Delete run **{run.name}** ({run.id}) with its metrics, checkpoints, "
                "evaluations and artifact files? This cannot be undone."
            )
            d1, d2 = st.columns([1, 5])
            if d1.button("Yes, delete", type="primary", key="act.delete_confirm"):
                st.session_state.confirm_delete = None
                try:
                    delete(run.id, store=s, **actor(user))
                except (ValueError, KeyError, PermissionError) as err:
                    st.error(str(err))
                else:
                    del st.query_params["run"]
                    st.session_state.pop("selected_run", None)
                    st.toast(f"Deleted run {run.id}")
                    st.rerun()
            if d2.button("Keep it", key="act.delete_keep"):
                st.session_state.confirm_delete = None
                st.rerun()


# ---- queue and workers: a broadcast waits its whole timeout for replies, so a background
# poller asks every few seconds and the page reads its latest answer (one per broker / queue)
@st.cache_resource(show_spinner=False)
def _poller(broker: str, queue: str) -> QueueStatusPoller:
    return QueueStatusPoller()


def _queue_status() -> QueueStatus:
    from sslengine.settings import redis_url

    return _poller(redis_url(), os.environ.get("SSL_QUEUE", "")).latest()


with st.expander("Queue and workers"):
    q = _queue_status()
    if q.broker_error and not q.workers:
        st.warning(f"Broker not reachable: {q.broker_error}")
    else:
        c1, c2, c3 = st.columns(3)
        c1.metric("Workers online", len(q.workers))
        c2.metric("Running", sum(len(v or []) for v in q.active.values()))
        c3.metric("Waiting in queue", "?" if q.waiting is None else q.waiting)
        if not q.workers:
            st.warning(
                f"No worker answered within the timeout on queue '{q.queue}'. Queued runs "
                "wait until a worker starts (`celery -A tasks.celery_app worker -Q "
                f"{q.queue} -c 1`)."
            )
        else:
            st.caption(f"Workers on queue '{q.queue}': " + ", ".join(q.workers))
        if q.other_workers:
            st.caption("Also answering (other queues): " + ", ".join(q.other_workers))
        task_rows = q.task_rows()
        if task_rows:
            st.dataframe(pd.DataFrame(task_rows), hide_index=True, width="stretch")
    st.caption(f"checked in {q.elapsed_s:.2f} s · cached for 5 s")
