"""Weighted k-nearest-neighbour classification on frozen features.

Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
sec. 3.4, as implemented in DINO's ``eval_knn.py`` (Caron et al. 2021): features are
L2-normalised, the k most cosine-similar training points vote, each with weight
exp(s_i / T), and the class with the largest summed weight wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def _as_tensor(a: ArrayLike, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a
    return t.to(device=device, dtype=dtype)


@torch.no_grad()
def knn_predict(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[int, Tensor]:
    """Predicted class of every test point for every k.

    Args:
        train_features: (N, D) float; train_labels: (N,) int in [0, num_classes).
        test_features: (M, D) float.
        ks: neighbourhood sizes; a k larger than N is clipped to N.
        temperature: T in the vote weight exp(cos / T) (0.07 in Wu et al. and DINO).
        num_classes: C; None = max(train_labels) + 1.
        batch_size: test points scored per chunk: memory is O(batch_size * N).
        device: where to compute; None = train_features' device (CPU for numpy).

    Returns:
        {k: (M,) int64 predictions on CPU}. Ties between class scores go to the lower class
        index (argmax returns the first maximum).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = train_features.device if isinstance(train_features, Tensor) else "cpu"
    device = torch.device(device)
    train = _as_tensor(train_features, torch.float32, device)
    labels = _as_tensor(train_labels, torch.int64, device)
    test = _as_tensor(test_features, torch.float32, device)
    if train.dim() != 2 or test.dim() != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {train.shape}, {test.shape}")
    if labels.shape != (train.shape[0],):
        raise ValueError(f"train_labels must be ({train.shape[0]},), got {tuple(labels.shape)}")
    if train.shape[0] == 0:
        raise ValueError("the kNN memory (train_features) is empty")
    if labels.min() < 0:
        raise ValueError("train_labels must be non-negative class indices")
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.max()) >= c:
        raise ValueError(f"train label {int(labels.max())} >= num_classes={c}")

    train = F.normalize(train, dim=1)
    test = F.normalize(test, dim=1)
    k_max = min(max(ks), train.shape[0])
    preds: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, test.shape[0], batch_size):
        sim = test[start : start + batch_size] @ train.T  # (b, N) cosine similarities
        top_sim, top_idx = sim.topk(k_max, dim=1)  # sorted, most similar first
        top_labels = labels[top_idx]
        # exp((s - s_max) / T): the same argmax as exp(s / T) but cannot overflow for small T
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        for k in ks:
            kk = min(k, k_max)
            scores = torch.zeros(sim.shape[0], c, device=device)
            scores.scatter_add_(1, top_labels[:, :kk], weights[:, :kk])
            preds[k].append(scores.argmax(dim=1).cpu())
    empty = torch.empty(0, dtype=torch.int64)
    return {k: torch.cat(p) if p else empty for k, p in preds.items()}


def knn_classify(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Top-1 accuracy of the weighted kNN classifier (see `knn_predict` for the arguments).

    Returns:
        {"knn_top1_k{k}": accuracy in [0, 1]} keyed by the requested k, even when clipped.
    """
    test_y = _as_tensor(test_labels, torch.int64, torch.device("cpu"))
    n_test = test_features.shape[0]
    if test_y.shape != (n_test,):
        raise ValueError(f"test_labels must be ({n_test},), got {tuple(test_y.shape)}")
    if n_test == 0:
        raise ValueError("no test points to classify")
    preds = knn_predict(
        train_features,
        train_labels,
        test_features,
        ks,
        temperature,
        num_classes,
        batch_size,
        device,
    )
    return {f"knn_top1_k{k}": (preds[k] == test_y).double().mean().item() for k in ks}
