"""InfoNCE with a queue of negatives, the MoCo loss (He et al. 2020, "Momentum Contrast for
Unsupervised Visual Representation Learning", eq. 1; MoCo v2, Chen et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """``L_q = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_{k-} exp(q.k- / T))`` (MoCo eq. 1).

    Args:
        q: (N, D) queries from the online encoder; L2-normalised here.
        k: (N, D) keys from the momentum encoder (row i is q's positive); L2-normalised here.
            Pass them computed under ``torch.no_grad`` as MoCo does; this function does not
            detach them.
        queue: (K, D) negatives, already L2-normalised (keys of earlier batches). Detached:
            the queue never receives gradient.
        temperature: T (0.2 in MoCo v2, 0.07 in MoCo v1).

    Returns:
        Scalar, mean over the N queries. Computed as logits ``[q.k+, q.queue^T] / T`` and
        ``F.cross_entropy`` with label 0, so low temperatures do not overflow.

    Distributed convention: every rank holds the same queue (filled with keys gathered from all
    ranks by the method), the positives are local, and the loss is the mean over local queries;
    DDP's gradient averaging then equals the one-process gradient on the concatenated batch
    (equal local batch sizes). No collective happens here.
    """
    if q.shape != k.shape or q.dim() != 2:
        raise ValueError(f"q and k must both be (N, D); got {tuple(q.shape)}, {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, {q.shape[1]}); got {tuple(queue.shape)}")
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.detach().to(q.dtype).T  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)
