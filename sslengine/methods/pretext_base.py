"""Shared by the pretext-task methods: light augmentation, then a labelled transformation.

A pretext method's `make_views` returns its image tensors followed by the label tensor (long);
the loop passes the list through untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sslengine.methods.base import Method


class PretextMethod(Method):
    def light_view(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Crop + flip only: colour statistics are left alone (the pretext label does not
        depend on them, and the task should not be made easier or harder by them)."""
        aug = self.augmenter(
            scale_min=0.5, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0
        )
        return aug(images, generator)

    def uses_sync_bn(self) -> bool:
        return True
