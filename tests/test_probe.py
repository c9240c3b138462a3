"""Layer-wise linear probe (Goyal et al. 2019): pooling grids, head training, one-pass features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslengine.data.datasets import ImageArrayDataset
from sslengine.eval.features import extract_features
from sslengine.eval.probe import (
    extract_probe_features,
    layerwise_probe,
    probe_pool_grid,
    probe_pooling,
    train_linear_heads,
)
from sslengine.models.backbones import TAPS, build_backbone

torch.set_num_threads(1)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def naive_grid(channels: int, spatial: int, target: int) -> int:
    fitting = [g for g in range(1, spatial + 1) if channels * g * g <= target]
    return max(fitting) if fitting else 1


def test_pool_grid_reproduces_vissl_resnet50_numbers():
    # VISSL's ResNet-50 linear-eval pooling at 224 px: (channels, side) -> grid, dim
    vissl = {(64, 112): (12, 9216), (256, 56): (6, 9216), (512, 28): (4, 8192),
             (1024, 14): (3, 9216), (2048, 7): (2, 8192)}  # fmt: skip
    for (c, s), (g, dim) in vissl.items():
        assert probe_pool_grid(c, s) == g
        assert c * g * g == dim


def test_pool_grid_matches_brute_force_search():
    rng = np.random.default_rng(0)
    for _ in range(300):
        c, s, t = int(rng.integers(1, 3000)), int(rng.integers(1, 64)), int(rng.integers(1, 20000))
        assert probe_pool_grid(c, s, t) == naive_grid(c, s, t), (c, s, t)


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        ("resnet18", {"conv1": 9216, "layer1": 9216, "layer2": 8192, "layer3": 9216,
                      "layer4": 8192, "pooled": 512}),
        ("small_resnet", {"conv1": 9216, "layer1": 9216, "layer2": 8192, "layer3": 4096,
                          "layer4": 2048, "pooled": 128}),
    ],
)  # fmt: skip
def test_documented_tables_for_cifar_stem_at_32px(name, dims):
    backbone = build_backbone(name, cifar_stem=True)
    _, got = probe_pooling(backbone, 32)
    assert got == dims


def naive_adaptive_avg_pool(x: np.ndarray, g: int) -> np.ndarray:
    """(C, H, W) -> (C, g, g) by the definition: bin i spans [floor(i H / g), ceil((i+1) H / g))."""
    c, h, w = x.shape
    out = np.zeros((c, g, g))
    for i in range(g):
        r0, r1 = (i * h) // g, -(-((i + 1) * h) // g)
        for j in range(g):
            c0, c1 = (j * w) // g, -(-((j + 1) * w) // g)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def test_one_pass_cached_features_equal_separate_per_layer_passes(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", cifar_stem=True).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(37, 16, 16, 3), dtype=np.uint8)
    calls = []
    original = backbone.forward_taps

    def counting(x, taps):
        calls.append(x.shape[0])
        return original(x, taps)

    backbone.forward_taps = counting
    # a tiny budget and chunk force the memory-mapped, several-chunk path
    cached, dims = extract_probe_features(
        backbone, images, MEAN, STD, target=1024, batch_size=8, memory_budget_bytes=1,
        workdir=tmp_path, chunk_bytes=1,
    )  # fmt: skip
    # one blank image measures the taps' shapes; then every image goes through exactly once
    assert calls[0] == 1 and sum(calls[1:]) == len(images)
    assert all(isinstance(a, np.memmap) for a in cached.values())
    backbone.forward_taps = original

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    for tap in TAPS:
        with torch.no_grad():
            raw = backbone.forward_taps(x, (tap,))[tap].numpy()  # a separate pass per layer
        if raw.ndim == 2:
            expected = raw
        else:
            g = naive_grid(raw.shape[1], raw.shape[2], 1024)
            expected = np.stack([naive_adaptive_avg_pool(r, g).reshape(-1) for r in raw])
        assert dims[tap] == expected.shape[1]
        np.testing.assert_allclose(cached[tap], expected, rtol=1e-4, atol=1e-5, err_msg=tap)
        # and the same as the library's single-tap extraction
        pools, _ = probe_pooling(backbone, 16, (tap,), target=1024)
        single = extract_features(backbone, images, MEAN, STD, taps=(tap,), pool=pools)[tap]
        np.testing.assert_allclose(cached[tap], single, rtol=1e-5, atol=1e-6, err_msg=tap)


def _features(y: np.ndarray, d: int, signal: bool, rng: np.random.Generator, directions=None):
    x = rng.normal(size=(len(y), d)).astype(np.float32)
    if signal:  # the label is a linear function of the features: one direction per class
        x = 0.5 * x + 3.0 * directions[y]
    return x


def test_heads_separate_features_that_encode_the_label_and_not_random_ones():
    """Two heads trained in the same loop on the same labels: the one whose features encode
    the label linearly reaches ~100%, the one on pure noise stays at chance (so the heads do
    not leak into each other)."""
    rng = np.random.default_rng(0)
    classes, d = 4, 32
    directions = rng.normal(size=(classes, d)).astype(np.float32)
    ytr, yte = rng.integers(0, classes, 800), rng.integers(0, classes, 1000)
    train = {
        "signal": _features(ytr, d, True, rng, directions),
        "random": _features(ytr, d, False, rng),
    }
    test = {
        "signal": _features(yte, d, True, rng, directions),
        "random": _features(yte, d, False, rng),
    }
    res = train_linear_heads(train, ytr, test, yte, classes, epochs=5, batch_size=64)
    assert res["signal"]["top1"] > 0.97
    sigma = math.sqrt(0.25 * 0.75 / len(yte))  # binomial std of accuracy at chance
    assert abs(res["random"]["top1"] - 0.25) < 5 * sigma
    # 4 classes: top-min(5, C) always contains the label
    assert res["signal"]["top5"] == res["random"]["top5"] == 1.0
    assert res["signal"]["dim"] == d


def test_top5_counts_the_label_among_the_five_best_scores():
    """Train on one-hot features of the label; test on images showing class y+1 strongly and
    the label y weakly: the head ranks y+1 first and y second, so top-1 is ~0 and top-5 ~1."""
    rng = np.random.default_rng(1)
    eye = np.eye(10, dtype=np.float32)
    y = rng.integers(0, 10, 500)
    x = eye[y] + 0.05 * rng.normal(size=(500, 10)).astype(np.float32)
    yt = rng.integers(0, 10, 200)
    xt = eye[(yt + 1) % 10] + 0.6 * eye[yt]
    res = train_linear_heads({"a": x}, y, {"a": xt}, yt, 10, epochs=10, batch_size=32)
    assert res["a"]["top1"] < 0.05
    assert res["a"]["top5"] > 0.95


def _tiny_ds(labels: np.ndarray, size: int = 16, seed: int = 0) -> ImageArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), size, size, 3), dtype=np.uint8)
    return ImageArrayDataset(images, labels.astype(np.int64), [str(i) for i in range(3)])


def test_unknown_tap_and_missing_labels_are_refused():
    backbone = build_backbone("small_resnet", cifar_stem=True)
    labelled = _tiny_ds(np.arange(12) % 3)
    with pytest.raises(ValueError, match="layer9"):
        layerwise_probe(backbone, labelled, labelled, MEAN, STD, taps=("conv1", "layer9"))
    unlabelled = _tiny_ds(np.full(12, -1))
    with pytest.raises(ValueError, match="needs labels"):
        layerwise_probe(backbone, unlabelled, labelled, MEAN, STD, epochs=1)


def test_layerwise_probe_on_a_backbone_reports_every_tap():
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", cifar_stem=True)
    rng = np.random.default_rng(0)
    # class = which colour channel is bright: linearly decodable from any layer
    y = rng.integers(0, 3, size=90)
    images = rng.integers(0, 60, size=(90, 16, 16, 3), dtype=np.uint8)
    images[np.arange(90), :, :, y] += 180
    ds = ImageArrayDataset(images, y.astype(np.int64), ["r", "g", "b"])
    res = layerwise_probe(backbone, ds.subset(range(60)), ds.subset(range(60, 90)), MEAN, STD,
                          epochs=10, batch_size=16)  # fmt: skip
    assert list(res) == list(TAPS)
    for tap, r in res.items():
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0, tap
    assert res["conv1"]["top1"] > 0.9
