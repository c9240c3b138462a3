"""The Barlow Twins redundancy-reduction loss (Zbontar et al. 2021, "Barlow Twins:
Self-Supervised Learning via Redundancy Reduction", eq. 1-2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sslengine.distributed import all_reduce_sum_with_grad, world_size

_BN_EPS = 1e-5  # nn.BatchNorm1d's default, which the official code's affine-free BN uses


def _global_batch_norm(z: Tensor, n_global: int) -> Tensor:
    # BatchNorm1d(affine=False) in training mode over the global batch: biased variance.
    # Two passes (mean, then centred squares) rather than E[z^2] - E[z]^2, which cancels badly.
    mean = all_reduce_sum_with_grad(z.sum(dim=0)) / n_global
    centred = z - mean
    var = all_reduce_sum_with_grad(centred.pow(2).sum(dim=0)) / n_global
    return centred / torch.sqrt(var + _BN_EPS)


def barlow_twins(z1: Tensor, z2: Tensor, lambd: float = 0.0051) -> Tensor:
    """``L = sum_i (1 - C_ii)^2 + lambd * sum_i sum_{j != i} C_ij^2`` (eq. 1).

    ``C`` (eq. 2) is the D x D cross-correlation of the two views' embeddings, each dimension
    batch-normalised over the global batch: ``C = z1n^T z2n / N``.

    Args:
        z1, z2: (N, D) projector outputs of the two views (row i of each: the same image).
        lambd: weight of the redundancy-reduction (off-diagonal) term, 0.0051 in the paper.

    Returns:
        Scalar loss.

    Distributed convention: the batch-norm statistics and ``C`` are sums over the global batch
    (N_global = W * N), taken with a differentiable all-reduce. Every rank computes the same
    loss value; the all-reduce's backward sums the W identical upstream gradients, and DDP's
    averaging divides by W, so parameter gradients equal the one-process gradients. Local
    batches must have the same size on every rank.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n_global = z1.shape[0] * world_size()
    z1n = _global_batch_norm(z1, n_global)
    z2n = _global_batch_norm(z2, n_global)
    c = all_reduce_sum_with_grad(z1n.T @ z2n) / n_global
    diag = torch.diagonal(c)
    on_diag = (1 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag
