"""Evaluations of a frozen backbone: features, kNN, collapse metrics (and, beside them,
linear probes, retrieval and clustering)."""

from sslengine.eval.collapse import (
    alignment,
    collapse_metrics,
    effective_rank,
    embedding_std,
    uniformity,
)
from sslengine.eval.features import extract_features
from sslengine.eval.knn import knn_classify, knn_predict

__all__ = [
    "alignment",
    "collapse_metrics",
    "effective_rank",
    "embedding_std",
    "extract_features",
    "knn_classify",
    "knn_predict",
    "uniformity",
]
