"""Projection heads that sit between the backbone and the loss."""

from __future__ import annotations

from torch import nn


def projection_mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    last_bn: bool = False,
    hidden_bn: bool = True,
) -> nn.Sequential:
    """An MLP projection head: (Linear-BN-ReLU) x (num_layers - 1), then Linear [-BN].

    Shapes: (B, in_dim) -> (B, out_dim).

    - SimCLR (Chen et al. 2020, sec. 2.1 and B.9): ``num_layers=2`` (2048 -> 2048 -> 128 for
      ResNet-50), BN in the hidden layer.
    - MoCo v2 (Chen et al. 2020b): 2 layers without BN, ``hidden_bn=False``.
    - Barlow Twins (Zbontar et al. 2021, sec. 3): ``num_layers=3``, 8192 wide, BN + ReLU after
      each hidden layer, plain last Linear (the loss itself standardises the embeddings).
    - ``last_bn=True`` adds a BatchNorm1d after the last Linear (SimCLR v2, MoCo v3 style).

    A Linear followed by BN has no bias: BN's shift makes it redundant.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not hidden_bn))
        if hidden_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim))
    return nn.Sequential(*layers)
