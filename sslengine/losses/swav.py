"""The SwAV swapped-prediction loss (Caron et al. 2020, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", eq. 1-2, with multi-crop, Sec. 3.2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """Predict each large crop's code from every other crop's prototype scores.

    For large crop i with code q_i (from :func:`sinkhorn_knopp`) and another crop j,
    ``l(j, i) = -mean_b sum_k q_i[b, k] log softmax(scores_j[b] / T)_k`` (eq. 2). As in the
    official implementation, the losses of crop i are averaged over the ``n_crops - 1`` other
    crops, then over the large crops that carry codes.

    Args:
        scores: one (B, K) tensor of prototype scores (``z^T c``, normalised z and c) per crop;
            crops ``0 .. len(codes) - 1`` are the large ones the codes were computed from,
            the rest are the small multi-crop views.
        codes: one (B, K) code tensor per large crop (targets; detached here).
        temperature: T in eq. 2 (0.1 in SwAV).

    Returns:
        Scalar loss.

    Distributed convention: scores and codes are this rank's samples (the codes were computed
    with the global batch by ``sinkhorn_knopp``); the loss is a mean over local samples, so
    DDP's gradient averaging equals the one-process gradient on the whole batch (equal local
    batch sizes). No collective happens here.
    """
    n_crops = len(scores)
    if not codes or len(codes) > n_crops or n_crops < 2:
        raise ValueError(
            f"need 1 <= len(codes) <= len(scores) and at least 2 crops; "
            f"got {len(codes)} codes for {n_crops} crops"
        )
    log_probs = [F.log_softmax(s / temperature, dim=1) for s in scores]
    loss = scores[0].new_zeros(())
    for i, q in enumerate(codes):
        q = q.detach().to(log_probs[0].dtype)
        subloss = scores[0].new_zeros(())
        for j in range(n_crops):
            if j != i:
                subloss = subloss - (q * log_probs[j]).sum(dim=1).mean()
        loss = loss + subloss / (n_crops - 1)
    return loss / len(codes)
