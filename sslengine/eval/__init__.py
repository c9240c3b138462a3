"""Evaluations of a frozen backbone: features, kNN, collapse metrics, layer-wise linear probes,
fine-tuning, retrieval (faiss), clustering; `jobs` runs any of them for a stored checkpoint.

The faiss-backed names (retrieval, clusters) are imported on first use, so importing this
package (the training loop does, for collapse metrics) never loads faiss.
"""

from __future__ import annotations

import importlib
from typing import Any

from sslengine.eval.collapse import (
    alignment,
    collapse_metrics,
    effective_rank,
    embedding_std,
    uniformity,
)
from sslengine.eval.features import extract_features
from sslengine.eval.knn import knn_classify, knn_predict
from sslengine.eval.probe import layerwise_probe, probe_pool_grid, train_linear_heads

_LAZY = {
    "build_index": "retrieval",
    "search": "retrieval",
    "precision_at_k": "retrieval",
    "embed_images": "retrieval",
    "embed_uploaded": "retrieval",
    "save_index": "retrieval",
    "load_index": "retrieval",
    "kmeans_clusters": "clusters",
    "prototype_clusters": "clusters",
    "cluster_usage": "clusters",
    "thumbnail_path": "thumbnails",
    "render_thumbnails": "thumbnails",
    "run_evaluation": "jobs",
    "probe_over_training": "jobs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"sslengine.eval.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sslengine.eval' has no attribute '{name}'")


__all__ = [
    "alignment",
    "collapse_metrics",
    "effective_rank",
    "embedding_std",
    "extract_features",
    "knn_classify",
    "knn_predict",
    "layerwise_probe",
    "probe_pool_grid",
    "train_linear_heads",
    "uniformity",
    *_LAZY,
]
