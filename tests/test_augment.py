"""Batched views (sslengine.data.augment) against torchvision, colorsys and hand computations."""

from __future__ import annotations

import colorsys
import dataclasses
import math
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from sklearn.datasets import load_sample_image
from torchvision.transforms import v2

from sslengine.data.augment import (
    BatchAugment,
    MultiCrop,
    ViewConfig,
    apply_params,
    hsv_to_rgb,
    params_for_sample,
    pil_reference_view,
    resize_weights,
    rgb_to_hsv,
    sample_params,
    to_tensor_batch,
)

torch.set_num_threads(1)

H, W = 36, 48
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
UNIT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # compare in [0, 1] pixel units


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """8 real photographs (scikit-learn's two sample images, shipped in the wheel), 48x36."""
    out = []
    for name in ("china.jpg", "flower.jpg"):
        full = Image.fromarray(load_sample_image(name))
        for k in range(4):  # four different regions of each
            left, top = 60 * k, 40 * k
            out.append(full.crop((left, top, left + 320, top + 240)).resize((W, H), Image.BILINEAR))
    return out


@pytest.fixture(scope="module")
def batch(photos) -> torch.Tensor:
    return to_tensor_batch(np.stack([np.asarray(p) for p in photos]))


def reference(photos, params, cfg) -> torch.Tensor:
    return torch.stack(
        [pil_reference_view(im, params_for_sample(params, k), cfg) for k, im in enumerate(photos)]
    )


# ------------------------------------------------------------------------- (a) vs torchvision


@pytest.mark.parametrize("size", [16, 32, 64])
def test_batched_views_match_torchvision_reference(photos, batch, size):
    """Same parameters -> same view as torchvision.transforms.v2.functional on each PIL image.

    Tolerance 1e-4 (pixel units, [0, 1]): the batched crop+resize uses exactly the weights of
    torchvision's antialiased bilinear resize, and the colour ops the same formulas, so only
    float32 summation order differs (observed ~1e-6). Every op here is continuous in its
    input (solarize at t=0.5 included), so rounding cannot flip a result; a wrong half-pixel
    offset, a missed flip or a swapped op gives errors > 1e-2. size 16 shrinks most crops
    (antialiasing on), 64 enlarges them.
    """
    cfg = ViewConfig(
        size=size,
        jitter_p=0.6,
        grayscale_p=0.3,
        blur_p=0.5,
        solarize_p=0.4,
        brightness=0.5,
        contrast=0.5,
        saturation=0.5,
        hue=0.3,
        **UNIT,
    )
    for seed in range(3):
        params = sample_params(len(photos), cfg, H, W, torch.Generator().manual_seed(seed))
        out = apply_params(batch, params, cfg)
        ref = reference(photos, params, cfg)
        diff = (out - ref).abs()
        assert diff.max().item() < 1e-4, (seed, diff.flatten(1).max(1).values)
    # The set exercised every op on some sample.
    for key in ("flip", "jitter", "gray", "blur", "solarize"):
        assert params[key].any() and not params[key].all(), key


def test_hand_made_boxes_match_reference_with_normalisation(photos, batch):
    """Edge boxes: whole image, 1-pixel-wide strip, corner, a crop exactly the output size."""
    cfg = ViewConfig(size=24, jitter_p=1.0, blur_p=1.0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    n = len(photos)
    params = sample_params(n, cfg, H, W, torch.Generator().manual_seed(7))
    boxes = [
        (0, 0, H, W),
        (0, 5, H, 1),
        (30, 40, 6, 8),
        (4, 10, 24, 24),
        (0, 0, 1, 1),
        (10, 0, 20, 48),
        (35, 47, 1, 1),
        (2, 3, 30, 40),
    ]
    for key, col in zip("ijhw", range(4), strict=True):
        params[key] = torch.tensor([b[col] for b in boxes])
    params["flip"] = torch.tensor([k % 2 == 0 for k in range(n)])
    out = apply_params(batch, params, cfg)
    ref = reference(photos, params, cfg)
    assert (out - ref).abs().max().item() < 1e-4 / min(cfg.std)


def test_resize_weights_by_hand():
    """4 -> 2 pixels (shrink by 2): triangle of half-width 2 centred at 1.0 and 3.0."""
    m = resize_weights(torch.tensor([0]), torch.tensor([4]), in_size=4, out_size=2)[0]
    expected = torch.tensor([[0.75, 0.75, 0.25, 0.0], [0.0, 0.25, 0.75, 0.75]]) / 1.75
    torch.testing.assert_close(m, expected)
    # 2 -> 4 inside a 5-pixel line starting at 1 (enlarge): plain bilinear, edges repeated.
    m = resize_weights(torch.tensor([1]), torch.tensor([2]), in_size=5, out_size=4)[0]
    expected = torch.tensor(
        [[0, 1.0, 0, 0, 0], [0, 0.75, 0.25, 0, 0], [0, 0.25, 0.75, 0, 0], [0, 0, 1.0, 0, 0]]
    )
    torch.testing.assert_close(m, expected)


def test_hsv_conversions_match_colorsys():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 5, 7, generator=g)
    rgb[0, :, 0, 0] = 0.3  # grey pixel: hue and saturation 0
    rgb[0, :, 0, 1] = torch.tensor([0.9, 0.9, 0.2])  # tie between r and g for the max
    hsv = rgb_to_hsv(rgb)
    flat_rgb = rgb.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    flat_hsv = hsv.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = torch.tensor([colorsys.rgb_to_hsv(*px) for px in flat_rgb], dtype=torch.float32)
    torch.testing.assert_close(flat_hsv, expected, atol=1e-6, rtol=0)
    back = hsv_to_rgb(hsv).permute(0, 2, 3, 1).reshape(-1, 3)
    expected_back = [colorsys.hsv_to_rgb(*px) for px in flat_hsv.tolist()]
    torch.testing.assert_close(
        back, torch.tensor(expected_back, dtype=torch.float32), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(back, torch.tensor(flat_rgb), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------- (b) crop sampler


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [
        (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
        (36, 48, (0.05, 0.14), (3 / 4, 4 / 3)),
        (10, 40, (0.3, 1.0), (0.5, 2.0)),
    ],
)
def test_crop_distribution_matches_torchvision_get_params(height, width, scale, ratio):
    """20k boxes each: area, aspect and centre position, two-sample KS statistic < 0.02.

    For n = m = 20,000 the KS critical value at alpha = 0.001 is 1.95 * sqrt(2 / 20,000) =
    0.0195 (conservative for these discrete, integer-box distributions). The last case's
    10x40 image makes many of torchvision's 10 attempts miss, exercising the fallback.
    """
    n = 20_000
    cfg = ViewConfig(size=16, scale=scale, ratio=ratio)
    p = sample_params(n, cfg, height, width, torch.Generator().manual_seed(123))
    ours = np.stack([p[k].numpy() for k in "ijhw"], axis=1).astype(np.float64)
    torch.manual_seed(321)
    dummy = torch.empty(1, height, width)
    theirs = np.array(
        [v2.RandomResizedCrop.get_params(dummy, list(scale), list(ratio)) for _ in range(n)],
        dtype=np.float64,
    )
    assert (ours[:, 2] >= 1).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 3] >= 1).all() and (ours[:, 1] + ours[:, 3] <= width).all()

    def features(b: np.ndarray) -> dict[str, np.ndarray]:
        i, j, h, w = b.T
        return {
            "area": h * w / (height * width),
            "log_aspect": np.log(w / h),
            "centre_y": (i + h / 2) / height,
            "centre_x": (j + w / 2) / width,
        }

    fo, ft = features(ours), features(theirs)
    for key in fo:
        stat = ks_2samp(fo[key], ft[key]).statistic
        assert stat < 0.02, (key, stat)


def test_crop_fallback_is_torchvisions_centre_crop():
    """A ratio no box can satisfy inside the image: every sample takes the fallback."""
    cfg = ViewConfig(size=8, scale=(0.9, 1.0), ratio=(4.0, 5.0))
    p = sample_params(64, cfg, 20, 20, torch.Generator().manual_seed(0))
    expected = v2.RandomResizedCrop.get_params(torch.empty(1, 20, 20), [0.9, 1.0], [4.0, 5.0])
    # By hand: in_ratio 1 < 4, so w = 20, h = round(20 / 4) = 5, centred: i = 7, j = 0.
    assert expected == (7, 0, 5, 20)
    for key, value in zip("ijhw", expected, strict=True):
        assert (p[key] == value).all(), key


def test_other_parameter_distributions():
    n = 20_000
    cfg = ViewConfig(
        size=16,
        jitter_p=0.8,
        brightness=0.4,
        hue=0.1,
        grayscale_p=0.2,
        blur_p=0.5,
        solarize_p=0.1,
        hflip_p=0.5,
    )
    p = sample_params(n, cfg, 32, 32, torch.Generator().manual_seed(5))
    for key, prob in [
        ("jitter", 0.8),
        ("gray", 0.2),
        ("blur", 0.5),
        ("solarize", 0.1),
        ("flip", 0.5),
    ]:
        sd = math.sqrt(prob * (1 - prob) / n)
        assert abs(p[key].float().mean().item() - prob) < 5 * sd, key
    on, off = p["jitter"], ~p["jitter"]
    b = p["brightness"][on]
    assert b.min() >= 0.6 and b.max() <= 1.4 and abs(b.mean().item() - 1.0) < 0.01
    assert (p["brightness"][off] == 1).all() and (p["hue"][off] == 0).all()
    assert p["hue"][on].abs().max() <= 0.1
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0


# ------------------------------------------------------------------------- (c) determinism


def test_same_seed_same_views_other_seed_other_views(batch):
    aug = BatchAugment(ViewConfig(size=24, blur_p=0.5, solarize_p=0.2))
    a = aug(batch, torch.Generator().manual_seed(11))
    b = aug(batch, torch.Generator().manual_seed(11))
    c = aug(batch, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


def test_draws_do_not_depend_on_probabilities(batch):
    """Flip prob 0 vs 1 with one seed: same crops, so the views are exact mirror images."""
    base = ViewConfig(size=20, hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    never = BatchAugment(base)(batch, torch.Generator().manual_seed(3))
    always = BatchAugment(dataclasses.replace(base, hflip_p=1.0))(
        batch, torch.Generator().manual_seed(3)
    )
    assert torch.equal(always, never.flip(-1))


def test_identity_config_returns_normalised_input(batch):
    """Whole-image crop at the image's own size and no colour ops: exactly (x/255 - m) / s."""
    cfg = ViewConfig(
        size=H,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        hflip_p=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.3, 0.4),
    )
    square = batch[..., :H].contiguous()  # 36x36, so the full crop is the whole image
    out = BatchAugment(cfg)(square, torch.Generator().manual_seed(0))
    mean = torch.tensor(cfg.mean)[None, :, None, None]
    std = torch.tensor(cfg.std)[None, :, None, None]
    torch.testing.assert_close(out, (square.float() / 255 - mean) / std, atol=1e-6, rtol=0)


def test_grayscale_always_gives_equal_channels(batch):
    cfg = ViewConfig(size=16, grayscale_p=1.0, **UNIT)
    out = BatchAugment(cfg)(batch, torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


# ------------------------------------------------------------------------- (d) shapes, devices


@pytest.mark.parametrize("device", DEVICES)
def test_output_shape_dtype_device(batch, device):
    x = batch.to(device)
    out = BatchAugment(ViewConfig(size=20))(x, torch.Generator().manual_seed(0))
    assert out.shape == (len(batch), 3, 20, 20) and out.dtype == torch.float32
    assert out.device.type == device and out.is_contiguous() and torch.isfinite(out).all()
    float_out = BatchAugment(ViewConfig(size=20))(x.float() / 255, torch.Generator().manual_seed(0))
    torch.testing.assert_close(float_out, out, atol=1e-5, rtol=0)
    views = MultiCrop(n_local=3)(x, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(len(batch), 3, 32, 32)] * 2 + [
        (len(batch), 3, 18, 18)
    ] * 3
    if device != "cpu":  # CPU generator: same parameters, so the same views on either device
        cpu = BatchAugment(ViewConfig(size=20))(batch, torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.cpu(), cpu, atol=1e-4, rtol=0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        BatchAugment(ViewConfig(size=8))(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        ViewConfig(size=8, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="hue"):
        ViewConfig(size=8, hue=0.7)
    with pytest.raises(ValueError, match="size"):
        ViewConfig(size=1)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        to_tensor_batch(np.zeros((4, 4, 3), dtype=np.uint8))


def test_blur_kernel_is_ten_percent_of_size_and_odd():
    assert [ViewConfig(size=s).blur_kernel_size for s in (18, 32, 96, 224)] == [3, 3, 9, 23]


def test_to_tensor_batch_layout(tmp_path):
    a = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    t = to_tensor_batch(a)
    assert t.shape == (2, 3, 3, 4) and t.dtype == torch.uint8 and t.is_contiguous()
    assert t[1, 2, 0, 3].item() == a[1, 0, 3, 2]
    # A read-only memmap (the dataset cache) converts without torch's non-writable warning.
    np.save(tmp_path / "a.npy", a)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(to_tensor_batch(mm[:1]), t[:1])


def test_multicrop_imagenet_setting():
    mc = MultiCrop.imagenet(n_local=4)
    assert (mc.global_aug.cfg.size, mc.local_aug.cfg.size) == (224, 96)
    assert mc.global_aug.cfg.scale == (0.14, 1.0) and mc.local_aug.cfg.scale == (0.05, 0.14)
    assert (mc.n_global, mc.n_local) == (2, 4)


def test_timing_print(capsys):
    """Prints throughput of the batched path (no assertion on time: shared CI machines)."""
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(ViewConfig(size=32))
    aug(x, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for s in range(3):
        aug(x, torch.Generator().manual_seed(s))
    per_batch = (time.perf_counter() - start) / 3
    with capsys.disabled():
        print(f"\nBatchAugment 256x3x32x32 on CPU, 1 thread: {per_batch * 1e3:.1f} ms/batch")
