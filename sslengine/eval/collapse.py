"""Collapse indicators for a batch of embeddings, cheap enough to log during training.

All functions take (N, d) embeddings (any float dtype, any device), run under no_grad and
return 0-dim float tensors on the input's device (no host sync until the caller asks);
`collapse_metrics` returns python floats for logging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(z: Tensor, min_rows: int = 2) -> Tensor:
    if z.dim() != 2 or z.shape[0] < min_rows:
        raise ValueError(f"embeddings must be (N >= {min_rows}, d), got {tuple(z.shape)}")
    # half precision loses the small differences these metrics are about
    return z.detach().float() if z.dtype not in (torch.float32, torch.float64) else z.detach()


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """Mean over dimensions of the std over the batch of L2-normalised embeddings.

    SimSiam (Chen & He 2021, sec. 4.1 / fig. 2): if the outputs collapse to a constant the std
    is 0; if they are spread isotropically on the unit sphere each coordinate has std
    1/sqrt(d), the reference to compare against. Unbiased std over the N rows.
    """
    z = F.normalize(_check(z), dim=1)
    return z.std(dim=0).mean()


@torch.no_grad()
def effective_rank(z: Tensor) -> Tensor:
    """exp of the Shannon entropy of the normalised singular values of the centred (N, d)
    matrix: erank = exp(-sum_k p_k log p_k), p_k = s_k / sum_j s_j.

    Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality";
    used as RankMe by Garrido et al. 2023. Between 1 and min(N, d).

    Computed in float64. Singular values below the rounding noise of centring (relative to the
    largest entry of z) count as 0, so all-equal embeddings give exactly 1 (= exp(0), the
    minimum) instead of the rank of their rounding error.
    """
    z = _check(z)
    out_dtype = z.dtype
    z = z.double()
    centred = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    tol = max(z.shape) * torch.finfo(torch.float64).eps * z.abs().max()
    s = torch.where(s > tol, s, torch.zeros_like(s))
    total = s.sum()
    p = s / total.clamp_min(torch.finfo(torch.float64).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(torch.float64).tiny))).sum()
    return entropy.exp().to(out_dtype)


@torch.no_grad()
def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """L_align = E ||f(x) - f(y)||_2^alpha over positive pairs of L2-normalised features
    (Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", eq. 4). (N, d), (N, d) -> scalar in [0, 2^alpha]."""
    z1, z2 = _check(z1, 1), _check(z2, 1)
    if z1.shape != z2.shape:
        raise ValueError(f"paired embeddings must share a shape: {z1.shape} vs {z2.shape}")
    return (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).norm(dim=1).pow(alpha).mean()


@torch.no_grad()
def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """L_uniform = log E_{i<j} exp(-t ||f(x_i) - f(x_j)||_2^2) on L2-normalised features
    (Wang & Isola 2020, eq. 5). 0 for collapsed features; lower is more uniform.
    Computed as logsumexp - log(#pairs), which cannot underflow to log(0)."""
    z = F.normalize(_check(z), dim=1)
    sq = torch.pdist(z, p=2).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


@torch.no_grad()
def collapse_metrics(z1: Tensor, z2: Tensor) -> dict[str, float]:
    """The collapse panel for two views' embeddings (N, d) each.

    embed_std and effective_rank describe the embedding distribution, so both views are
    pooled (2N samples: a better estimate, and rank is bounded by the sample count);
    uniformity is the mean over the two views, as in Wang & Isola's reference code;
    alignment is over the N positive pairs.
    """
    both = torch.cat([z1, z2], dim=0)
    return {
        "embed_std": embedding_std(both).item(),
        "embed_std_ref": 1.0 / math.sqrt(z1.shape[1]),
        "effective_rank": effective_rank(both).item(),
        "alignment": alignment(z1, z2).item(),
        "uniformity": (0.5 * (uniformity(z1) + uniformity(z2))).item(),
    }
