"""Clusters: how a run's embeddings spread over its prototypes (SwAV) or k-means centroids.

Usage histogram against equipartition (N/K), dead and dominant clusters flagged, the top images
of one cluster, and the prototype-to-prototype cosine similarity. Reads an evaluation row of
kind "clusters" and its artifact folder (docs/eval-contract.md).
`?run=<id>&step=<n>&layer=<tap>&cluster=<k>` is shareable.
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
    show_gallery,
)
from app.charts import similarity_heatmap, usage_histogram
from app.eval_picker import pick_result
from app.state import store, synced_selectbox

MAX_HEATMAP = 200  # prototypes drawn in the heatmap (K x K cells reach the browser)

st.title("Clusters and prototypes")
s = store()
run, row = pick_result(
    "clusters",
    "clustering results",
    "Open a finished run and launch 'Clusters' on a checkpoint (SwAV runs use their "
    "prototypes, other methods k-means on the embeddings).",
    stacked=True,
)

try:
    folder = artifact_folder(row)
    counts = np.asarray(load_json(folder, "usage.json")["counts"], dtype=np.int64)
    meta = load_json(folder, "meta.json")
except (ArtifactMissing, KeyError, ValueError) as err:
    st.error(f"Cannot read this clustering result: {err}")
    st.stop()

k = len(counts)
n = int(counts.sum())
expected = n / k if k else 0.0


# The evaluation stores how many clusters are dead / dominant; which ones follows from the
# same definitions (sslengine.eval.clusters): dead c_k = 0, dominant c_k > factor * N / K.
try:
    from sslengine.eval.clusters import DOMINANT_FACTOR
except ImportError:
    DOMINANT_FACTOR = 4.0
m = row.metrics
dead = np.flatnonzero(counts == 0).tolist()
dominant = np.flatnonzero(counts > DOMINANT_FACTOR * expected).tolist() if k else []

c = st.columns(5)
c[0].metric("Clusters K", k)
c[1].metric("Images N", f"{n:,}")
c[2].metric("Dead", len(dead))
c[3].metric("Dominant", len(dominant))
entropy, max_entropy = m.get("usage_entropy"), m.get("max_entropy")
c[4].metric(
    "Usage entropy",
    "—" if entropy is None else f"{entropy:.3g}",
    help="Shannon entropy of the usage; log K when every cluster is used equally"
    + ("" if not max_entropy else f" (log K = {max_entropy:.3g})"),
)
st.caption(
    (f"usage entropy {entropy / max_entropy:.0%} of log K · " if entropy and max_entropy else "")
    + f"source: {m.get('source', meta.get('source', '?'))} · split {meta.get('split', '?')} · "
    f"tap {meta.get('tap', row.layer)} · step {row.checkpoint_step}"
)
st.plotly_chart(usage_histogram(counts.tolist(), expected, dead, dominant), key="usage_chart")
if dead:
    st.warning(f"Dead (no image assigned): {', '.join(map(str, dead[:50]))}"
               + (" …" if len(dead) > 50 else ""))  # fmt: skip
if dominant:
    st.warning(
        "Dominant: "
        + ", ".join(
            f"{i} ({counts[i]} images, {counts[i] / max(expected, 1e-9):.1f}× N/K)"
            for i in dominant[:20]
        )  # fmt: skip
    )

# ---- gallery of one cluster's most typical images
st.subheader("Top images of a cluster")
try:
    top = load_json(folder, "top_images.json")
except ArtifactMissing:
    top = {}
used = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
if not used:
    st.info("No cluster has any image.")
else:
    cluster = synced_selectbox(
        "Cluster",
        used,
        "cluster",
        format_func=lambda i: f"{i} · {counts[i]} images",
        key="cluster",
    )
    indices = [int(i) for i in top.get(str(cluster), [])]
    if not indices:
        st.caption("No top images were recorded for this cluster.")
    else:
        dataset_cfg = meta.get("dataset") or run.config.get("dataset", {})
        split = meta.get("split", "test")
        names = class_names(json.dumps(dataset_cfg, sort_keys=True))
        try:
            labels = load_npy(folder, "labels.npy")
        except ArtifactMissing:
            labels = None
        try:
            scores = load_npy(folder, "scores.npy")
        except ArtifactMissing:
            scores = None
        items = []
        for i in indices:
            parts = [f"#{i}"]
            if labels is not None and i < len(labels):
                parts.append(label_text(int(labels[i]), names))
            if scores is not None and i < len(scores):
                parts.append(f"{float(scores[i]):.2f}")
            items.append((i, " · ".join(parts)))
        shown = show_gallery(items, dataset_cfg, split)
        st.caption(f"{shown} of {len(items)} images, best first (caption: index · label · score).")

# ---- prototype similarity
st.subheader("Prototype similarity")
try:
    centroids = np.asarray(load_npy(folder, "centroids.npy"), dtype=np.float64)
except ArtifactMissing:
    st.caption("No centroids were saved for this result.")
else:
    ids = np.arange(centroids.shape[0])
    if centroids.shape[0] > MAX_HEATMAP:
        ids = np.sort(np.argsort(-counts, kind="stable")[:MAX_HEATMAP])
        st.caption(f"The {MAX_HEATMAP} most used of {centroids.shape[0]} prototypes.")
    c = centroids[ids]
    # stored L2-normalised (contract); normalising again keeps the scale right if one is not
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    st.plotly_chart(similarity_heatmap(c @ c.T, ids.tolist()), key="similarity_chart")
