"""Searching a stored retrieval index for the Retrieval page.

The index, and how to search it, belong to ``sslengine.eval.retrieval``; this module keeps one
loaded index per folder for the app's process (faiss memory-maps it) and asks for one hit more
than shown, so the query image itself can be dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from sslengine.store import EvalResultRecord, Store


@st.cache_resource(max_entries=8, show_spinner="Loading the index…")
def _index(path: str, mtime_ns: int):  # -> faiss.Index
    from sslengine.eval.retrieval import load_index

    return load_index(Path(path))


def neighbours(
    folder: Path, query: np.ndarray, k: int, exclude: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarities, image indices) of the ``k`` nearest indexed images, best first;
    ``exclude`` (the query's own index) is left out, as are the -1 ids faiss pads with."""
    from sslengine.eval.retrieval import search

    index_file = Path(folder) / "index.faiss"
    if not index_file.is_file():
        raise FileNotFoundError(f"no index.faiss in {folder}")
    index = _index(str(index_file), index_file.stat().st_mtime_ns)
    want = min(k + (1 if exclude is not None else 0), index.ntotal)
    scores, ids = search(index, np.asarray(query, dtype=np.float32).reshape(1, -1), want)
    scores, ids = scores.reshape(-1), ids.reshape(-1)
    keep = ids >= 0
    if exclude is not None:
        keep &= ids != exclude
    return scores[keep][:k], ids[keep][:k].astype(np.int64)


@st.cache_resource(max_entries=2, show_spinner="Loading the checkpoint…")
def _backbone(path: str, mtime_ns: int):  # -> (Backbone, LoadedCheckpoint)
    from sslengine.eval.jobs import load_backbone

    # CPU: one image is cheap, and the app's process never holds a GPU
    return load_backbone(path, device="cpu")


def embed_with_checkpoint(store: Store, row: EvalResultRecord, image: Image.Image) -> np.ndarray:
    """Embedding (D,) of an uploaded image by the checkpoint and tap a retrieval row indexed,
    prepared as the dataset cache prepares images (``sslengine.eval.retrieval.embed_uploaded``)."""
    from sslengine.eval.retrieval import embed_uploaded

    ckpt = next((c for c in store.list_checkpoints(row.run_id) if c.step == row.checkpoint_step),
                None)  # fmt: skip
    if ckpt is None or not Path(ckpt.path).is_file():
        raise FileNotFoundError(f"the checkpoint of step {row.checkpoint_step} is not available")
    backbone, loaded = _backbone(ckpt.path, Path(ckpt.path).stat().st_mtime_ns)
    vector = embed_uploaded(
        backbone,
        image,
        loaded.cfg.dataset.image_size,
        loaded.mean,
        loaded.std,
        tap=row.layer or "pooled",
        device="cpu",
    )
    return np.asarray(vector, dtype=np.float32).reshape(-1)
