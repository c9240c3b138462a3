"""Relative patch position (Doersch et al. 2015, "Unsupervised Visual Representation Learning
by Context Prediction"): a centre patch and one of its 8 neighbours, separated by gaps and
jittered, with colour dropping against chromatic aberration; both through the same trunk, a
shared fc per patch (the paper's fc6), then the concatenation through fc7 and fc8 into the 8
positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslengine.data.pretext import relative_patch_batch
from sslengine.losses import pretext_cross_entropy
from sslengine.methods.base import StepOutput, register
from sslengine.methods.pretext_base import PretextMethod


@register("relative_position")
class RelativePosition(PretextMethod):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        d = self.backbone.out_dim
        self.per_patch = nn.Sequential(nn.Linear(d, 512), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Linear(2 * 512, 512), nn.ReLU(inplace=True), nn.Linear(512, 8))

    def make_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        x = self.light_view(images, generator)  # normalised float
        c = self.cfg.relative_position
        centre, neighbour, labels = relative_patch_batch(
            x,
            generator=generator,
            gap=c.patch_gap if c.patch_gap else None,
            color_drop=c.color_drop,
            neighbours=c.neighbours,
        )
        return [centre, neighbour, labels.to(x.device)]

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        centre, neighbour, labels = views
        n = centre.shape[0]
        k = neighbour.shape[0] // n  # neighbours per centre
        h = self.backbone(torch.cat([centre, neighbour]))
        p = self.per_patch(h)
        logits = self.head(torch.cat([p[:n].repeat_interleave(k, dim=0), p[n:]], dim=1))
        loss = pretext_cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return StepOutput(loss=loss, features=h[:n].detach(), metrics={"pretext_acc": acc})
