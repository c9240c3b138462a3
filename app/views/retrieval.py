"""Retrieval: the nearest neighbours of a dataset image (or an uploaded one) in a run's
embedding space, with similarity and label, for any evaluated checkpoint and layer.

Reads evaluation rows of kind "retrieval" and their folders (embeddings, labels, index;
docs/eval-contract.md). `?run=<id>&step=<n>&layer=<tap>&index=<i>&k=<k>` is shareable.
"""

from __future__ import annotations

import io
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
    thumbnail,
)
from app.eval_picker import pick_result
from app.retrieval_search import embed_with_checkpoint, neighbours
from app.state import store

MAX_UPLOAD_BYTES = 5 * 1024 * 1024

st.title("Nearest-neighbour retrieval")
s = store()
run, row = pick_result(
    "retrieval",
    "retrieval index",
    "Open a finished run and launch 'Retrieval' on a checkpoint: it embeds the test split "
    "and builds the index searched here.",
)
try:
    folder = artifact_folder(row)
    embeddings = load_npy(folder, "embeddings.npy")
    meta = load_json(folder, "meta.json")
except (ArtifactMissing, ValueError) as err:
    st.error(f"Cannot read this retrieval result: {err}")
    st.stop()
try:
    labels = np.asarray(load_npy(folder, "labels.npy"))
except ArtifactMissing:
    labels = np.full(len(embeddings), -1, dtype=np.int64)
n = int(embeddings.shape[0])
dataset_cfg = meta.get("dataset") or run.config.get("dataset", {})
split = meta.get("split", "test")
names = class_names(json.dumps(dataset_cfg, sort_keys=True))
st.caption(
    f"{n:,} images of the {split} split · dim {embeddings.shape[1]} · "
    f"index {row.metrics.get('index_type', meta.get('index_type', '?'))}"
    + (
        f" · precision@10 {row.metrics['precision_at_10']:.1%}"
        if isinstance(row.metrics.get("precision_at_10"), int | float)
        else ""
    )
)

qp_k = st.query_params.get("k")
k = st.slider(
    "Neighbours k", 1, min(50, max(1, n - 1)), int(qp_k) if (qp_k or "").isdigit() and
    1 <= int(qp_k) <= min(50, max(1, n - 1)) else min(8, max(1, n - 1)), key="k",
)  # fmt: skip
st.query_params["k"] = str(k)
source = st.radio("Query", ["image from the dataset", "upload an image"], horizontal=True)

query: np.ndarray | None = None
query_index: int | None = None
if source == "image from the dataset":
    qp_index = st.query_params.get("index", "0")
    start = int(qp_index) if qp_index.isdigit() and int(qp_index) < n else 0
    query_index = int(
        st.number_input(f"Image index (0 … {n - 1})", 0, n - 1, start, step=1, key="index")
    )
    st.query_params["index"] = str(query_index)
    query = np.asarray(embeddings[query_index], dtype=np.float32)
else:
    up = st.file_uploader(
        "Image (PNG, JPEG, WebP, BMP; at most 5 MB)",
        type=["png", "jpg", "jpeg", "webp", "bmp"],
        key="upload",
    )
    if up is not None:
        from PIL import Image, UnidentifiedImageError

        data = up.getvalue()
        if len(data) > MAX_UPLOAD_BYTES:
            st.error(f"{up.name} is {len(data) / 1e6:.1f} MB; the limit is 5 MB.")
        else:
            try:
                with Image.open(io.BytesIO(data)) as probe:
                    probe.verify()  # checks the file structure without decoding all pixels
                image = Image.open(io.BytesIO(data))
                image.load()
            except (
                UnidentifiedImageError,
                Image.DecompressionBombError,
                OSError,
                SyntaxError,
                ValueError,
            ) as err:
                st.error(f"{up.name} is not a readable image ({err.__class__.__name__}).")
            else:
                try:
                    with st.spinner("Embedding with the checkpoint…"):
                        query = embed_with_checkpoint(s, row, image)
                except Exception as err:  # noqa: BLE001 - shown, never a traceback
                    st.error(f"Could not embed {up.name}: {err}")
                st.image(image, caption=f"uploaded: {up.name}", width=160)

if query is not None:
    try:
        scores, ids = neighbours(folder, query, k, exclude=query_index)
    except Exception as err:  # noqa: BLE001 - a broken index is a message
        st.error(f"Search failed: {err}")
        st.stop()
    if query_index is not None:
        q_label = int(labels[query_index])
        img = thumbnail(dataset_cfg, split, query_index)
        q1, q2 = st.columns([1, 4])
        with q1:
            if img is not None:
                st.image(img, caption=f"query #{query_index}", width=128)
        with q2:
            st.markdown(f"**Query** image #{query_index} · label **{label_text(q_label, names)}**")
            if q_label >= 0 and len(ids):
                same = float(np.mean(labels[ids] == q_label))
                st.metric(
                    "Neighbours with the query's label", f"{same:.0%}",
                    help=f"{int(round(same * len(ids)))} of {len(ids)}",
                )  # fmt: skip
    items = [
        (int(i), f"#{int(i)} · {label_text(int(labels[i]), names)} · {float(sc):.3f}")
        for sc, i in zip(scores, ids, strict=True)
    ]
    st.subheader(f"Top {len(items)} neighbours")
    shown = show_gallery(items, dataset_cfg, split)
    st.caption(f"{shown} images; caption: index · label · cosine similarity.")
