"""Cross-entropy for the classification pretext tasks: rotation (Gidaris et al. 2018, 4-way),
jigsaw (Noroozi & Favaro 2016, one class per permutation of the chosen set) and relative patch
position (Doersch et al. 2015, 8-way). Labels come from ``sslengine.data.pretext``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pretext_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of (B, n_classes) ``logits`` against (B,) integer ``labels``.

    n_classes is 4 for rotation, the number of permutations for jigsaw, 8 for relative patch
    position. Distributed convention: a mean over local samples, so DDP's gradient averaging
    equals the one-process gradient (equal local batch sizes).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (B, C) and labels (B,); got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)}"
        )
    return F.cross_entropy(logits, labels.long())
