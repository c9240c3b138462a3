"""Layer-wise linear probes (Goyal et al. 2019 protocol): accuracy per backbone stage.

Top: one line per run at its latest evaluated checkpoint -- pretext tasks (rotation, jigsaw)
tend to peak at a middle stage and fall at the last, invariance methods (SimCLR, SwAV, ...)
keep rising to the pooled features. Bottom: one run, accuracy per layer against training step.
`?runs=a,b&run=a` is shareable.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.artifacts import latest_step_rows, layer_rank, layers_of, newest_per_key
from app.charts import category_lines
from app.state import link, multi_runs_param, no_runs_message, pick_run, store

st.title("Layer-wise linear probes")
s = store()
runs = s.list_runs(limit=500)
if not runs:
    no_runs_message()
    st.stop()

rows = [r for r in newest_per_key(s.list_eval_results(kind="probe")) if "top1" in r.metrics]
by_id = {r.id: r for r in runs}
rows = [r for r in rows if r.run_id in by_id]
if not rows:
    st.info(
        "No linear-probe results yet. Open a finished run and launch 'Linear probes' on one of "
        "its checkpoints; one result per backbone stage (conv1 … layer4, pooled) appears here."
    )
    link("runs", "All runs", icon=":material/list:")
    st.stop()

with_probes = [r for r in runs if any(p.run_id == r.id for p in rows)]
ids = [r.id for r in with_probes]
wanted = [r for r in multi_runs_param() if r in ids]
chosen = st.multiselect(
    "Runs",
    ids,
    default=wanted or ids[:8],
    format_func=lambda i: f"{by_id[i].name} · {by_id[i].method} ({i})",
    key="runs",
)
if ",".join(chosen) != st.query_params.get("runs"):
    st.query_params["runs"] = ",".join(chosen)

latest = [r for r in latest_step_rows(rows) if r.run_id in chosen]
layers = layers_of(latest)
lines: dict[str, dict[str, float]] = {}
table = []
for rid in chosen:
    mine = [r for r in latest if r.run_id == rid]
    if not mine:
        continue
    name = f"{by_id[rid].name} · {by_id[rid].method} (step {mine[0].checkpoint_step})"
    lines[name] = {r.layer or "": 100.0 * float(r.metrics["top1"]) for r in mine}
    table.append({"run": rid, "name": by_id[rid].name, "method": by_id[rid].method,
                  "step": mine[0].checkpoint_step, **lines[name]})  # fmt: skip
if lines:
    st.plotly_chart(
        category_lines(layers, lines, "Probe top-1 accuracy per layer", "top-1 %"),
        key="layers_chart",
    )
    st.dataframe(
        pd.DataFrame(table),
        hide_index=True,
        width="stretch",
        column_config={layer: st.column_config.NumberColumn(format="%.1f") for layer in layers},
    )
    st.caption("top-1 % of a linear probe on the frozen features of each stage.")
else:
    st.info("Pick one or more runs.")

st.subheader("One run across training")
run = pick_run(with_probes, label="Run", param="run", key="one_run")
if run is not None:
    mine = [r for r in rows if r.run_id == run.id and r.checkpoint_step is not None]
    steps = sorted({r.checkpoint_step for r in mine})
    by_layer: dict[str, dict[str, float]] = {}
    for r in sorted(mine, key=lambda r: layer_rank(r.layer)):
        by_layer.setdefault(r.layer or "", {})[str(r.checkpoint_step)] = 100.0 * r.metrics["top1"]
    if len(steps) < 2:
        st.caption(
            f"Only checkpoint step {steps[0] if steps else '?'} has been probed; evaluate more "
            "checkpoints from the run page to see how each layer evolves."
        )
    st.plotly_chart(
        category_lines(
            [str(x) for x in steps],
            by_layer,
            f"{run.name}: probe accuracy per layer over training",
            "top-1 %",
            x_title="checkpoint step",
        ),
        key="layer_steps_chart",
    )
