"""Embeddings: a 2-D picture (PCA, or UMAP when installed) of a sample of a run's stored
embeddings, coloured by label or cluster. Plotly hover labels cannot show images, so hovering
shows the image index and label, and selecting points (click / lasso) shows their thumbnails.
`?run=<id>&step=<n>&layer=<tap>&color=label|cluster&method=pca|umap&n=<sample>` is shareable.
"""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from app.artifacts import (
    ArtifactMissing,
    artifact_folder,
    class_names,
    label_text,
    load_json,
    load_npy,
    newest_per_key,
    row_for,
    show_gallery,
)
from app.charts import projection_scatter
from app.eval_picker import pick_result
from app.projection import pca_2d, sample_indices, umap_2d, umap_available
from app.state import store, synced_selectbox

st.title("Embedding space")
s = store()
run, row = pick_result(
    "retrieval",
    "stored embeddings",
    "Launch 'Retrieval' on a checkpoint of a finished run: it saves the test split's "
    "embeddings that are drawn here.",
)
try:
    folder = artifact_folder(row)
    embeddings = load_npy(folder, "embeddings.npy")
    meta = load_json(folder, "meta.json")
except (ArtifactMissing, ValueError) as err:
    st.error(f"Cannot read these embeddings: {err}")
    st.stop()
n = int(embeddings.shape[0])
try:
    labels = np.asarray(load_npy(folder, "labels.npy"))
except ArtifactMissing:
    labels = np.full(n, -1, dtype=np.int64)

# cluster assignments of the same checkpoint and layer, if that clustering was run
clusters_row = row_for(
    newest_per_key(s.list_eval_results(run.id, kind="clusters")), row.checkpoint_step, row.layer
)
assignments = None
if clusters_row is not None:
    try:
        a = load_npy(artifact_folder(clusters_row), "assignments.npy")
        assignments = np.asarray(a) if len(a) == n else None
    except ArtifactMissing:
        assignments = None

colour_options = ["label"] + (["cluster"] if assignments is not None else [])
methods = ["pca"] + (["umap"] if umap_available() else [])
o1, o2, o3 = st.columns(3)
with o1:
    colour_by = synced_selectbox("Colour by", colour_options, "color", key="color")
with o2:
    method = synced_selectbox(
        "Projection",
        methods,
        "method",
        key="method",
        format_func=str.upper,
        help=None if umap_available() else "UMAP appears here when the umap package is installed",
    )
with o3:
    qp_n = st.query_params.get("n", "")
    size = int(
        st.number_input(
            "Sample size",
            min_value=min(n, 10),
            max_value=n,
            value=min(n, int(qp_n)) if qp_n.isdigit() and int(qp_n) >= min(n, 10) else min(n, 2000),
            step=100,
            key="n",
        )
    )
    st.query_params["n"] = str(size)

idx = sample_indices(n, size, seed=0)


@st.cache_data(max_entries=8, show_spinner="Projecting…")
def _project(path: str, mtime: int, method: str, idx_key: bytes) -> np.ndarray:
    rows = np.frombuffer(idx_key, dtype=np.int64)
    x = np.asarray(np.load(path, mmap_mode="r", allow_pickle=False)[rows], dtype=np.float32)
    return umap_2d(x) if method == "umap" else pca_2d(x)


emb_file = folder / "embeddings.npy"
xy = _project(str(emb_file), emb_file.stat().st_mtime_ns, method, idx.astype(np.int64).tobytes())
dataset_cfg = meta.get("dataset") or run.config.get("dataset", {})
split = meta.get("split", "test")
names = class_names(json.dumps(dataset_cfg, sort_keys=True))
if colour_by == "cluster" and assignments is not None:
    groups = [f"cluster {int(c)}" for c in assignments[idx]]
else:
    groups = [label_text(int(lab), names) for lab in labels[idx]]

left, right = st.columns([3, 1])
with left:
    event = st.plotly_chart(
        projection_scatter(
            xy,
            idx,
            groups,
            f"{run.name}: {method.upper()} of {len(idx):,} of {n:,} embeddings ({row.layer})",
        ),
        key="projection",
        on_select="rerun",
        selection_mode=("points", "lasso", "box"),
    )
    st.caption(
        "Hover shows the image index and its label (plotly hover labels cannot show images); "
        "click or lasso points to see their images on the right."
    )
with right:
    picked: list[int] = []
    selection = getattr(event, "selection", None) or {}
    for p in selection.get("points", []) or []:
        data = p.get("customdata")
        if data:
            picked.append(int(data[0]))
    manual = st.number_input("…or image index", 0, n - 1, value=None, step=1, key="show_index")
    if manual is not None:
        picked.insert(0, int(manual))
    if not picked:
        st.caption("No point selected.")
    else:
        picked = list(dict.fromkeys(picked))[:12]
        items = [(i, f"#{i} · {label_text(int(labels[i]), names)}") for i in picked]
        show_gallery(items, dataset_cfg, split, columns=3)
        st.caption(f"{len(items)} selected")
