"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of two views' batch-normalised
embeddings close to the identity. 3-layer projector with BN (paper: 8192-8192-8192; CIFAR
presets use a narrower one). The cross-correlation is over the GLOBAL batch (see the loss)."""

from __future__ import annotations

from torch import Tensor

from sslengine.losses import barlow_twins
from sslengine.methods.base import Method, StepOutput, register
from sslengine.models.heads import projection_mlp


@register("barlow_twins")
class BarlowTwins(Method):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        d = cfg.barlow_twins.proj_dim
        self.projector = projection_mlp(self.backbone.out_dim, d, d, num_layers=3)

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        # Views go through the network separately: the projector's BN must not mix them.
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])
        z1, z2 = self.projector(h1), self.projector(h2)
        loss = barlow_twins(z1, z2, lambd=self.cfg.barlow_twins.lambd)
        return StepOutput(loss=loss, features=h1.detach(), embeddings=(z1.detach(), z2.detach()))
