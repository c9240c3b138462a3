"""RotNet (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image
Rotations"): every image in all 4 rotations (0/90/180/270 degrees), a linear classifier on the
pooled features predicts which; cross-entropy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslengine.data.pretext import rotate_batch
from sslengine.losses import pretext_cross_entropy
from sslengine.methods.base import StepOutput, register
from sslengine.methods.pretext_base import PretextMethod


@register("rotation")
class Rotation(PretextMethod):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        self.head = nn.Linear(self.backbone.out_dim, 4)

    def make_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        x_rot, labels = rotate_batch(self.light_view(images, generator))
        return [x_rot, labels]

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        x_rot, labels = views
        h = self.backbone(x_rot)
        logits = self.head(h)
        loss = pretext_cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        n = x_rot.shape[0] // 4  # block 0 holds the unrotated images
        return StepOutput(loss=loss, features=h[:n].detach(), metrics={"pretext_acc": acc})
