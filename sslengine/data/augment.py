"""Batched view augmentation: a whole uint8 batch in, normalised float views out, one device.

The pipeline is SimCLR's (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", Appendix A), with BYOL's solarisation as an option (Grill et al. 2020):

    RandomResizedCrop(size, scale, ratio) -> HorizontalFlip(p) -> ColorJitter(b, c, s, h) with
    prob jitter_p -> Grayscale(p) -> GaussianBlur(sigma in [0.1, 2], kernel ~10% of size) (p)
    -> Solarize(p, threshold 0.5) -> Normalize(mean, std)

Per-sample random parameters are drawn by ``sample_params`` from a ``torch.Generator`` (on the
generator's device, so a CPU generator gives the same views whatever device the batch is on),
then ``apply_params`` applies all of them to the batch without a Python loop over samples:

- crop + resize + flip is one pair of batched matrix products: for every sample a (size, H)
  row-weight and a (size, W) column-weight matrix hold exactly the weights torchvision's
  antialiased bilinear resize (``resized_crop(..., antialias=True)``, i.e. PIL's filter) uses
  for that sample's crop box; a flip reverses the column matrix's rows. Unlike
  ``grid_sample``/``roi_align`` this matches torchvision both when a crop is enlarged (no reads
  from outside the crop box) and when it is shrunk (antialiased, no aliasing).
- colour jitter uses the torchvision definitions (blend with black / the grey mean / the grey
  image; hue rotation in HSV) with per-sample factors as (B, 1, 1, 1) tensors. The jitter order
  is FIXED (brightness, contrast, saturation, hue) where torchvision draws a random order per
  image: the four factors are still random, and a fixed order keeps the batch one kernel per op.
  A sample that skips jitter gets identity factors (1, 1, 1, 0).
- Gaussian blur is a separable convolution with one kernel per sample (``groups=B*C``) after
  reflect padding, as torchvision's ``gaussian_blur``; a sample that skips blur gets a delta.

``pil_reference_view`` applies the same parameters to one PIL image with
``torchvision.transforms.v2.functional``; the tests hold the batched path to it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchAugment",
    "MultiCrop",
    "ViewConfig",
    "apply_params",
    "hsv_to_rgb",
    "params_for_sample",
    "pil_reference_view",
    "resize_weights",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "sample_params",
    "to_tensor_batch",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, the weights torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)
_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params tries 10 boxes, then centre crop


@dataclass
class ViewConfig:
    """One view's augmentation parameters (SimCLR CIFAR defaults, as in solo-learn).

    ``size``: output side; ``scale``: crop area as a fraction of the image; ``ratio``: crop
    aspect (w/h) range, sampled log-uniformly; ``*_p``: probabilities; ``brightness``,
    ``contrast``, ``saturation``: factors drawn from [max(0, 1-x), 1+x]; ``hue``: shift drawn
    from [-hue, hue] (fraction of the colour wheel); ``blur_sigma``: sigma range of the
    Gaussian blur (kernel ~10% of ``size``, odd, at least 3); ``solarize_threshold`` on [0, 1]
    values; ``mean``/``std``: per-channel normalisation applied last.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))
        self.blur_sigma = (float(self.blur_sigma[0]), float(self.blur_sigma[1]))
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if int(self.size) != self.size or self.size < 2:
            raise ValueError(f"size must be an integer >= 2, got {self.size}")
        self.size = int(self.size)
        if not 0.0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 channels each, std > 0")

    @property
    def blur_kernel_size(self) -> int:
        """SimCLR: kernel 10% of the image side (23 at 224), made odd; at least 3."""
        k = int(0.1 * self.size)
        k += 1 - k % 2
        return max(3, k)


# ------------------------------------------------------------------------------ sampling


def sample_params(
    batch_size: int,
    cfg: ViewConfig,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Draw every random choice of ``batch_size`` views, on the generator's device.

    The crop follows torchvision's ``RandomResizedCrop.get_params`` per sample, vectorised:
    10 candidate boxes with area ~ U(scale) * H * W and log-aspect ~ U(log ratio); w, h are
    rounded (half to even, as Python's ``round``); the first box that fits wins, its top-left
    corner uniform over the valid positions; if none fits, the centre crop clamped to the
    ratio range. All draws happen whatever the probabilities, so the generator advances by
    the same amount for every config of the same batch size.

    Returns a dict of (B,) tensors: ``i, j, h, w`` (int64, crop top/left/height/width in
    pixels), ``flip, jitter, gray, blur, solarize`` (bool), ``brightness, contrast,
    saturation, hue, sigma`` (float32; identity values when the op is off).
    """
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        u = torch.rand(*shape, generator=generator, device=device, dtype=torch.float64)
        return u * (hi - lo) + lo

    b, area = batch_size, float(height * width)
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    target_area = area * uniform(b, _CROP_ATTEMPTS, lo=cfg.scale[0], hi=cfg.scale[1])
    aspect = torch.exp(uniform(b, _CROP_ATTEMPTS, lo=log_lo, hi=log_hi))
    ws = torch.round(torch.sqrt(target_area * aspect)).long()
    hs = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first max
    found = fits.any(dim=1)
    w = ws.gather(1, first).squeeze(1)
    h = hs.gather(1, first).squeeze(1)
    u_i, u_j = uniform(b), uniform(b)
    i = torch.minimum(torch.floor(u_i * (height - h + 1)).long(), height - h)
    j = torch.minimum(torch.floor(u_j * (width - w + 1)).long(), width - w)

    # torchvision's fallback after 10 misses: the largest centred box within the ratio range.
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        fw, fh = width, int(round(width / cfg.ratio[0]))
    elif in_ratio > cfg.ratio[1]:
        fw, fh = int(round(height * cfg.ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    i = torch.where(found, i, torch.full_like(i, (height - fh) // 2))
    j = torch.where(found, j, torch.full_like(j, (width - fw) // 2))

    flip = uniform(b) < cfg.hflip_p
    jitter = uniform(b) < cfg.jitter_p

    def factor(x: float) -> Tensor:
        f = uniform(b, lo=max(0.0, 1.0 - x), hi=1.0 + x)
        return torch.where(jitter, f, torch.ones_like(f)).float()

    brightness = factor(cfg.brightness)
    contrast = factor(cfg.contrast)
    saturation = factor(cfg.saturation)
    hue = uniform(b, lo=-cfg.hue, hi=cfg.hue)
    hue = torch.where(jitter, hue, torch.zeros_like(hue)).float()
    gray = uniform(b) < cfg.grayscale_p
    blur = uniform(b) < cfg.blur_p
    sigma = uniform(b, lo=cfg.blur_sigma[0], hi=cfg.blur_sigma[1]).float()
    solarize = uniform(b) < cfg.solarize_p
    return {
        "i": i, "j": j, "h": h, "w": w, "flip": flip, "jitter": jitter,
        "brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue,
        "gray": gray, "blur": blur, "sigma": sigma, "solarize": solarize,
    }  # fmt: skip


def params_for_sample(params: Mapping[str, Tensor], index: int) -> dict[str, float | int | bool]:
    """One sample's parameters as Python scalars (for ``pil_reference_view``)."""
    return {k: v[index].item() for k, v in params.items()}


# ------------------------------------------------------------------------------ geometry


def resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """Per-sample interpolation matrices for cropping [start, start+length) and resizing it.

    Returns (B, out_size, in_size) float32 with rows summing to 1, such that ``M @ line`` is
    the antialiased bilinear resize of the crop of ``line`` -- the weights of PyTorch's
    ``_upsample_bilinear2d_aa`` / PIL's bilinear filter: scale = length/out, triangle filter
    of half-width max(scale, 1) centred at scale*(o + 0.5) in crop coordinates, pixels outside
    the crop weighted 0, each row normalised. When enlarging this is ordinary bilinear
    (align_corners=False) with the crop's edge pixels repeated.
    """
    dev = start.device
    scale = length.to(torch.float32) / out_size  # (B,)
    support = scale.clamp(min=1.0)
    centre = scale[:, None] * (torch.arange(out_size, device=dev, dtype=torch.float32) + 0.5)
    local = torch.arange(in_size, device=dev)[None, :] - start[:, None]  # (B, in) crop coords
    dist = (local[:, None, :].to(torch.float32) + 0.5 - centre[:, :, None]) / support[:, None, None]
    weights = (1.0 - dist.abs()).clamp(min=0.0)
    inside = (local >= 0) & (local < length[:, None])
    weights = weights * inside[:, None, :]
    return weights / weights.sum(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------ colour


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, ITU-R 601-2 weights."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of the wheel)."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    grey = delta == 0
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(grey, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    # Sector by which channel is the max (r first, then g), as PIL/torchvision break ties.
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, torch.zeros_like(h), torch.remainder(h / 6.0, 1.0))
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """(B, 3, H, W) HSV -> RGB, the inverse of ``rgb_to_hsv``.

    Closed form without sector lookups: channel n in (5, 3, 1) for (r, g, b) is
    v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6. Purely elementwise, so no
    (B, 3, H, W) int64 index tensor is materialised on the GPU.
    """
    h, s, v = x[:, :1], x[:, 1:2], x[:, 2:]
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype)[None, :, None, None]
    k = torch.remainder(n + 6.0 * h, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return (v - v * s * ramp).clamp(0.0, 1.0)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """torchvision's ``_blend``: ratio*a + (1-ratio)*b, clamped to [0, 1]; ratio (B,)."""
    r = ratio[:, None, None, None]
    return (r * a + (1.0 - r) * b).clamp(0.0, 1.0)


def _color_jitter(x: Tensor, p: Mapping[str, Tensor], cfg: ViewConfig) -> Tensor:
    if cfg.brightness > 0:
        x = _blend(x, torch.zeros_like(x), p["brightness"])
    if cfg.contrast > 0:
        mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = _blend(x, mean, p["contrast"])
    if cfg.saturation > 0:
        x = _blend(x, rgb_to_grayscale(x), p["saturation"])
    if cfg.hue > 0:
        hsv = rgb_to_hsv(x)
        hue = torch.remainder(hsv[:, :1] + p["hue"][:, None, None, None], 1.0)
        shifted = hsv_to_rgb(torch.cat((hue, hsv[:, 1:]), dim=1))
        # Round-tripping through HSV is not bit-exact: leave unshifted samples untouched.
        x = torch.where((p["hue"] != 0)[:, None, None, None], shifted, x)
    return x


def _gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur, one kernel per sample, reflect padding (torchvision's)."""
    b, c, hh, ww = x.shape
    half = kernel_size // 2
    offsets = torch.arange(kernel_size, device=x.device, dtype=torch.float32) - half
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, k)
    delta = (offsets == 0).to(torch.float32).expand(b, kernel_size)
    kernel = torch.where(apply[:, None], kernel, delta)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, k): each sample's kernel, per channel
    padded = F.pad(x, (half, half, half, half), mode="reflect").reshape(1, b * c, hh + 2 * half, -1)
    out = F.conv2d(padded, kernel[:, None, None, :], groups=b * c)
    out = F.conv2d(out, kernel[:, None, :, None], groups=b * c)
    return out.reshape(b, c, hh, ww)


# ------------------------------------------------------------------------------ application


def _norm_tensors(cfg: ViewConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """``cfg.mean`` and ``cfg.std`` as float32 (1, 3, 1, 1) tensors on ``device``."""
    mean = torch.tensor(cfg.mean, device=device, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(cfg.std, device=device, dtype=torch.float32)[None, :, None, None]
    return mean, std


def apply_params(
    batch: Tensor,
    params: Mapping[str, Tensor],
    cfg: ViewConfig,
    norm: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Apply drawn parameters to a (B, 3, H, W) batch; returns float32 (B, 3, size, size).

    ``batch`` is uint8 (0..255) or float in [0, 1]; the work happens on its device. Order:
    crop+resize+flip, jitter (brightness, contrast, saturation, hue), grayscale, blur,
    solarize, normalise. Autocast is switched off so bf16 regions do not quantise the images.
    ``norm``: ``cfg.mean``/``cfg.std`` already as (1, 3, 1, 1) float32 tensors on the batch's
    device (``BatchAugment`` keeps them, sparing two host-to-device copies per call).
    """
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(batch.shape)}")
    dev = batch.device
    p = {k: v.to(dev, non_blocking=True) for k, v in params.items()}
    autocast_off = (
        torch.autocast(device_type=dev.type, enabled=False)
        if dev.type in ("cuda", "cpu")
        else contextlib.nullcontext()
    )
    with autocast_off:
        x = batch.to(torch.float32)
        if not batch.is_floating_point():
            x = x / 255.0
        _, _, height, width = x.shape
        rows = resize_weights(p["i"], p["h"], height, cfg.size)  # (B, S, H)
        cols = resize_weights(p["j"], p["w"], width, cfg.size)  # (B, S, W)
        cols = torch.where(p["flip"][:, None, None], cols.flip(1), cols)
        # out[b, c] = rows[b] @ x[b, c] @ cols[b]^T: crop, resize and flip in two matmuls.
        x = rows[:, None] @ x @ cols.transpose(1, 2)[:, None]
        if cfg.jitter_p > 0:
            x = _color_jitter(x, p, cfg)
        if cfg.grayscale_p > 0:
            x = torch.where(p["gray"][:, None, None, None], rgb_to_grayscale(x).expand_as(x), x)
        if cfg.blur_p > 0:
            x = _gaussian_blur(x, p["sigma"], p["blur"], cfg.blur_kernel_size)
        if cfg.solarize_p > 0:
            hit = p["solarize"][:, None, None, None] & (x >= cfg.solarize_threshold)
            x = torch.where(hit, 1.0 - x, x)
        mean, std = norm if norm is not None else _norm_tensors(cfg, dev)
        return ((x - mean) / std).contiguous()


def to_tensor_batch(images: np.ndarray, device: torch.device | str | None = None) -> Tensor:
    """uint8 NHWC numpy (a memmap slice is fine) -> uint8 NCHW tensor, optionally moved."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {images.shape}")
    # One copy, NHWC -> NCHW in numpy; a read-only memmap view must not reach torch as is.
    chw = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2))
    if not chw.flags.writeable:
        chw = chw.copy()
    x = torch.from_numpy(chw)
    return x if device is None else x.to(device)


class BatchAugment:
    """``BatchAugment(cfg)(uint8 (B, 3, H, W), generator) -> float32 (B, 3, size, size)``.

    Build it once and call it every step (methods keep theirs): it holds the normalisation
    tensors per device, so a call does not re-create them.
    """

    def __init__(self, cfg: ViewConfig, compile: bool = False):
        self.cfg = cfg
        self.compile = compile
        self._norm: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __call__(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, _, height, width = batch.shape
        params = sample_params(b, self.cfg, height, width, generator)
        # keyed by the values too: ViewConfig is a plain (mutable) dataclass
        key = (batch.device, self.cfg.mean, self.cfg.std)
        norm = self._norm.get(key)
        if norm is None:
            norm = self._norm[key] = _norm_tensors(self.cfg, batch.device)
        apply = compiled_apply_params() if self.compile else apply_params
        return apply(batch, params, self.cfg, norm)

    def __repr__(self) -> str:
        return f"BatchAugment({self.cfg!r}, compile={self.compile})"


@functools.cache
def compiled_apply_params():
    """`apply_params` through ``torch.compile`` (one per process, compiled on first call and
    again only for a new ViewConfig or shape; same views as eager to ~1e-6)."""
    return torch.compile(apply_params, dynamic=False)


class MultiCrop:
    """SwAV multi-crop (Caron et al. 2020, Sec. 3.2): ``n_global`` large + ``n_local`` small.

    The paper uses 2 x 224 px crops with scale (0.14, 1) and 6 x 96 px with (0.05, 0.14) on
    ImageNet; the defaults here are the CIFAR-scale equivalent, 2 x 32 and 6 x 18 px. Returns
    the views as a list, large crops first (the order SwAV's loss expects).
    """

    def __init__(
        self,
        global_cfg: ViewConfig | None = None,
        n_global: int = 2,
        local_cfg: ViewConfig | None = None,
        n_local: int = 6,
    ):
        if n_global < 1 or n_local < 0:
            raise ValueError("MultiCrop needs n_global >= 1 and n_local >= 0")
        self.global_aug = BatchAugment(global_cfg or ViewConfig(size=32, scale=(0.14, 1.0)))
        self.local_aug = BatchAugment(local_cfg or ViewConfig(size=18, scale=(0.05, 0.14)))
        self.n_global, self.n_local = n_global, n_local

    @classmethod
    def imagenet(
        cls,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        n_local: int = 6,
    ) -> MultiCrop:
        """The SwAV paper's ImageNet setting: 2 x 224 (0.14-1) + n_local x 96 (0.05-0.14)."""
        return cls(
            ViewConfig(size=224, scale=(0.14, 1.0), mean=tuple(mean), std=tuple(std)),
            2,
            ViewConfig(size=96, scale=(0.05, 0.14), mean=tuple(mean), std=tuple(std)),
            n_local,
        )

    def __call__(self, batch: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        views = [self.global_aug(batch, generator) for _ in range(self.n_global)]
        return views + [self.local_aug(batch, generator) for _ in range(self.n_local)]


# ------------------------------------------------------------------------------ reference


def pil_reference_view(
    img: Image.Image, params: Mapping[str, float | int | bool | Tensor], cfg: ViewConfig
) -> Tensor:
    """The same view as ``apply_params`` for one image, with torchvision.transforms.v2.

    ``params`` is one sample's parameters (``params_for_sample``). Works in float32 [0, 1]
    (so no uint8 rounding between ops) and uses the same fixed jitter order. Slow; for tests.
    """
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    q = {k: (v.item() if isinstance(v, Tensor) else v) for k, v in params.items()}
    x = TF.to_dtype(TF.to_image(img.convert("RGB")), torch.float32, scale=True)
    x = TF.resized_crop(
        x, int(q["i"]), int(q["j"]), int(q["h"]), int(q["w"]), [cfg.size, cfg.size],
        interpolation=InterpolationMode.BILINEAR, antialias=True,
    )  # fmt: skip
    if q["flip"]:
        x = TF.horizontal_flip(x)
    if q["jitter"] and cfg.jitter_p > 0:
        if cfg.brightness > 0:
            x = TF.adjust_brightness(x, float(q["brightness"]))
        if cfg.contrast > 0:
            x = TF.adjust_contrast(x, float(q["contrast"]))
        if cfg.saturation > 0:
            x = TF.adjust_saturation(x, float(q["saturation"]))
        if cfg.hue > 0 and q["hue"] != 0:
            x = TF.adjust_hue(x, float(q["hue"]))
    if q["gray"] and cfg.grayscale_p > 0:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if q["blur"] and cfg.blur_p > 0:
        k = cfg.blur_kernel_size
        x = TF.gaussian_blur(x, [k, k], [float(q["sigma"])] * 2)
    if q["solarize"] and cfg.solarize_p > 0:
        x = TF.solarize(x, cfg.solarize_threshold)
    return TF.normalize(x, list(cfg.mean), list(cfg.std))
