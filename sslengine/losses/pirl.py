"""The PIRL loss (Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant
Representations", eq. 2-5): noise-contrastive estimation against a memory bank.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sslengine.distributed import all_reduce_max_, all_reduce_sum_, world_size


def _scores(v: Tensor, positive: Tensor, negatives: Tensor, temperature: float):
    # s(u, v) / tau with cosine similarity s; (N,) for the positive, (N, n_neg) for negatives.
    pos = (v * positive).sum(dim=1) / temperature
    if negatives.dim() == 2:  # shared negatives (n_neg, D)
        neg = v @ negatives.T / temperature
    else:  # per-sample negatives (N, n_neg, D)
        neg = torch.einsum("nd,nkd->nk", v, negatives) / temperature
    return pos, neg


def pirl_nce(
    f_img: Tensor,
    g_jig: Tensor,
    memory_pos: Tensor,
    memory_neg: Tensor,
    temperature: float = 0.07,
    *,
    dataset_size: int | None = None,
    lambda_: float = 0.5,
    variant: Literal["nce", "infonce"] = "nce",
    log_norm_constant: float | Tensor = 0.0,
) -> Tensor:
    """``L = lambda_ * L_NCE(m_I, g(v_It)) + (1 - lambda_) * L_NCE(m_I, f(v_I))`` (PIRL eq. 5).

    ``variant="nce"`` (the paper, eq. 2-3): with ``h(u, v) = exp(s(u,v)/tau) /
    (exp(s(u,v)/tau) + |D_N|/|D|)``,
    ``L_NCE(m_I, v) = -log h(m_I, v) - sum_{I' in D_N} log(1 - h(v, m_I'))``.
    Since ``h = sigmoid(s/tau - log(|D_N|/|D|))`` it is computed with ``logsigmoid``, which
    stays finite at any temperature. ``log_norm_constant`` subtracts ``log Z`` from every score,
    i.e. ``exp(s/tau)`` is read as the unnormalised density ``exp(s/tau) / Z``; the paper's
    formula is written with ``Z = 1`` (the default), but with ``Z = 1`` the binary terms are
    badly unbalanced: ``exp(s/tau)`` is ~1 to 1e6 while the noise rate ``|D_N|/|D|`` is < 1, so
    every negative has ``h ~ 1`` and the ``|D_N|`` negative terms dominate the gradient
    (measured: 6e4 times the positive term's on random-init features) and the loss cannot train.
    Wu et al. 2018 (eq. 6) and VISSL's PIRL (``norm_constant: -1``) estimate Z once, from the
    first batch, as ``Z = |D| * mean exp(s/tau)`` over uniformly sampled bank entries:
    :func:`nce_log_normaliser` computes that log Z; pass it here.

    ``variant="infonce"`` replaces the binary NCE terms by the softmax cross-entropy that most
    reimplementations use: ``-log exp(s(m_I,v)/tau) / (exp(s(m_I,v)/tau) + sum_{I'}
    exp(s(v,m_I')/tau))`` (``dataset_size`` and ``log_norm_constant`` are then unused).

    Args:
        f_img: (N, D) features f(v_I) of the untransformed images.
        g_jig: (N, D) features g(v_It) of their jigsaw-transformed patches.
        memory_pos: (N, D) memory-bank entries m_I of the same images (no gradient).
        memory_neg: (N, n_neg, D) per-sample negatives m_I', or (n_neg, D) shared by the batch,
            sampled from the bank (no gradient). The same negatives serve both terms.
        temperature: tau (0.07 in PIRL).
        dataset_size: |D|, the number of images the bank holds; required by ``"nce"``.
        lambda_: weight of the transformed-image term (0.5 in PIRL).
        variant: ``"nce"`` (paper) or ``"infonce"`` (softmax).
        log_norm_constant: log Z, see above (a float or a 0-d tensor, no gradient).

    All features are L2-normalised here (s is cosine similarity). Returns a scalar: the mean
    over the N images of the per-image loss (each summing over its negatives).

    Distributed convention: every rank holds the same bank; the loss is a mean over local
    images, so DDP's gradient averaging equals the one-process gradient (equal local batch
    sizes). No collective happens here.
    """
    if f_img.shape != g_jig.shape or f_img.shape != memory_pos.shape or f_img.dim() != 2:
        raise ValueError(
            "f_img, g_jig and memory_pos must all be (N, D); got "
            f"{tuple(f_img.shape)}, {tuple(g_jig.shape)}, {tuple(memory_pos.shape)}"
        )
    if memory_neg.dim() not in (2, 3) or memory_neg.shape[-1] != f_img.shape[1]:
        raise ValueError(f"memory_neg must be (N, n_neg, D) or (n_neg, D); got {memory_neg.shape}")
    if memory_neg.dim() == 3 and memory_neg.shape[0] != f_img.shape[0]:
        raise ValueError(f"memory_neg has {memory_neg.shape[0]} rows for {f_img.shape[0]} images")
    if variant not in ("nce", "infonce"):
        raise ValueError(f"variant must be 'nce' or 'infonce', got {variant!r}")

    f_img = F.normalize(f_img, dim=1)
    g_jig = F.normalize(g_jig, dim=1)
    m_pos = F.normalize(memory_pos.detach().to(f_img.dtype), dim=-1)
    m_neg = F.normalize(memory_neg.detach().to(f_img.dtype), dim=-1)
    n_neg = m_neg.shape[-2]

    if variant == "nce":
        if dataset_size is None or dataset_size < 1:
            raise ValueError("variant='nce' needs dataset_size = |D|, the number of bank entries")
        # logit of h: s/tau - log Z - log(|D_N| / |D|); log(1 - h) = logsigmoid(-logit).
        shift = log_norm_constant + math.log(n_neg / dataset_size)

        def l_nce(v: Tensor) -> Tensor:
            pos, neg = _scores(v, m_pos, m_neg, temperature)
            per_image = -F.logsigmoid(pos - shift) - F.logsigmoid(-(neg - shift)).sum(dim=1)
            return per_image.mean()

    else:

        def l_nce(v: Tensor) -> Tensor:
            pos, neg = _scores(v, m_pos, m_neg, temperature)
            logits = torch.cat([pos[:, None], neg], dim=1)
            labels = torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
            return F.cross_entropy(logits, labels)

    return lambda_ * l_nce(g_jig) + (1 - lambda_) * l_nce(f_img)


@torch.no_grad()
def nce_log_normaliser(
    features: Tensor, memory_neg: Tensor, temperature: float, dataset_size: int
) -> Tensor:
    """log Z for the NCE of Wu et al. 2018 (eq. 6) and PIRL: ``Z = |D| * mean exp(s(v, m')/tau)``.

    The partition function ``Z_v = sum over all |D| bank entries m of exp(s(v, m)/tau)`` is
    estimated by Monte Carlo from uniformly sampled entries, averaged over the batch's
    features: ``Z = |D| / (N n_neg) * sum_{v, m'} exp(s(v, m')/tau)``. Computed once (on the
    first step) and then held fixed, as Wu et al. and VISSL do (a moving Z would let the loss
    lower itself by moving the normaliser instead of the features).

    Args:
        features: (N, D) features v scored against the bank (e.g. both f(v_I) and g(v_It)
            stacked); normalised here.
        memory_neg: (N, n_neg, D) per-sample or (n_neg, D) shared uniform samples of the bank.
        temperature: tau.
        dataset_size: |D|, the number of bank entries.

    Returns:
        A float32 0-d tensor, ``log Z``, computed in log space (finite at any temperature).

    Distributed convention: the mean is over every rank's scores (an all-reduce of the ranks'
    means: equal local batches and the same negatives give the one-process value), so all
    ranks hold the same Z. This is a collective: every rank must call it at the same step.
    """
    if features.dim() != 2 or memory_neg.shape[-1] != features.shape[1]:
        raise ValueError(
            f"features must be (N, D) and memory_neg (..., D); got {tuple(features.shape)}, "
            f"{tuple(memory_neg.shape)}"
        )
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be positive, got {dataset_size}")
    v = F.normalize(features.detach().float(), dim=1)
    m_neg = F.normalize(memory_neg.detach().float(), dim=-1)
    _, neg = _scores(v, v, m_neg, temperature)  # (N, n_neg)
    # log of this rank's mean exp(score), then the log of the mean over ranks (log-sum-exp
    # across ranks: shift by the global max so nothing overflows at a small tau).
    local = torch.logsumexp(neg.flatten(), dim=0) - math.log(neg.numel())
    shift = all_reduce_max_(local.clone())
    total = all_reduce_sum_(torch.exp(local - shift))
    return (shift + torch.log(total / world_size()) + math.log(dataset_size)).reshape(())
