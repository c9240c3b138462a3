"""MoCo v2 (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved Baselines").

Query encoder (backbone + MLP head) trained by InfoNCE against the key from a momentum (EMA)
copy and a queue of K past keys. Traps handled here:
- the momentum update happens BEFORE the keys are computed (Algorithm 1 of the paper);
- keys are gathered from all ranks before they are enqueued, so every rank's queue is identical
  and K counts global keys; K must be divisible by the global batch (checked in the config);
- BN cannot leak: with several processes either shuffle BN (rank 0 draws one permutation of the
  global batch and broadcasts it; each rank encodes a shuffled slice of keys) or, with
  `moco.shuffle_bn: false`, SyncBatchNorm over the global batch. In one process both are
  equivalent to plain BN over the whole batch, which is what the 1-vs-2-process test compares.
The queue, its pointer and the momentum encoder are registered buffers / modules, so a
checkpoint restores them and a resumed run continues exactly.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from sslengine import distributed as D
from sslengine.losses import info_nce
from sslengine.methods.base import Method, StepOutput, register
from sslengine.models.heads import projection_mlp


@register("moco")
class MoCo(Method):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        c = cfg.moco
        # MoCo v2 (Chen et al. 2020): a 2-layer MLP head with ReLU and no BN
        self.projector = projection_mlp(
            self.backbone.out_dim, c.proj_hidden_dim, c.proj_dim, hidden_bn=False
        )
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]:
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer(
            "queue", F.normalize(torch.randn(c.queue_size, c.proj_dim, generator=g), dim=1)
        )
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def uses_sync_bn(self) -> bool:
        return not self.cfg.moco.shuffle_bn

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.cfg.moco.momentum
        for online, target in (
            (self.backbone, self.momentum_backbone),
            (self.projector, self.momentum_projector),
        ):
            for p_o, p_t in zip(online.parameters(), target.parameters(), strict=True):
                p_t.mul_(m).add_(p_o.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        encode = lambda v: F.normalize(  # noqa: E731
            self.momentum_projector(self.momentum_backbone(v)), dim=1
        )
        if D.world_size() == 1 or not self.cfg.moco.shuffle_bn:
            return encode(x)
        # Shuffle BN (MoCo sec. 3.3): encode a random slice of the global batch on each rank.
        x_all = D.gather_no_grad(x)
        perm = (
            torch.randperm(x_all.shape[0], device=x.device)
            if D.rank() == 0
            else torch.empty(x_all.shape[0], dtype=torch.long, device=x.device)
        )
        D.broadcast_(perm, src=0)
        n = x.shape[0]
        mine = perm[D.rank() * n : (D.rank() + 1) * n]
        k_shuffled = encode(x_all[mine])
        k_all = D.gather_no_grad(k_shuffled)
        unshuffle = torch.argsort(perm)
        return k_all[unshuffle][D.rank() * n : (D.rank() + 1) * n]

    @torch.no_grad()
    def enqueue(self, k: Tensor) -> None:
        k_all = D.gather_no_grad(k)
        n = k_all.shape[0]
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + n] = k_all.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % self.queue.shape[0])

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        if self.training:
            self.momentum_update()  # before computing keys (Algorithm 1)
        h = self.backbone(views[0])
        q = self.projector(h)
        k = self.keys(views[1])
        loss = info_nce(q, k, self.queue.clone().detach(), temperature=self.cfg.moco.temperature)
        if self.training:
            self.enqueue(k)
        return StepOutput(loss=loss, features=h.detach(), embeddings=(q.detach(), k.detach()))
