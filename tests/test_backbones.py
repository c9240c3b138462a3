"""Backbones with named taps, projection heads, and frozen-feature extraction."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

from sslengine.eval.features import extract_features
from sslengine.models import BACKBONES, TAPS, Backbone, build_backbone, projection_mlp
from sslengine.models import backbones as backbones_module

torch.set_num_threads(1)

# (channels per tap, spatial side per tap) worked out by hand from the architectures:
# CIFAR stem keeps the input side through conv1 and layer1; the ImageNet stem halves it at
# conv1 (stride 2) and again at the max-pool before layer1; layer2..4 each halve it.
CHANNELS = {
    "small_resnet": (16, 16, 32, 64, 128),
    "resnet18": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
}
SIDES = {(True, 32): (32, 32, 16, 8, 4), (False, 64): (32, 16, 8, 4, 2)}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Building a backbone must never try to download weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", ["small_resnet", "resnet18", "resnet50"])
@pytest.mark.parametrize(("cifar_stem", "px"), [(True, 32), (False, 64)])
def test_tap_shapes(name, cifar_stem, px):
    torch.manual_seed(0)
    b = build_backbone(name, cifar_stem=cifar_stem).eval()
    x = torch.randn(2, 3, px, px)
    with torch.no_grad():
        taps = b.forward_taps(x, TAPS)
    assert list(taps) == list(TAPS)
    for tap, c, side in zip(TAPS[:5], CHANNELS[name], SIDES[(cifar_stem, px)], strict=True):
        assert taps[tap].shape == (2, c, side, side), tap
        assert b.tap_channels[tap] == c
    assert taps["pooled"].shape == (2, CHANNELS[name][-1])
    assert b.out_dim == b.tap_channels["pooled"] == CHANNELS[name][-1]
    # pooled is the spatial mean of layer4
    assert _rel_err(taps["pooled"], taps["layer4"].mean(dim=(2, 3))) < 1e-5


@pytest.mark.parametrize("name", ["small_resnet", "resnet18"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_forward_equals_pooled_tap(name, train_mode):
    torch.manual_seed(1)
    b = build_backbone(name, cifar_stem=True).train(train_mode)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fast = b(x)
        tapped = b.forward_taps(x, ["pooled"])["pooled"]
    assert fast.shape == (4, b.out_dim)
    # forward runs channels_last, forward_taps does not: equal up to conv rounding
    assert _rel_err(fast, tapped) < 1e-4


def test_forward_taps_returns_requested_order_and_stops_early():
    b = build_backbone("small_resnet", cifar_stem=True).eval()
    calls = {"layer3": 0, "layer4": 0}
    for name in calls:
        getattr(b, name).register_forward_hook(
            lambda *a, n=name: calls.__setitem__(n, calls[n] + 1)
        )
    out = b.forward_taps(torch.randn(2, 3, 32, 32), ("layer2", "conv1"))
    assert list(out) == ["layer2", "conv1"]
    assert calls == {"layer3": 0, "layer4": 0}
    b.forward_taps(torch.randn(2, 3, 32, 32), "layer3")  # a bare string is one tap
    assert calls == {"layer3": 1, "layer4": 0}


def test_unknown_tap_and_unknown_backbone_are_named():
    b = build_backbone("small_resnet")
    with pytest.raises(ValueError, match=r"res9.*conv1, layer1, layer2, layer3, layer4, pooled"):
        b.forward_taps(torch.randn(1, 3, 32, 32), ["layer1", "res9"])
    with pytest.raises(ValueError, match="no taps"):
        b.forward_taps(torch.randn(1, 3, 32, 32), [])
    with pytest.raises(ValueError, match=r"vit_b.*resnet18, resnet50, small_resnet"):
        build_backbone("vit_b")
    assert set(BACKBONES) == {"small_resnet", "resnet18", "resnet50"}


@pytest.mark.parametrize("name", ["small_resnet", "resnet18"])
def test_stems(name):
    cifar = build_backbone(name, cifar_stem=True)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    imnet = build_backbone(name, cifar_stem=False)
    assert imnet.conv1.kernel_size == (7, 7) and imnet.conv1.stride == (2, 2)
    assert isinstance(imnet.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", ["small_resnet", "resnet50"])
def test_zero_init_residual(name):
    def last_bn_gammas(b: Backbone) -> list[torch.Tensor]:
        blocks = [blk for layer in (b.layer1, b.layer2, b.layer3, b.layer4) for blk in layer]
        return [blk.bn3.weight if hasattr(blk, "bn3") else blk.bn2.weight for blk in blocks]

    zeroed = last_bn_gammas(build_backbone(name, zero_init_residual=True))
    plain = last_bn_gammas(build_backbone(name))
    assert len(zeroed) == (4 if name == "small_resnet" else 16)
    assert all(torch.all(g == 0) for g in zeroed)
    assert all(torch.all(g == 1) for g in plain)


def test_matches_torchvision_resnet18():
    """Same parameter names as torchvision (minus fc) and the same function."""
    torch.manual_seed(2)
    ref = torchvision.models.resnet18(weights=None).eval()
    ref.fc = nn.Identity()
    b = build_backbone("resnet18", cifar_stem=False).eval()
    b.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel_err(b(x), ref(x)) < 1e-4


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_small_resnet_blocks_draw_torchvision_weights_and_compute_the_same(monkeypatch, cifar_stem):
    """The small ResNet's own BasicBlock (kept so that a process training it never imports
    torchvision) is torchvision's: built from one seed with either block class, the state dicts
    are equal (same names, same draws in the same order) and so are the outputs."""
    torch.manual_seed(5)
    ours = build_backbone("small_resnet", cifar_stem=cifar_stem).eval()
    monkeypatch.setattr(backbones_module, "BasicBlock", tv_resnet.BasicBlock)
    torch.manual_seed(5)
    ref = build_backbone("small_resnet", cifar_stem=cifar_stem).eval()
    assert isinstance(ref.layer2[0], tv_resnet.BasicBlock)
    assert not isinstance(ours.layer2[0], tv_resnet.BasicBlock)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.forward_taps(x, TAPS)["pooled"], ref(x), atol=1e-6)
        assert torch.equal(ours(x), ref(x))


def test_importing_the_library_for_the_small_resnet_leaves_torchvision_unimported():
    """torchvision (and torch._dynamo, which it imports) costs ~2 s of every process start."""
    import subprocess
    import sys

    code = (
        "import sys, sslengine.methods, sslengine.train.loop, tasks.submit;"
        "from sslengine.models import build_backbone;"
        "build_backbone('small_resnet', cifar_stem=True);"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_small_resnet_trains_fast():
    """Forward + backward + SGD step, batch 128 at 32 px; the time is printed (-s)."""
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        b = build_backbone("small_resnet", cifar_stem=True)
        head = projection_mlp(b.out_dim, 128, 64)
        params = list(b.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=0.1)
        x = torch.randn(128, 3, 32, 32)
        before = b.conv1.weight.detach().clone()
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = head(b(x)).pow(2).mean()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    step = min(times[1:])
    print(f"\nsmall_resnet fwd+bwd+step, batch 128 @ 32px, 2 threads: {step * 1000:.0f} ms/step")
    assert torch.isfinite(loss)
    assert not torch.equal(before, b.conv1.weight)


def test_projection_mlp_layouts():
    simclr = projection_mlp(32, 64, 16)
    assert [type(m) for m in simclr] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert simclr[0].bias is None and simclr[3].bias is not None
    barlow = projection_mlp(32, 64, 16, num_layers=3)
    assert [type(m) for m in barlow] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    moco = projection_mlp(32, 64, 16, hidden_bn=False)
    assert [type(m) for m in moco] == [nn.Linear, nn.ReLU, nn.Linear]
    last = projection_mlp(32, 64, 16, last_bn=True)
    assert isinstance(last[-1], nn.BatchNorm1d) and last[-2].bias is None
    assert last(torch.randn(5, 32)).shape == (5, 16)
    assert [type(m) for m in projection_mlp(32, 64, 16, num_layers=1)] == [nn.Linear]
    with pytest.raises(ValueError):
        projection_mlp(32, 64, 16, num_layers=0)


# -- extract_features ---------------------------------------------------------------------


def _images(n: int, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def test_extract_features_matches_manual_pipeline():
    torch.manual_seed(4)
    b = build_backbone("small_resnet", cifar_stem=True)
    images = _images(11)
    with torch.no_grad():
        b.bn1.running_mean.uniform_(-1, 1)  # so eval-mode BN differs visibly from train-mode
    feats = extract_features(b, images, MEAN, STD, taps=("layer2", "pooled"), batch_size=4)
    assert list(feats) == ["layer2", "pooled"]
    assert feats["pooled"].dtype == np.float32 and feats["pooled"].shape == (11, 128)
    assert feats["layer2"].shape == (11, 32)

    # independent path: normalise in float64 numpy, whole batch, eval mode, pool by hand
    x = (images.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    b.eval()
    with torch.no_grad():
        ref = b.forward_taps(x, ["layer2", "pooled"])
    np.testing.assert_allclose(feats["pooled"], ref["pooled"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        feats["layer2"], ref["layer2"].mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5
    )


def test_extract_features_custom_pool_memmap_and_flags(tmp_path):
    torch.manual_seed(5)
    b = build_backbone("small_resnet", cifar_stem=True)
    b.train()
    b.layer1.eval()  # a caller-frozen submodule must stay frozen
    path = tmp_path / "imgs.npy"
    np.save(path, _images(6))
    images = np.load(path, mmap_mode="r")

    def pool(f: torch.Tensor) -> torch.Tensor:  # 2x2 adaptive max pool, flattened
        return nn.functional.adaptive_max_pool2d(f, 2).flatten(1)

    feats = extract_features(b, images, MEAN, STD, taps=("conv1",), pool={"conv1": pool})
    assert feats["conv1"].shape == (6, 16 * 4)
    assert b.training and not b.layer1.training and b.layer2.training

    b.eval()
    x = (
        torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255.0
        - torch.tensor(MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = pool(b.forward_taps(x, ["conv1"])["conv1"]).numpy()
    np.testing.assert_allclose(feats["conv1"], ref, rtol=1e-4, atol=1e-5)


def test_extract_features_rejects_bad_input():
    b = build_backbone("small_resnet", cifar_stem=True)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(b, _images(2).astype(np.float32), MEAN, STD)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extract_features(b, _images(2), (125.0, 120.0, 110.0), STD)
    with pytest.raises(ValueError, match="device"):
        extract_features(b, _images(2), MEAN, STD, device="meta")
    with pytest.raises(ValueError, match="unknown tap"):
        extract_features(b, _images(2), MEAN, STD, taps=("res5",))
