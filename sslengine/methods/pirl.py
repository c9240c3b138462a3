"""PIRL (Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant
Representations"): the image and its jigsaw-transformed version through the same trunk; the
image head f is a linear projection of the pooled features, the jigsaw head g encodes each tile,
projects it, concatenates and projects again. NCE against a memory bank with one entry per
dataset image:
    L = 0.5 * L_NCE(m_I, g(v_It)) + 0.5 * L_NCE(m_I, f(v_I))     (eq. 5, lambda = 0.5)
The bank is updated ONLY from the image features, m_I <- norm(0.5 m_I + 0.5 f(v_I)), with
updates from every rank's indices (the bank's `update` gathers them), so all banks agree.
Negatives are drawn from the bank with a generator seeded by the step (not the rank), so 1 and
N processes draw the same negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslengine.data.pretext import jigsaw_batch, max_hamming_permutations
from sslengine.losses import pirl_nce
from sslengine.methods.base import StepOutput, register
from sslengine.methods.jigsaw import TileHead, encode_tiles
from sslengine.methods.pretext_base import PretextMethod
from sslengine.models.memory_bank import MemoryBank


@register("pirl")
class PIRL(PretextMethod):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        c = cfg.pirl
        self.f_head = nn.Linear(self.backbone.out_dim, c.proj_dim)
        self.g_head = TileHead(self.backbone.out_dim, 9, c.proj_dim, hidden=c.proj_dim)
        self.memory = MemoryBank(dataset_size, c.proj_dim, momentum=c.bank_momentum, seed=cfg.seed)
        self.register_buffer("permutations", max_hamming_permutations(100, 9, seed=cfg.seed))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def make_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        image = self.two_views(images, generator)[0]
        tiles, _ = jigsaw_batch(
            self.light_view(images, generator), self.permutations.cpu(), generator=generator
        )
        return [image, tiles]

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        c = self.cfg.pirl
        image, tiles = views
        h = self.backbone(image)
        f = self.f_head(h)
        g = self.g_head(encode_tiles(self.backbone, tiles))
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + int(self.steps_done))
        negatives = self.memory.sample_negatives(c.n_negatives, generator=gen)
        loss = pirl_nce(
            f,
            g,
            self.memory.get(indices),
            negatives,
            temperature=c.temperature,
            dataset_size=self.dataset_size,
            lambda_=c.loss_weight,
        )
        if self.training:
            self.memory.update(indices, f.detach())
            self.steps_done.add_(1)
        return StepOutput(
            loss=loss,
            features=h.detach(),
            embeddings=(F.normalize(f.detach(), dim=1), F.normalize(g.detach(), dim=1)),
        )
