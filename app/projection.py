"""2-D projections of stored embeddings for the Embeddings page (drawing only, not a metric).

PCA is the default: deterministic, fast (a thin SVD of the sampled rows) and faithful to
global distances. UMAP (McInnes et al. 2018) is offered when the ``umap`` package is
installed; it keeps local neighbourhoods and shows clusters more clearly, but distances
between clusters in its picture mean little.
"""

from __future__ import annotations

import numpy as np


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project (N, D) rows onto their first two principal components -> float64 (N, 2).

    Centre, thin SVD ``Xc = U S V^T``, scores ``U[:, :2] * S[:2]`` (= ``Xc @ V[:, :2]``).
    The sign of each axis is fixed so the largest-magnitude loading of its component is
    positive (as scikit-learn's ``svd_flip``), so the picture does not flip between reruns.
    Fewer than 2 dimensions or rows are padded with zero columns.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {x.shape}")
    n = x.shape[0]
    out = np.zeros((n, 2))
    if n == 0:
        return out
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, s.shape[0])
    for j in range(k):
        sign = np.sign(vt[j, np.argmax(np.abs(vt[j]))]) or 1.0
        out[:, j] = u[:, j] * s[j] * sign
    return out


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """UMAP to 2-D with cosine distance (the embeddings are compared by cosine everywhere)."""
    import umap

    n_neighbors = max(2, min(15, x.shape[0] - 1))
    reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=n_neighbors, random_state=seed)
    return np.asarray(reducer.fit_transform(np.asarray(x, dtype=np.float32)), dtype=np.float64)


def sample_indices(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A sorted, reproducible sample of ``size`` row indices out of ``n`` (all when fewer)."""
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))
