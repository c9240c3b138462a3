"""Evaluations run on a trained backbone (called by the loop at the end and by eval tasks)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sslengine.config import ExperimentConfig
from sslengine.data.datasets import ImageArrayDataset
from sslengine.distributed import is_dist
from sslengine.eval.features import (
    collective_device,
    extract_features,
    extract_features_distributed,
    shard_indices,
)
from sslengine.eval.knn import knn_classify, knn_predict


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
    """Weighted kNN (T=cfg.eval.knn_temperature) on the features at `cfg.eval.knn_tap`
    (default the pooled output; a 4-D tap is globally average-pooled), test split vs train.
    With `cfg.eval.knn_patch_grid` g > 1 an image's feature is the mean over its g x g cells
    (`extract_features`' patch_grid).

    In a process group every rank must call it, and the ranks share the work: the memory
    (train features) is extracted shard by shard and all-gathered in dataset order, each rank
    classifies its own shard of the test points against the whole memory, and the numbers of
    correct predictions are summed. Every rank returns the same accuracies, equal to the
    one-process result.
    """
    if test is None:
        train, test = holdout_split(train, seed=cfg.seed)
    if cfg.eval.knn_max_train and len(train) > cfg.eval.knn_max_train:
        rng = np.random.default_rng(cfg.seed)
        train = train.subset(np.sort(rng.choice(len(train), cfg.eval.knn_max_train, replace=False)))
    if is_dist():
        return _knn_eval_distributed(backbone, train, test, cfg, mean, std, device)
    tap, grid = cfg.eval.knn_tap, cfg.eval.knn_patch_grid
    f_train = extract_features(
        backbone, train.images, mean, std, (tap,), device=device, patch_grid=grid
    )[tap]
    f_test = extract_features(
        backbone, test.images, mean, std, (tap,), device=device, patch_grid=grid
    )[tap]
    return knn_classify(
        torch.from_numpy(f_train),
        torch.from_numpy(np.asarray(train.labels)),
        torch.from_numpy(f_test),
        torch.from_numpy(np.asarray(test.labels)),
        ks=tuple(cfg.eval.knn_k),
        temperature=cfg.eval.knn_temperature,
        num_classes=len(train.classes),
    )


def _knn_eval_distributed(
    backbone: nn.Module,
    train: ImageArrayDataset,
    test: ImageArrayDataset,
    cfg: ExperimentConfig,
    mean,
    std,
    device: torch.device,
) -> dict[str, float]:
    if len(test) == 0:
        raise ValueError("no test points to classify")
    tap, grid = cfg.eval.knn_tap, cfg.eval.knn_patch_grid
    f_train = extract_features_distributed(
        backbone, train.images, mean, std, (tap,), device=device, patch_grid=grid
    )
    mine = shard_indices(len(test), dist.get_rank(), dist.get_world_size())
    ks = tuple(cfg.eval.knn_k)
    correct = torch.zeros(len(ks), dtype=torch.int64)
    if mine.size:
        f_test = extract_features(
            backbone,
            test.images,
            mean,
            std,
            (tap,),
            device=device,
            indices=mine,
            patch_grid=grid,
        )
        preds = knn_predict(
            torch.from_numpy(f_train[tap]),
            torch.from_numpy(np.asarray(train.labels)),
            torch.from_numpy(f_test[tap]),
            ks=ks,
            temperature=cfg.eval.knn_temperature,
            num_classes=len(train.classes),
        )
        truth = torch.from_numpy(np.asarray(test.labels, dtype=np.int64)[mine])
        correct = torch.stack([(preds[k] == truth).sum() for k in ks])
    correct = correct.to(collective_device())
    dist.all_reduce(correct)
    # the same number as knn_classify's mean of 0/1 doubles: an exact count over n_test
    return {f"knn_top1_k{k}": int(c) / len(test) for k, c in zip(ks, correct.tolist(), strict=True)}
