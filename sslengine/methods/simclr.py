"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): two augmented views, a 2-layer MLP projection head, NT-Xent over 2N views.

Negatives come from all processes: `nt_xent` gathers with gradient and scores local anchors
only (see its docstring), so gradients do not scale with the world size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sslengine.losses import nt_xent
from sslengine.methods.base import Method, StepOutput, register
from sslengine.models.heads import projection_mlp


@register("simclr")
class SimCLR(Method):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        c = cfg.simclr
        self.projector = projection_mlp(self.backbone.out_dim, c.proj_hidden_dim, c.proj_dim)

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        n = views[0].shape[0]
        if self.cfg.simclr.views_forward == "joint":
            h = self.backbone(torch.cat(views, dim=0))
            z = self.projector(h)
        else:  # per view: BatchNorm statistics of each view's batch (simclr.views_forward)
            hs = [self.backbone(v) for v in views]
            h = torch.cat(hs)
            z = torch.cat([self.projector(x) for x in hs])
        z1, z2 = z[:n], z[n:]
        loss = nt_xent(z1, z2, temperature=self.cfg.simclr.temperature)
        return StepOutput(loss=loss, features=h[:n].detach(), embeddings=(z1.detach(), z2.detach()))
