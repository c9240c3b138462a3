"""NT-Xent, the SimCLR loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslengine.distributed import gather_with_grad, rank, world_size


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """Normalised-temperature cross-entropy over 2N views (SimCLR eq. 1).

    For anchor i with positive j, ``l(i, j) = -log exp(s_ij / T) / sum_{k != i} exp(s_ik / T)``
    where ``s`` is cosine similarity; the loss is the mean of ``l`` over all 2N anchors (both
    views of every image serve as anchors). Computed as logits + ``F.cross_entropy`` with the
    self-similarity masked to -inf, so T = 0.01 does not overflow.

    Args:
        z1, z2: (N, D) projections of the two views of the same N images, row i of ``z1`` and
            row i of ``z2`` being a positive pair. Not normalised: they are L2-normalised here.
        temperature: T in eq. 1.

    Returns:
        Scalar loss.

    Distributed convention: with a process group of W > 1 ranks, both views are gathered from
    all ranks WITH gradient (negatives come from every GPU), and only this rank's 2N local
    anchors are scored against all 2*W*N candidates; the loss is the mean over local anchors.
    The gather's backward sums, over ranks, the gradient each rank's loss sends to a row and
    hands it to the row's owner, so after DDP averages gradients over ranks, one process with
    batch W*N and W processes with batch N each produce the same gradients, and the mean of
    the ranks' losses equals the one-process loss. Local batches must have the same size on
    every rank. The traps this avoids: gathering without gradient (or keeping only the local
    slice's gradient) drops the terms where this rank's rows serve as other ranks' negatives,
    and, with such a gather, scoring the global batch on every rank mis-scales gradients by
    the world size; scoring the global batch with this gather would be correct but W times
    the work.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    # Candidates: [all ranks' view 1; all ranks' view 2]; this rank's rows start at r*N.
    n_global = n * world_size()
    offset = rank() * n
    candidates = torch.cat([gather_with_grad(z1), gather_with_grad(z2)], dim=0)
    anchors = torch.cat([z1, z2], dim=0)
    logits = anchors @ candidates.T / temperature  # (2N, 2*N_global)

    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + n_global])
    positive_index = torch.cat([local + n_global, local])
    rows = torch.arange(2 * n, device=z1.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_index] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive_index)
