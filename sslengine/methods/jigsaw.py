"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles"): 3x3 tiles with gaps and jitter, shuffled by one of P permutations
chosen for maximal Hamming distance; a siamese trunk encodes each tile, a shared fc per tile,
then the concatenation is classified into the permutation index.

Each tile is standardised on its own per channel by default (``jigsaw.tile_norm``), as the
paper's code does against low-level shortcuts; that also removes every tile's colour, and on
small images, where colour is much of what a kNN on pooled features classifies by, it leaves
the trunk worse than random init. The CPU preset therefore uses ``tile_norm: none`` and relies
on the gaps and jitter alone (measurements in sslengine/presets.py and BENCHMARKS.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslengine.data.pretext import jigsaw_batch, max_hamming_permutations
from sslengine.losses import pretext_cross_entropy
from sslengine.methods.base import StepOutput, register
from sslengine.methods.pretext_base import PretextMethod

TILE_DIM = 128


class TileHead(nn.Module):
    """fc per tile (shared weights), concatenation, then fc layers (the paper's fc6-fc8)."""

    def __init__(self, in_dim: int, n_tiles: int, out_dim: int, hidden: int = 512):
        super().__init__()
        self.per_tile = nn.Sequential(nn.Linear(in_dim, TILE_DIM), nn.ReLU(inplace=True))
        self.joint = nn.Sequential(
            nn.Linear(n_tiles * TILE_DIM, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )

    def forward(self, tile_features: Tensor) -> Tensor:  # (B, T, D)
        b = tile_features.shape[0]
        return self.joint(self.per_tile(tile_features).reshape(b, -1))


def encode_tiles(backbone: nn.Module, tiles: Tensor) -> Tensor:
    """(B, T, C, t, t) -> (B, T, D): every tile through the same trunk."""
    b, t = tiles.shape[:2]
    return backbone(tiles.flatten(0, 1)).reshape(b, t, -1)


@register("jigsaw")
class Jigsaw(PretextMethod):
    def __init__(self, cfg, dataset_size, mean, std):
        super().__init__(cfg, dataset_size, mean, std)
        perms = max_hamming_permutations(cfg.jigsaw.n_permutations, 9, seed=cfg.seed)
        self.register_buffer("permutations", perms)
        self.head = TileHead(self.backbone.out_dim, 9, cfg.jigsaw.n_permutations)

    def make_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        tiles, labels = jigsaw_batch(
            self.light_view(images, generator),
            self.permutations.cpu(),
            generator=generator,
            gap=self.cfg.jigsaw.tile_gap,
            normalize_tiles=self.cfg.jigsaw.tile_norm,
        )
        return [tiles, labels.to(tiles.device)]

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:
        tiles, labels = views
        feats = encode_tiles(self.backbone, tiles)
        logits = self.head(feats)
        loss = pretext_cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return StepOutput(loss=loss, features=feats.mean(1).detach(), metrics={"pretext_acc": acc})
