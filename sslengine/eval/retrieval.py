"""Nearest-neighbour image retrieval over L2-normalised embeddings with faiss (Johnson et al.
2019, "Billion-scale similarity search with GPUs").

Embeddings are L2-normalised, so inner product = cosine similarity and every index uses
``METRIC_INNER_PRODUCT``. Index types:

- ``flat``: exact brute force (``IndexFlatIP``). Chosen by ``auto`` below 50,000 vectors,
  where an exact search of one query costs well under a millisecond per 10k vectors.
- ``hnsw``: ``IndexHNSWFlat`` (Malkov & Yashunin 2018), M = 32 links per node,
  efConstruction = max(80, 2M + 16); ``auto``'s choice from 50,000 vectors on: no training pass
  and the best recall per query time of faiss' CPU indexes. Level 0 of a faiss HNSW keeps 2M
  neighbours per node chosen from an efConstruction-long candidate list, so efConstruction
  below 2M leaves the graph under-connected: faiss' default 40 plateaued at recall@10 0.98
  and needed efSearch 2048 for 0.95 on 1M clustered vectors, where 80 reaches it at efSearch
  64, 19x faster per query at p95, for a 1.6x longer build (BENCHMARKS.md, "Retrieval at
  scale").
- ``ivf``: ``IndexIVFFlat`` with nlist = 4 sqrt(N) lists (faiss' guideline 4-16 sqrt(N)),
  at most N / 39 so k-means has the 39 points per centroid faiss asks for; trained on
  at most 256 points per list.

An approximate index is TUNED while it is built: a random 10% of the vectors (at most 1,000)
is held out, the rest indexed, and the search effort (``efSearch`` for HNSW, ``nprobe`` for
IVF) starts at 16 / 8 and doubles until recall@10 of the held-out vectors as queries, against
the exact top 10 of the indexed ones, reaches ``target_recall`` (0.95), up to 4096 / nlist;
then the held-out vectors are added too. Queries must be held out: a vector already in an
HNSW graph is found through its own node, and tuning with those overstated recall (0.95
reached that way gave 0.86 on fresh queries, 8k random 32-d vectors). faiss stores
efSearch / nprobe in the index file, so a loaded index searches with the tuned effort.

Measured (1 thread, 100k vectors in 64-d, recall@10 on 500 fresh queries vs exact search; IVF
rows: no graph; HNSW rows: efConstruction 80; 2026-12-01, other jobs on the 2 cores):

=====================================  ============================  ========== ======
data                                   tuned effort                  build+tune recall
=====================================  ============================  ========== ======
uniformly random (the hardest case)    IVF nprobe 512 of 1,265       10 s       0.960
uniformly random                       HNSW efSearch 256             20 s       0.967
mixture of 200 Gaussian clusters       IVF nprobe 8                  9 s        0.995
mixture of 200 Gaussian clusters       HNSW efSearch 32              7 s        0.988
=====================================  ============================  ========== ======

HNSW indexes are wrapped in ``IndexIDMap2`` (held-out vectors are added last but keep their
row numbers as ids); IVF indexes take ids natively.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from PIL import Image
from torch import nn

from sslengine.eval.features import extract_features

__all__ = [
    "AUTO_FLAT_BELOW",
    "build_index",
    "drop_self_matches",
    "embed_images",
    "embed_uploaded",
    "build_index_with_tuning",
    "index_type_of",
    "l2_normalize",
    "load_index",
    "precision_at_k",
    "save_index",
    "search",
]

log = logging.getLogger(__name__)

AUTO_FLAT_BELOW = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
_FEW_QUERIES = 8  # searched with one faiss thread (see `search`)
_EF_START, _EF_MAX = 16, 4096
_NPROBE_START = 8
_TUNE_QUERIES = 1000


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a C-contiguous float32 copy (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, np.maximum(norms, 1e-12), out=x)
    return x


def index_type_of(index: faiss.Index) -> str:
    """'flat' | 'ivf' | 'hnsw' for an index built here (or read back from disk)."""
    index = _unwrap(index)
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    raise ValueError(f"unsupported faiss index {type(index).__name__}")


def _ivf_nlist(n: int) -> int:
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def _unwrap(index: faiss.Index) -> faiss.Index:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    return index


def build_index(
    embeddings: np.ndarray,
    index_type: str = "auto",
    target_recall: float | None = 0.95,
    hnsw_m: int = HNSW_M,
    nlist: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """An inner-product index over the L2-normalised rows of `embeddings` (N, D); ids are row
    numbers. See `build_index_with_tuning` for the arguments."""
    return build_index_with_tuning(embeddings, index_type, target_recall, hnsw_m, nlist, seed)[0]


def build_index_with_tuning(
    embeddings: np.ndarray,
    index_type: str = "auto",
    target_recall: float | None = 0.95,
    hnsw_m: int = HNSW_M,
    nlist: int | None = None,
    seed: int = 0,
) -> tuple[faiss.Index, dict[str, Any]]:
    """Build (and tune) an index; returns it with how it was tuned.

    Args:
        index_type: "auto" (flat below `AUTO_FLAT_BELOW` vectors, else hnsw), "flat", "ivf"
            or "hnsw" (see the module docstring for their parameters).
        target_recall: tune an approximate index's search effort to this recall@10 on
            held-out queries (None: faiss' defaults, efSearch 16 / nprobe 1).
        hnsw_m: HNSW links per node; nlist: IVF lists (default 4 sqrt(N), <= N / 39).
        seed: IVF's k-means and the held-out sample.

    Returns:
        (index, {"index_type", "param": "efSearch" | "nprobe" | None, "value", "recall"}),
        "recall" being the held-out recall@10 reached (1.0 for flat, None if not tuned).
    """
    x = l2_normalize(embeddings)
    n, d = x.shape
    if n == 0:
        raise ValueError("cannot index zero embeddings")
    if index_type == "auto":
        index_type = "flat" if n < AUTO_FLAT_BELOW else "hnsw"
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, {"index_type": "flat", "param": None, "value": None, "recall": 1.0}
    if index_type not in ("hnsw", "ivf"):
        raise ValueError(f"unknown index_type '{index_type}'; use auto, flat, ivf or hnsw")
    k = min(10, n - 2)
    n_cal = min(_TUNE_QUERIES, n // 10) if (target_recall is not None and k >= 1) else 0
    perm = np.random.default_rng(seed).permutation(n)
    held, kept = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    if index_type == "hnsw":
        base = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = max(HNSW_EF_CONSTRUCTION, 2 * hnsw_m + 16)
        index = faiss.IndexIDMap2(base)
        index.own_fields = True  # the wrapper frees the graph; Python must not free it twice
        base.this.disown()
    else:
        lists = nlist or _ivf_nlist(len(kept))  # k-means trains on the indexed part only
        if not 1 <= lists <= len(kept):
            raise ValueError(f"nlist must be in [1, {len(kept)}], got {lists}")
        # the factory owns its coarse quantizer: no Python reference has to outlive it
        index = faiss.index_factory(d, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = 256
        index.train(x[kept])
    index.add_with_ids(x[kept], kept.astype(np.int64))
    tuning: dict[str, Any] = {
        "index_type": index_type,
        "param": None,
        "value": None,
        "recall": None,
    }
    if n_cal:
        tuning.update(_tune(index, x[held], x[kept], kept, k, target_recall))
    if n_cal:
        index.add_with_ids(x[held], held.astype(np.int64))
    return index, tuning


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar indexed vectors of every query (queries are L2-normalised here).

    Returns (scores float32 (M, k) cosine similarities, best first; ids int64 (M, k), -1
    where the index has fewer than k vectors to return).

    A handful of queries (the dashboard's case) is searched with one faiss thread: faiss
    parallelises over queries, so a single query gains nothing from more threads and pays an
    OpenMP barrier that on a busy host cost 8-20 ms at p95 against 0.1-0.2 ms with one thread.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = l2_normalize(queries)
    if q.shape[1] != index.d:
        raise ValueError(f"queries have {q.shape[1]} dims, the index {index.d}")
    if len(q) <= _FEW_QUERIES:
        with _one_faiss_thread():
            scores, ids = index.search(q, k)
    else:
        scores, ids = index.search(q, k)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


_THREADS_LOCK = threading.Lock()


@contextmanager
def _one_faiss_thread():
    """faiss' OpenMP thread count is process-wide: set it to 1 and restore it, one caller at a
    time (the dashboard searches from several session threads)."""
    with _THREADS_LOCK:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


def drop_self_matches(ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Neighbour lists without the query itself: (M, >= k + 1) ids -> (M, k) ids.

    When the indexed set is also the query set, each query's best match is itself; this
    removes it wherever it appears (an approximate index may rank a duplicate first).
    """
    out = np.full((ids.shape[0], k), -1, dtype=np.int64)
    for row, (neighbours, own) in enumerate(zip(ids, np.asarray(query_ids), strict=True)):
        kept = neighbours[neighbours != own][:k]
        out[row, : len(kept)] = kept
    return out


def precision_at_k(ids: np.ndarray, labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the first k neighbours sharing the query's label.

    `ids` (M, >= k) index `labels` (N,); a missing neighbour (-1) counts as a miss.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] < k or k < 1:
        raise ValueError(f"ids must be (M, >= {k}) with k >= 1, got {ids.shape}")
    labels = np.asarray(labels)
    query_labels = np.asarray(query_labels)
    if len(query_labels) != ids.shape[0] or ids.shape[0] == 0:
        raise ValueError(f"{len(query_labels)} query labels for {ids.shape[0]} queries")
    top = ids[:, :k]
    found = top >= 0
    neighbour_labels = np.where(found, labels[np.where(found, top, 0)], -1)
    same = (neighbour_labels == query_labels[:, None]) & found
    return float(same.mean())


def _tune(
    index: faiss.Index,
    queries: np.ndarray,
    indexed: np.ndarray,
    indexed_ids: np.ndarray,
    k: int,
    target_recall: float,
) -> dict[str, Any]:
    """Double the search effort until recall@k of `queries` (not in the index) reaches the
    target; exact answers by brute force over `indexed` (whose ids are `indexed_ids`)."""
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexHNSW):
        param, value, limit = "efSearch", _EF_START, _EF_MAX

        def set_effort(v: int) -> None:
            inner.hnsw.efSearch = v
    else:
        ivf = faiss.extract_index_ivf(index)
        param, value, limit = "nprobe", min(_NPROBE_START, ivf.nlist), ivf.nlist

        def set_effort(v: int) -> None:
            ivf.nprobe = v

    exact = faiss.IndexFlatIP(indexed.shape[1])
    exact.add(indexed)
    truth = indexed_ids[exact.search(queries, k)[1]]
    while True:
        set_effort(value)
        got = index.search(queries, k)[1]
        recall = float(np.mean([len(set(a) & set(t)) for a, t in zip(got, truth, strict=True)]))
        recall /= k
        if recall >= target_recall or value >= limit:
            break
        value = min(2 * value, limit)
    if recall < target_recall:
        log.warning("index reaches recall@%d %.3f < %.3f at %s=%d", k, recall, target_recall,
                    param, value)  # fmt: skip
    return {"param": param, "value": value, "recall": recall}


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """faiss.write_index to `path` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def load_index(path: str | Path, mmap: bool = True) -> faiss.Index:
    """faiss.read_index, memory-mapped where faiss can: the inverted lists of an IVF index
    (IO_FLAG_MMAP) and the vectors of flat / HNSW storage (IO_FLAG_MMAP_IFC), so many readers
    (dashboard sessions) share one copy through the page cache."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index not found: {path}")
    if mmap:
        with open(path, "rb") as f:
            fourcc = f.read(4)
        # faiss' IVF index files start with "Iw" (IwFl = IndexIVFFlat, IwPQ, ...)
        flag = faiss.IO_FLAG_MMAP if fourcc.startswith(b"Iw") else faiss.IO_FLAG_MMAP_IFC
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            log.info("index %s cannot be memory-mapped; reading it into memory", path)
    return faiss.read_index(str(path))


def embed_images(
    backbone: nn.Module,
    images_uint8: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    tap: str = "pooled",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """L2-normalised float32 (N, D) embeddings of uint8 (N, H, W, 3) images at `tap` (4-D taps
    are globally average-pooled), from the frozen backbone in eval mode."""
    feats = extract_features(
        backbone,
        images_uint8,
        mean,
        std,
        taps=(tap,),
        batch_size=batch_size,
        device=device,
        progress=progress,
    )[tap]
    return l2_normalize(feats)


def embed_uploaded(
    backbone: nn.Module,
    pil_image: Image.Image,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    tap: str = "pooled",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Embedding (1, D) of one uploaded image, prepared exactly as the dataset cache prepares
    its images (EXIF orientation, RGB conversion, shorter side to `image_size`, centre crop),
    so a query photo lands where its dataset twin would."""
    # the decoder's own helpers: one definition of "how an image enters the cache"
    from PIL import ImageOps

    from sslengine.data.datasets import _resize_center_crop, _to_rgb

    rgb = _to_rgb(ImageOps.exif_transpose(pil_image))
    array = _resize_center_crop(rgb, image_size)[None]
    return embed_images(backbone, array, mean, std, tap=tap, batch_size=1, device=device)
