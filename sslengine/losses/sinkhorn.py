"""Sinkhorn-Knopp equipartitioned codes, as in SwAV (Caron et al. 2020, "Unsupervised Learning
of Visual Features by Contrasting Cluster Assignments", Sec. 3.1 and the appendix algorithm).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sslengine.distributed import all_reduce_max_, all_reduce_sum_


def _global_logsumexp_over_samples(log_q: Tensor) -> Tensor:
    # log sum_i exp(log_q[i, k]) over the samples of every rank: shift by the all-reduced max
    # (the log-sum-exp trick), sum the shifted exponentials, all-reduce the sums. (K,)
    shift = all_reduce_max_(log_q.max(dim=0).values)
    total = all_reduce_sum_(torch.exp(log_q - shift).sum(dim=0))
    return shift + torch.log(total)


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Soft codes Q maximising ``Tr(Q^T C^T Z) + eps H(Q)`` over the transportation polytope.

    The algorithm of SwAV's ``distributed_sinkhorn``: start from ``Q = exp(scores / eps)``
    (K x B), then ``iterations`` times rescale each prototype row to total mass 1/K (sums over
    the global batch) and each sample column to mass 1/B; finally multiply by B. The last step
    normalises samples, so the returned codes are exactly row-stochastic; the prototype
    marginals approach B/K as ``iterations`` grows.

    Args:
        scores: (B_local, K) prototype scores ``z^T c`` of this rank's samples (no gradient is
            taken; the codes are targets).
        epsilon: entropy weight (0.05 in SwAV; smaller means harder assignments).
        iterations: Sinkhorn iterations (3 in SwAV), at least 1.

    Returns:
        (B_local, K) codes, rows summing to 1, in float32 (float64 when ``scores`` is float64).

    Numerics: the same iterations are run on ``log Q`` in float32 (at least), each row sum being
    a log-sum-exp shifted by its all-reduced maximum. This is the max-subtraction that keeps
    ``exp(scores / eps)`` from overflowing at eps = 0.05 (and in fp16 runs), applied at every
    normalisation, so nothing underflows either: ``exp`` of a plain global-max-shifted
    ``scores / eps`` zeroes whole samples, then yields NaN, once the score range exceeds
    ~87 * eps in float32 (eps = 0.01 on cosine scores). The initial division by the total mass
    in the official code is omitted: the row normalisation that follows cancels it exactly.

    Distributed convention: the global batch is the concatenation of every rank's samples,
    B = sum of local batches; the per-prototype row sums (and B) are all-reduced, the
    per-sample column sums are local. One process with the whole batch and W processes with
    slices of it return the same codes (up to rounding).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, K); got {tuple(scores.shape)}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    dtype = torch.promote_types(scores.dtype, torch.float32)
    log_q = scores.detach().to(dtype) / epsilon  # (B_local, K): SwAV's Q transposed
    n_prototypes = log_q.shape[1]
    batch = all_reduce_sum_(torch.tensor(float(log_q.shape[0]), dtype=dtype, device=log_q.device))
    log_k, log_b = math.log(n_prototypes), torch.log(batch)
    for _ in range(iterations):
        log_q = log_q - _global_logsumexp_over_samples(log_q) - log_k  # prototypes: mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_b  # samples: 1/B
    return torch.exp(log_q + log_b)
