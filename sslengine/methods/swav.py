"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"): online clustering with prototypes, swapped prediction, multi-crop.

- Prototypes are a bias-free linear layer whose rows are L2-normalised before every step.
- Codes come from Sinkhorn-Knopp (eps 0.05, 3 iterations, no gradient, sums all-reduced across
  ranks) on the LARGE crops only; every other crop predicts them (swapped prediction, tau 0.1).
- Prototypes are frozen (gradient dropped) for the first `freeze_prototypes_steps` steps.
- Optional feature queue (per rank, as in the paper) of past large-crop embeddings, used once it
  is full, to give Sinkhorn enough samples when the batch is small relative to K.
- Multi-crop: 2 large crops + V small ones at lower resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslengine.losses import sinkhorn_knopp, swav_loss
from sslengine.methods.base import Method, StepOutput, register
from sslengine.models.heads import projection_mlp


@register("swav")
class SwAV(Method):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        c = cfg.swav
        self.projector = projection_mlp(self.backbone.out_dim, c.proj_hidden_dim, c.proj_dim)
        self.prototypes = nn.Linear(c.proj_dim, c.n_prototypes, bias=False)
        self.normalize_prototypes()
        if c.queue_size:
            self.register_buffer("queue", torch.zeros(c.n_large_crops, c.queue_size, c.proj_dim))
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def make_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        c = self.cfg.swav
        large = self.augmenter(scale_min=c.large_crop_scale_min)
        small = self.augmenter(
            size=c.small_crop_size,
            scale_min=min(0.05, c.small_crop_scale_max),
            scale_max=c.small_crop_scale_max,
        )
        return [large(images, generator) for _ in range(c.n_large_crops)] + [
            small(images, generator) for _ in range(c.n_small_crops)
        ]

    def embed(self, views: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Crops of one resolution go through the backbone together (as in the paper)."""
        c = self.cfg.swav
        groups = [views[: c.n_large_crops], views[c.n_large_crops :]]
        zs, h_first = [], None
        for group in groups:
            if not group:
                continue
            h = self.backbone(torch.cat(group))
            if h_first is None:
                h_first = h[: group[0].shape[0]]
            z = F.normalize(self.projector(h), dim=1)
            zs.extend(z.chunk(len(group)))
        return zs, h_first

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        c = self.cfg.swav
        if self.training:
            self.normalize_prototypes()
        zs, h = self.embed(views)
        scores = [self.prototypes(z) for z in zs]
        n = zs[0].shape[0]
        codes = []
        for i in range(c.n_large_crops):
            s = scores[i].detach()
            use_queue = c.queue_size and int(self.queue_filled) >= c.queue_size
            if use_queue:
                s = torch.cat([s, self.prototypes(self.queue[i]).detach()])
            codes.append(sinkhorn_knopp(s, c.epsilon, c.sinkhorn_iterations)[:n])
        if c.queue_size and self.training:
            with torch.no_grad():
                for i in range(c.n_large_crops):
                    self.queue[i] = torch.cat([zs[i].detach(), self.queue[i][:-n]])
                self.queue_filled.add_(n).clamp_(max=c.queue_size)
        loss = swav_loss(scores, codes, temperature=c.temperature)
        return StepOutput(
            loss=loss,
            features=h.detach(),
            embeddings=(zs[0].detach(), zs[1].detach()),
            metrics={"prototype_entropy": _usage_entropy(codes[0])},
        )

    def on_before_optimizer_step(self, step: int) -> None:
        if step < self.cfg.swav.freeze_prototypes_steps:
            self.prototypes.weight.grad = None


def _usage_entropy(codes: Tensor) -> Tensor:
    """Entropy of the batch's mean code: log(K) when prototypes are used equally."""
    p = codes.float().mean(0).clamp_min(1e-12)
    return -(p * p.log()).sum()
