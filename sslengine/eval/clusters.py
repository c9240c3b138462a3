"""Cluster assignments of a dataset's images: SwAV's own prototypes, or k-means for the rest.

- SwAV (Caron et al. 2020, sec. 3.1): the score of image n against prototype k is
  z_n . c_k with z = normalize(projector(backbone(x))) and c the L2-normalised prototype rows;
  the image's cluster is the argmax (the codes Sinkhorn-Knopp computes during training are
  this score matrix made equipartitioned over a batch; at evaluation the raw argmax shows
  which prototypes the network actually uses).
- Any other method: spherical k-means (faiss.Kmeans, ``spherical=True``: centroids are
  re-normalised after every iteration, so it clusters by cosine) on the L2-normalised
  embeddings; an image's score is its cosine to the assigned centroid.

Usage diagnostics, per cluster count c_k over N images and K clusters:

- ``dead``: clusters no image is assigned to (c_k = 0);
- ``dominant``: clusters holding more than 4x their equipartition share, c_k > 4 N / K. SwAV's
  Sinkhorn step exists to prevent exactly this collapse onto few prototypes; the factor 4 flags
  a prototype doing the work of four while staying quiet for the mild imbalance of real
  classes;
- ``usage_entropy`` = -sum_k p_k log p_k with p_k = c_k / N (natural log, 0 log 0 = 0), to
  compare with its maximum ``max_entropy`` = log K (all clusters used equally).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DOMINANT_FACTOR",
    "ClusterResult",
    "assign_to_centroids",
    "cluster_usage",
    "kmeans_clusters",
    "prototype_clusters",
]

DOMINANT_FACTOR = 4.0
TOP_IMAGES = 16


@dataclass
class ClusterResult:
    """Clusters of N images into K groups (arrays indexed by image / cluster number).

    assignments int64 (N,); scores float32 (N,) (score of the assigned cluster); centroids
    float32 (K, D), L2-normalised; counts int64 (K,); top_images {cluster: image indices,
    best score first, up to `TOP_IMAGES`}, only for used clusters.
    """

    source: str
    assignments: np.ndarray
    scores: np.ndarray
    centroids: np.ndarray
    counts: np.ndarray
    top_images: dict[int, list[int]]
    dead: int
    dominant: int
    usage_entropy: float
    max_entropy: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def metrics(self) -> dict[str, Any]:
        """The store row's metrics (docs/eval-contract.md, kind ``clusters``)."""
        return {
            "k": self.k,
            "source": self.source,
            "dead": self.dead,
            "dominant": self.dominant,
            "usage_entropy": self.usage_entropy,
            "max_entropy": self.max_entropy,
        }

    def save(self, folder: str | Path) -> Path:
        """assignments.npy, scores.npy, centroids.npy, usage.json, top_images.json (the
        contract's files; meta.json is the caller's)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "assignments.npy", self.assignments.astype(np.int64))
        np.save(folder / "scores.npy", self.scores.astype(np.float32))
        np.save(folder / "centroids.npy", self.centroids.astype(np.float32))
        (folder / "usage.json").write_text(json.dumps({"counts": self.counts.tolist()}))
        top = {str(c): idx for c, idx in self.top_images.items()}
        (folder / "top_images.json").write_text(json.dumps(top))
        return folder


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be (N >= 1, D), got shape {x.shape}")
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def assign_to_centroids(
    embeddings: np.ndarray, centroids: np.ndarray, batch_size: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Most cosine-similar centroid of every row: (assignments int64 (N,), scores float32 (N,)).
    Ties go to the lower cluster index."""
    x = _normalize_rows(embeddings)
    c = _normalize_rows(centroids)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"embeddings have {x.shape[1]} dims, centroids {c.shape[1]}")
    assign = np.empty(x.shape[0], dtype=np.int64)
    scores = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        s = x[start : start + batch_size] @ c.T
        a = s.argmax(axis=1)
        assign[start : start + len(a)] = a
        scores[start : start + len(a)] = s[np.arange(len(a)), a]
    return assign, scores


def cluster_usage(
    assignments: np.ndarray, scores: np.ndarray, k: int, top_n: int = TOP_IMAGES
) -> dict[str, Any]:
    """Counts, dead/dominant clusters, usage entropy and top-scoring images (module docstring).

    Returns {"counts": int64 (K,), "dead", "dominant", "usage_entropy", "max_entropy",
    "top_images": {cluster: [image indices, best first; equal scores by index]}}.
    """
    assignments = np.asarray(assignments, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    n = len(assignments)
    if k < 1 or n == 0 or scores.shape != assignments.shape:
        raise ValueError(f"need k >= 1 and matching non-empty arrays, got k={k}, {scores.shape}")
    if assignments.min() < 0 or assignments.max() >= k:
        raise ValueError(f"assignments must be in [0, {k}), got [{assignments.min()}, "
                         f"{assignments.max()}]")  # fmt: skip
    counts = np.bincount(assignments, minlength=k).astype(np.int64)
    p = counts[counts > 0] / n
    entropy = float(-(p * np.log(p)).sum())
    # one sort for all clusters: by cluster, then score descending, then image index
    order = np.lexsort((np.arange(n), -scores, assignments))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    top = {
        int(c): order[starts[c] : starts[c] + min(top_n, counts[c])].tolist()
        for c in np.flatnonzero(counts)
    }
    return {
        "counts": counts,
        "dead": int((counts == 0).sum()),
        "dominant": int((counts > DOMINANT_FACTOR * n / k).sum()),
        "usage_entropy": entropy,
        "max_entropy": math.log(k),
        "top_images": top,
    }


def _result(
    source: str,
    assign: np.ndarray,
    scores: np.ndarray,
    centroids: np.ndarray,
    top_n: int,
    extra: dict[str, Any] | None = None,
) -> ClusterResult:
    usage = cluster_usage(assign, scores, centroids.shape[0], top_n)
    return ClusterResult(
        source=source,
        assignments=assign,
        scores=scores,
        centroids=_normalize_rows(centroids),
        counts=usage["counts"],
        top_images=usage["top_images"],
        dead=usage["dead"],
        dominant=usage["dominant"],
        usage_entropy=usage["usage_entropy"],
        max_entropy=usage["max_entropy"],
        extra=extra or {},
    )


def kmeans_clusters(
    embeddings: np.ndarray,
    k: int,
    niter: int = 25,
    seed: int = 0,
    top_n: int = TOP_IMAGES,
) -> ClusterResult:
    """Spherical k-means (faiss) of the L2-normalised (N, D) embeddings into k clusters."""
    x = _normalize_rows(embeddings)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of images), got {k}")
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,  # small evaluation sets: no "too few points" warning
        max_points_per_centroid=max(256, -(-n // k)),  # train on every point
    )
    km.train(x)
    assign, scores = assign_to_centroids(x, km.centroids)
    return _result("kmeans", assign, scores, km.centroids, top_n, {"niter": niter})


@torch.no_grad()
def prototype_clusters(
    projector: nn.Module,
    prototypes: Tensor,
    features: np.ndarray,
    batch_size: int = 1024,
    top_n: int = TOP_IMAGES,
) -> ClusterResult:
    """SwAV's assignment of each image to its highest-scoring prototype.

    Args:
        projector: the run's projection head (eval mode is set here, and restored).
        prototypes: (K, P) prototype matrix (``method.prototypes.weight``).
        features: backbone features (N, D) (the pooled tap the projector was trained on).
    """
    param = next(projector.parameters(), None)
    device = param.device if param is not None else prototypes.device
    protos = F.normalize(prototypes.detach().float().to(device), dim=1)
    was_training = projector.training
    projector.eval()
    assign = np.empty(features.shape[0], dtype=np.int64)
    scores = np.empty(features.shape[0], dtype=np.float32)
    try:
        for start in range(0, features.shape[0], batch_size):
            h = torch.from_numpy(np.asarray(features[start : start + batch_size], np.float32))
            z = F.normalize(projector(h.to(device)).float(), dim=1)
            best, idx = (z @ protos.T).max(dim=1)
            assign[start : start + len(idx)] = idx.cpu().numpy()
            scores[start : start + len(idx)] = best.cpu().numpy()
    finally:
        projector.train(was_training)
    return _result("prototypes", assign, scores, protos.cpu().numpy(), top_n)
