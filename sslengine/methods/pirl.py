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

The loss against the bank (``pirl.loss``):

- ``"infonce"`` (the default): ``-log exp(s(m_I,v)/tau) / (exp(s(m_I,v)/tau) + sum_{I'}
  exp(s(v,m_I')/tau))``, the softmax over the positive and the sampled negatives that the public
  PIRL reimplementations use. It has no normalisation constant, so it cannot be mis-scaled; it is
  the one that learns in the CPU preset (BENCHMARKS.md).
- ``"nce"``: the paper's eq. 2-3. The paper writes ``h = exp(s/tau) / (exp(s/tau) +
  |D_N|/|D|)``, i.e. ``Z = 1``; taken literally the negative terms outweigh the positive one by
  ~1e4 in gradient and the loss cannot train (it rose from 874 to 3,500+ in 60 steps). As in Wu
  et al. 2018 (eq. 6), whose NCE PIRL adopts, and VISSL's PIRL recipe (``norm_constant: -1``),
  Z is estimated once, on the first training step, as ``|D| * mean exp(s/tau)`` over the sampled
  negatives of both heads' features (``sslengine.losses.pirl.nce_log_normaliser``, all-reduced
  across ranks) and then held fixed in the ``log_norm_constant`` buffer
  (``norm_constant_estimated`` says whether), so checkpoints keep it and a resumed run uses
  the same Z. Even so, in a run of a few hundred
  steps it diverges: Z is measured against the random initial bank, which then fills with
  features far more alike than random vectors (loss 7.9 -> 465 in 300 steps on the preset).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslengine.data.pretext import jigsaw_batch, max_hamming_permutations
from sslengine.losses import pirl_nce
from sslengine.losses.pirl import nce_log_normaliser
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
        # log Z of the NCE (float32 scalar), set by the first training step when loss == "nce";
        # unused (and left at 0, the paper's Z = 1, never estimated) by InfoNCE.
        self.register_buffer("log_norm_constant", torch.zeros(()))
        self.register_buffer("norm_constant_estimated", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before Z was estimated lack both buffers: estimate Z again on the
        # next step rather than refuse to resume.
        if prefix + "norm_constant_estimated" not in state_dict:
            state_dict[prefix + "log_norm_constant"] = torch.zeros(())
            state_dict[prefix + "norm_constant_estimated"] = torch.zeros((), dtype=torch.bool)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        log_z = self.log_norm_constant
        if c.loss == "nce" and not bool(self.norm_constant_estimated):
            log_z = nce_log_normaliser(
                torch.cat([f, g]), negatives, c.temperature, self.dataset_size
            ).to(log_z)
            if self.training:
                self.log_norm_constant.copy_(log_z)
                self.norm_constant_estimated.fill_(True)
        loss = pirl_nce(
            f,
            g,
            self.memory.get(indices),
            negatives,
            temperature=c.temperature,
            dataset_size=self.dataset_size,
            lambda_=c.loss_weight,
            variant=c.loss,
            log_norm_constant=log_z.to(f.dtype) if c.loss == "nce" else 0.0,
        )
        if self.training:
            self.memory.update(indices, f.detach())
            self.steps_done.add_(1)
        return StepOutput(
            loss=loss,
            features=h.detach(),
            metrics={"log_norm_constant": log_z.detach().float()} if c.loss == "nce" else {},
            embeddings=(F.normalize(f.detach(), dim=1), F.normalize(g.detach(), dim=1)),
        )
