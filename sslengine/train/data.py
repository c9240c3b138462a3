"""Loading a config's train/test splits once, and their normalisation statistics."""

from __future__ import annotations

import numpy as np

from sslengine.config import ExperimentConfig
from sslengine.data.datasets import ImageArrayDataset, load_dataset
from sslengine.data.paths import dataset_roots
from sslengine.settings import cache_dir


def load_split(cfg: ExperimentConfig, split: str) -> ImageArrayDataset:
    """One split, decoded once into the uint8 cache, capped per class as
    `DatasetConfig.max_per_class_of` says."""
    d = cfg.dataset
    return load_dataset(
        d.name,
        d.root,
        split,
        d.image_size,
        cache_dir(),
        max_per_class=d.max_per_class_of(split),
        allowed_roots=dataset_roots() if d.root else None,
    )


def load_splits(cfg: ExperimentConfig) -> tuple[ImageArrayDataset, ImageArrayDataset | None]:
    """(train, test); test is None when the dataset has no separate labelled test split."""
    train = load_split(cfg, cfg.dataset.train_split)
    try:
        test = load_split(cfg, cfg.dataset.test_split)
    except (ValueError, FileNotFoundError):
        test = None
    if test is not None and test.source == train.source:
        test = None  # same folder twice (an ImageFolder with no split dirs): not a held-out set
    return train, test


def dataset_mean_std(ds: ImageArrayDataset, sample: int = 5000) -> tuple[tuple, tuple]:
    """Per-channel mean/std in [0, 1] from an evenly spaced sample (deterministic)."""
    n = len(ds)
    idx = np.linspace(0, n - 1, num=min(n, sample)).astype(np.int64)
    x = np.asarray(ds.images[idx], dtype=np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    std = np.where(std < 1e-3, 1.0, std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
