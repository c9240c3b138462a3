"""Run detail: status, progress with ETA, live curves, log tail, collapse metrics, checkpoints
with evaluation launchers, evaluation results; `?run=<id>` is shareable."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import yaml

from app.artifacts import layer_rank, newest_per_key, tail_lines
from app.auth import actor, can_launch, current_user, may_act_on
from app.charts import format_eta, knn_metric_label, line_chart
from app.state import link, pick_run, store
from tasks.submit import cancel

MAX_POINTS = 2000
LOG_LINES = 100
LIVE = {"queued", "running"}
EVAL_REFRESH_S = 3.0
# The series the page draws, and the single values it shows: the only keys it looks up
# (one statement for all of them, an index seek per key; no scan of the run's points).
CHARTED = ("loss", "lr", "throughput", "online_probe_acc", "embed_std", "effective_rank")
SHOWN = ("knn_top1_k20", "embed_std_ref")
EVAL_KINDS = {
    "kNN": "knn",
    "Linear probes": "probe",
    "Retrieval": "retrieval",
    "Clusters": "clusters",
}

s = store()
run_id = st.query_params.get("run")
if not run_id:
    runs = s.list_runs(limit=500)
    if not runs:
        st.title("Run detail")
        st.info("No runs yet. Start one on the Launch page.")
        link("launch", "Launch a run", icon=":material/rocket_launch:")
        st.stop()
    chosen = pick_run(runs)
    run_id = chosen.id if chosen else None

run = s.get_run(run_id) if run_id else None
if run is None:
    st.title("Run detail")
    st.error(f"Run '{run_id}' does not exist (it may have been deleted).")
    link("runs", "All runs", icon=":material/list:")
    st.stop()

st.title(f"{run.name}")
st.caption(f"run {run.id} · {run.method} on {run.dataset} · {run.backbone} · owner {run.owner}")
if run.notes:
    st.markdown(run.notes)


@st.cache_data(max_entries=128, show_spinner=False)
def _series(run_id: str, key: str, last_step: int, run_step: int) -> tuple[list[int], list[float]]:
    """One series, min/max downsampled to MAX_POINTS, cached on its last logged step: a rerun
    (a widget, the live refresh, another viewer of the same run) fetches only series that
    have grown. ``run_step`` is in the key because a resumed run rewrites the steps after
    its checkpoint, which does not move a series' last step until it passes it."""
    return store().metric_series(run_id, key, MAX_POINTS)


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
    last = s.last_metrics(run_id, (*CHARTED, *SHOWN))
    last_knn = last.get("knn_top1_k20")
    knn_label, knn_help = knn_metric_label((run.config or {}).get("eval"))
    c4.metric(knn_label, f"{last_knn[1] * 100:.1f}%" if last_knn else "—", help=knn_help)
    st.progress(
        min(1.0, max(0.0, r.progress or 0.0)), text=f"{(r.progress or 0) * 100:.1f}% · {r.status}"
    )
    if r.worker_host:
        beat = r.heartbeat_at.strftime("%H:%M:%S UTC") if r.heartbeat_at else "—"
        st.caption(f"worker {r.worker_host} · last heartbeat {beat}")
    if r.status == "failed":
        st.error("The run failed:")
        st.code((r.error or "no error text was recorded")[-3000:])
    if r.cancel_requested and r.status in LIVE:
        st.warning("Cancel requested: the run stops (after a checkpoint) at its next metric flush.")
    elif (
        r.status in LIVE
        and may_act_on(current_user(), r.owner)
        and st.button("Cancel run", type="secondary", key="cancel")
    ):
        # inside the fragment: the button disappears as soon as the run has stopped
        cancel(run_id, store=s, **actor(current_user()))
        st.toast(f"Cancel requested for {run_id}")
        st.rerun(scope="fragment")

    def series(key: str) -> tuple[list[int], list[float]]:
        return _series(run_id, key, last[key][0], r.step)

    keys = set(last)
    if "loss" not in keys:
        st.info("No metrics yet: the run has not logged its first steps.")
    else:
        st.plotly_chart(
            line_chart({"loss": series("loss")}, "Loss"),
            key="loss_chart",
        )
        cols = st.columns(2)
        for col, key, title in (
            (cols[0], "lr", "Learning rate"),
            (cols[1], "throughput", "Throughput (images/s)"),
        ):
            if key in keys:
                col.plotly_chart(
                    line_chart({key: series(key)}, title),
                    key=f"{key}_chart",
                )
        if "online_probe_acc" in keys:
            st.plotly_chart(
                line_chart(
                    {"online probe": series("online_probe_acc")},
                    "Online linear probe accuracy (train batches, detached features)",
                ),
                key="probe_chart",
            )
        if "embed_std" in keys or "effective_rank" in keys:
            st.subheader("Collapse")
            ref = last.get("embed_std_ref")
            cols = st.columns(2)
            if "embed_std" in keys:
                cols[0].plotly_chart(
                    line_chart(
                        {"std": series("embed_std")},
                        "Embedding std vs 1/sqrt(d)",
                        ref_line=ref[1] if ref else None,
                        ref_label=f"1/sqrt(d) = {ref[1]:.3g}" if ref else None,
                    ),
                    key="std_chart",
                )
            if "effective_rank" in keys:
                # d = 1/ref^2 is the largest rank the embedding can have (Roy & Vetterli 2007)
                d = round(1.0 / ref[1] ** 2) if ref and ref[1] else None
                cols[1].plotly_chart(
                    line_chart(
                        {"effective rank": series("effective_rank")},
                        "Effective rank of the embeddings",
                        ref_line=float(d) if d else None,
                        ref_label=f"d = {d}" if d else None,
                    ),
                    key="erank_chart",
                )
    with st.expander("Log (last 100 lines)", expanded=r.status == "failed"):
        if not r.log_path:
            st.caption("No log yet: the run has not started on a worker.")
        else:
            try:
                st.code("\n".join(tail_lines(r.log_path, LOG_LINES)) or "(empty)", language=None)
            except OSError as err:
                st.caption(f"Log not readable from this host: {err}")


live()

# ---- evaluations: results, and launching new ones on any checkpoint
st.subheader("Evaluations")


def _evaluating(run_status: str | None, jobs: list) -> bool:
    """Whether results may still arrive: the run itself is live (its configured evaluations
    follow pretraining) or one of its evaluation jobs is queued or running."""
    return run_status in LIVE or any(j.status in LIVE for j in jobs)


refresh_evals = _evaluating(run.status, s.list_eval_jobs(run_id))


@st.fragment(run_every=EVAL_REFRESH_S if refresh_evals else None)
def evaluations() -> None:
    rows = newest_per_key(s.list_eval_results(run_id))
    if rows:
        table = []
        for r in sorted(
            rows, key=lambda r: (r.kind, -(r.checkpoint_step or 0), layer_rank(r.layer))
        ):
            shown = {k: v for k, v in r.metrics.items() if isinstance(v, int | float | str)}
            table.append(
                {
                    "kind": r.kind,
                    "step": r.checkpoint_step,
                    "layer": r.layer,
                    "metrics": ", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in sorted(shown.items())
                    ),
                    "recorded": r.created_at,
                }
            )
        st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
        kinds = {r.kind for r in rows}
        lcols = st.columns(4)
        for col, kind, page, label in (
            (lcols[0], "probe", "layers", "Layer-wise probes"),
            (lcols[1], "clusters", "clusters", "Clusters"),
            (lcols[2], "retrieval", "retrieval", "Retrieval"),
            (lcols[3], "retrieval", "embeddings", "Embeddings"),
        ):
            if kind in kinds:
                with col:
                    link(page, label, run=run_id)
    else:
        st.caption("No evaluation results yet.")

    # evaluations sent to a worker that have no results (yet): queued, running, or failed and why
    jobs = s.list_eval_jobs(run_id)
    pending = [j for j in jobs if j.status != "succeeded"][::-1][:20]
    if pending:

        def _what(j) -> tuple:
            return (j.kind, j.all_checkpoints, j.checkpoint_step, j.layer)

        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "job": j.id,
                        "kind": j.kind,
                        "step": "all" if j.all_checkpoints else str(j.checkpoint_step),
                        "layer": j.layer or "",
                        "status": j.status,
                        "submitted": j.created_at,
                        "error": j.error or "",
                    }
                    for j in pending
                ]
            ),
            hide_index=True,
            width="stretch",
        )
        for j in pending:  # a failure not since redone successfully is shown in full
            redone = any(
                o.id > j.id and o.status == "succeeded" and _what(o) == _what(j) for o in jobs
            )
            if j.status == "failed" and not redone:
                step = "every checkpoint" if j.all_checkpoints else f"step {j.checkpoint_step}"
                st.error(f"The {j.kind} evaluation of {step} (job {j.id}) failed: {j.error}")
    if refresh_evals:
        fresh = s.get_run(run_id)
        if _evaluating(fresh.status if fresh else None, jobs):
            st.caption(
                f"Refreshing every {EVAL_REFRESH_S:.0f} s while an evaluation is queued or running."
            )
        else:
            # Nothing more to wait for: redraw the whole page once (new checkpoints, final
            # curves), which also defines this fragment again without a refresh timer.
            st.rerun()


evaluations()

ckpts = s.list_checkpoints(run_id)
with st.expander(f"Checkpoints ({len(ckpts)}) and evaluation launchers", expanded=bool(ckpts)):
    if not ckpts:
        st.caption("No checkpoint yet.")
    else:
        st.dataframe(
            pd.DataFrame(
                [{"step": c.step, "saved": c.created_at, "path": c.path} for c in ckpts[::-1]]
            ),
            hide_index=True,
            width="stretch",
        )
        try:
            from tasks.evaluate import submit_evaluation
        except ImportError:
            submit_evaluation = None
        if submit_evaluation is None:
            st.info("Evaluation jobs are not available in this installation (tasks.evaluate).")
        else:
            steps = [c.step for c in ckpts][::-1]
            step = st.selectbox("Checkpoint step", steps, key="eval_step")
            bcols = st.columns(len(EVAL_KINDS) + 1)
            requests = [(label, kind, int(step), False) for label, kind in EVAL_KINDS.items()]
            requests.append(("Probe every checkpoint", "probe", None, True))
            for col, (label, kind, at_step, every) in zip(bcols, requests, strict=True):
                if col.button(
                    label, key=f"eval.{kind}.{every}", disabled=not can_launch(current_user())
                ):
                    try:
                        submit_evaluation(
                            run_id, kind, checkpoint_step=at_step, all_checkpoints=every, store=s
                        )
                    except Exception as err:  # noqa: BLE001 - broker down, bad step: a message
                        st.error(f"Could not queue the {label} evaluation: {err}")
                    else:
                        where = "every checkpoint" if every else f"step {step}"
                        # rerun so the evaluations above start refreshing for the new job
                        st.session_state.eval_queued = f"Queued {label} evaluation of {where}."
                        st.rerun()
            if "eval_queued" in st.session_state:
                st.success(st.session_state.pop("eval_queued"))
            st.caption(
                "Evaluations run on a worker; their results appear above when they finish. "
                "'Probe every checkpoint' feeds the layer-wise chart over training."
            )

with st.expander("Config"):
    st.code(yaml.safe_dump(run.config, sort_keys=False), language="yaml")
