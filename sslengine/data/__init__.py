"""Datasets (decoded once to a memory-mapped uint8 cache), path confinement, batched views.

- ``datasets``: ``load_dataset``, ``dataset_info``, ``ImageArrayDataset``, ``DatasetError``.
- ``paths``: ``dataset_roots``, ``resolve_within_roots``, ``PathNotAllowedError``.
- ``augment``: ``ViewConfig``, ``BatchAugment``, ``MultiCrop``, ``sample_params``,
  ``apply_params``, ``to_tensor_batch``, ``pil_reference_view``.
- ``pretext``: rotation / jigsaw / relative-patch inputs and labels.

Names are imported lazily: the decoding pool's worker processes import
``sslengine.data.datasets`` and must not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetError": "datasets",
    "ImageArrayDataset": "datasets",
    "KNOWN_DATASETS": "datasets",
    "dataset_info": "datasets",
    "load_dataset": "datasets",
    "PathNotAllowedError": "paths",
    "dataset_roots": "paths",
    "resolve_within_roots": "paths",
    "BatchAugment": "augment",
    "MultiCrop": "augment",
    "ViewConfig": "augment",
    "apply_params": "augment",
    "pil_reference_view": "augment",
    "sample_params": "augment",
    "to_tensor_batch": "augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sslengine.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"sslengine.data.{module}"), name)
