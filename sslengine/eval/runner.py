"""Evaluations run on a trained backbone (called by the loop at the end and by eval tasks)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sslengine.config import ExperimentConfig
from sslengine.data.datasets import ImageArrayDataset
from sslengine.eval.features import extract_features
from sslengine.eval.knn import knn_classify


def holdout_split(ds: ImageArrayDataset, fraction: float = 0.1, seed: int = 0):
    """Deterministic train/held-out split for datasets that ship without a test split."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ds))
    n_test = max(1, int(len(ds) * fraction))
    return ds.subset(np.sort(perm[n_test:])), ds.subset(np.sort(perm[:n_test]))


def knn_eval(
    backbone: nn.Module,
    train: ImageArrayDataset,
    test: ImageArrayDataset | None,
    cfg: ExperimentConfig,
    mean,
    std,
    device: torch.device,
) -> dict[str, float]:
    """Weighted kNN (T=cfg.eval.knn_temperature) on pooled features, test split vs train."""
    if test is None:
        train, test = holdout_split(train, seed=cfg.seed)
    if cfg.eval.knn_max_train and len(train) > cfg.eval.knn_max_train:
        rng = np.random.default_rng(cfg.seed)
        train = train.subset(np.sort(rng.choice(len(train), cfg.eval.knn_max_train, replace=False)))
    f_train = extract_features(backbone, train.images, mean, std, device=device)["pooled"]
    f_test = extract_features(backbone, test.images, mean, std, device=device)["pooled"]
    return knn_classify(
        torch.from_numpy(f_train),
        torch.from_numpy(np.asarray(train.labels)),
        torch.from_numpy(f_test),
        torch.from_numpy(np.asarray(test.labels)),
        ks=tuple(cfg.eval.knn_k),
        temperature=cfg.eval.knn_temperature,
        num_classes=len(train.classes),
    )
