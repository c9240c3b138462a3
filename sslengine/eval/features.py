"""Frozen-backbone feature extraction, shared by kNN, linear probes, retrieval and clustering."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


def _check_device(backbone: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device batches go to: the backbone's own unless `device` says otherwise, in which
    case the backbone must already live there (moving it here would be a hidden side effect)."""
    param = next(backbone.parameters(), None)
    own = param.device if param is not None else torch.device("cpu")
    if device is None:
        return own
    wanted = torch.device(device)
    if wanted.type != own.type or (wanted.index is not None and wanted.index != own.index):
        raise ValueError(f"backbone is on {own} but device={wanted} was requested; move it first")
    return own


def extract_features(
    backbone: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    taps: Sequence[str] = ("pooled",),
    batch_size: int = 256,
    device: str | torch.device | None = None,
    pool: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Features of a frozen backbone at the requested taps, as float32 arrays.

    Args:
        backbone: a `Backbone` (anything with ``forward_taps(x, taps) -> dict``).
        images: uint8 (N, H, W, C), a numpy array or memmap, already at the training size;
            only one batch at a time is read, so a memmap never has to fit in memory.
        mean, std: per-channel normalisation in [0, 1] units (e.g. CIFAR's 0.4914, ...).
        taps: names from `sslengine.models.backbones.TAPS`.
        batch_size: images per forward pass.
        device: where to run; None = the backbone's device. The backbone must already be there.
        pool: optional {tap: callable (B, C, h, w) -> (B, D)}, e.g. the layer-wise probe's
            pooling to ~9k dims (Goyal et al. 2019). Taps without one are globally
            average-pooled when 4-D; "pooled" is already (B, D).
        progress: show a tqdm bar.

    Returns:
        {tap: float32 array (N, D_tap)}, in the order of `taps`.

    The backbone runs in eval mode (BN uses its running statistics) under inference_mode;
    every submodule's training flag is restored afterwards, including ones a caller froze.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if len(mean) != images.shape[3] or len(std) != images.shape[3]:
        raise ValueError(f"mean/std need {images.shape[3]} channels, got {len(mean)}/{len(std)}")
    if max(mean) > 1.0 or min(std) <= 0.0:
        raise ValueError(f"mean/std are in [0, 1] units with std > 0, got {mean} / {std}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.shape[0] == 0:
        raise ValueError("no images to extract features from")
    if isinstance(taps, str):
        taps = (taps,)
    pool = dict(pool or {})
    run_on = _check_device(backbone, device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=run_on).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=run_on).view(1, -1, 1, 1)
    # (x / 255 - mean) / std as one multiply-add per pixel
    scale, shift = 1.0 / (255.0 * std_t), mean_t / std_t

    n = images.shape[0]
    out: dict[str, np.ndarray] = {}
    flags = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        with torch.inference_mode():
            starts = range(0, n, batch_size)
            for start in tqdm(starts, desc="features", disable=not progress):
                # a copy: memmap slices are read-only, which torch.from_numpy warns about
                batch = np.array(images[start : start + batch_size], order="C")
                x = torch.from_numpy(batch).to(run_on, non_blocking=True)
                x = x.permute(0, 3, 1, 2).float() * scale - shift
                feats = backbone.forward_taps(x, taps)
                for tap in taps:
                    f = feats[tap]
                    if tap in pool:
                        f = pool[tap](f)
                    elif f.dim() == 4:
                        f = f.mean(dim=(2, 3))
                    f = f.reshape(f.shape[0], -1).float().cpu().numpy()
                    if tap not in out:  # the dimension is known only after the first batch
                        out[tap] = np.empty((n, f.shape[1]), dtype=np.float32)
                    out[tap][start : start + f.shape[0]] = f
    finally:
        for m, was_training in flags.items():
            m.training = was_training
    return {tap: out[tap] for tap in taps}
