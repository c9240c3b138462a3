"""ResNet trunks with named feature taps, as VISSL's trunks expose them (Goyal et al. 2019,
"Scaling and Benchmarking Self-Supervised Visual Representation Learning").

A `Backbone` is a ResNet without its classifier. `forward(x)` returns the pooled features
(B, out_dim), the fast path every method trains through; `forward_taps(x, taps)` returns the
named stage outputs the layer-wise linear probe reads, so probing another stage is a config
value, not new code.

Taps (shapes for an input (B, 3, H, W)):

- ``conv1``  : after conv1 + bn1 + ReLU, *before* the max-pool (VISSL's ``conv1_relu``/``res1``).
  ImageNet stem: (B, C0, H/2, W/2); CIFAR stem (no max-pool): (B, C0, H, W).
- ``layer1`` .. ``layer4`` : output of each residual stage ("res2".."res5"); layer1 follows the
  max-pool in the ImageNet stem, so it is H/4 there and H in the CIFAR stem; each further stage
  halves the resolution.
- ``pooled`` : global average pool of layer4, flattened: (B, out_dim).

Weights are always built with ``weights=None``: nothing is ever downloaded. The parameter
names (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...) are torchvision's, so a
torchvision ResNet state dict without ``fc.*`` loads into the matching Backbone.

torchvision is imported only to build resnet18 / resnet50: importing it also imports
torch._dynamo (through torchvision.ops), about 2 s of every process start on a 2-core CPU, and
every worker, launcher and rank that trains the small ResNet would pay it for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

TAPS: tuple[str, ...] = ("conv1", "layer1", "layer2", "layer3", "layer4", "pooled")

# small_resnet: one BasicBlock per stage, narrow widths; sized so a few hundred SimCLR steps of
# batch 128 at 32 px fit in well under a minute on 2 CPU cores (about 0.1 s per step).
SMALL_RESNET_WIDTHS: tuple[int, int, int, int] = (16, 32, 64, 128)


class BasicBlock(nn.Module):
    """The two-conv residual block of He et al. 2016, with torchvision's attribute names and
    construction order (conv1, bn1, conv2, bn2; the caller builds `downsample` first), so a
    seed draws the same weights as torchvision's ``BasicBlock`` (tests/test_backbones.py)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _block_out_channels(block: nn.Module) -> int:
    """Output channels of a residual block (ours or torchvision's): those of the BN closing its
    branch, bn3 of a bottleneck, bn2 of a basic block."""
    for name in ("bn3", "bn2"):
        bn = getattr(block, name, None)
        if isinstance(bn, nn.BatchNorm2d):
            return bn.num_features
    raise TypeError(f"unsupported residual block {type(block).__name__}")


class Backbone(nn.Module):
    """A ResNet trunk (no classifier) with named feature taps; see the module docstring.

    Attributes:
        name: registry name ("small_resnet", "resnet18", "resnet50").
        cifar_stem: True when conv1 is 3x3 stride 1 and the max-pool is removed.
        out_dim: channels of the pooled features.
        tap_channels: channels of every tap in `TAPS`.
        channels_last: `forward` runs the convolutions in NHWC memory layout (about 1.5x faster
            on CPU/oneDNN and the layout tensor cores want under AMP); the pooled output is the
            same. `forward_taps` keeps the default layout so callers may `.view` its outputs.
    """

    def __init__(
        self,
        name: str,
        conv1: nn.Conv2d,
        bn1: nn.BatchNorm2d,
        maxpool: nn.Module,
        layers: Sequence[nn.Sequential],
        cifar_stem: bool,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"a ResNet trunk has 4 stages, got {len(layers)}")
        self.name = name
        self.cifar_stem = cifar_stem
        self.channels_last = channels_last
        self.conv1 = conv1
        self.bn1 = bn1
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.tap_channels: dict[str, int] = {"conv1": conv1.out_channels}
        for i, layer in enumerate(layers, start=1):
            self.tap_channels[f"layer{i}"] = _block_out_channels(layer[-1])
        self.tap_channels["pooled"] = self.tap_channels["layer4"]
        self.out_dim: int = self.tap_channels["pooled"]

    def _stages(self) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
        return [
            ("conv1", lambda x: self.relu(self.bn1(self.conv1(x)))),
            # the max-pool belongs to layer1's input so that the conv1 tap is the conv output
            ("layer1", lambda x: self.layer1(self.maxpool(x))),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
            ("layer4", self.layer4),
            ("pooled", lambda x: torch.flatten(self.avgpool(x), 1)),
        ]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> pooled features (B, out_dim)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward_taps(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """(B, 3, H, W) -> {tap: output} for the requested taps, in the order requested.

        Stops after the deepest requested tap, so probing conv1 never runs layer1..layer4.
        Raises ValueError for an unknown tap or an empty request.
        """
        if isinstance(taps, str):  # "pooled" would otherwise be read as 6 one-letter taps
            taps = (taps,)
        unknown = [t for t in taps if t not in TAPS]
        if unknown:
            raise ValueError(f"unknown tap(s) {unknown}; known taps: {', '.join(TAPS)}")
        if not taps:
            raise ValueError(f"no taps requested; choose from: {', '.join(TAPS)}")
        wanted = set(taps)
        deepest = max(TAPS.index(t) for t in taps)
        found: dict[str, Tensor] = {}
        for name, stage in self._stages()[: deepest + 1]:
            x = stage(x)
            if name in wanted:
                found[name] = x
        return {t: found[t] for t in taps}


def _init_like_torchvision(module: nn.Module, zero_init_residual: bool) -> None:
    """He init for convs, unit/zero BN, and optionally zero-init of the last BN of each block
    (Goyal et al. 2017): each residual block then starts as the identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def _cifar_conv1(out_channels: int) -> nn.Conv2d:
    """SimCLR's CIFAR stem (Chen et al. 2020, appendix B.9): 3x3 stride 1, no max-pool, so a
    32 px image keeps enough resolution for four stages."""
    conv = nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _from_torchvision(
    name: str, cifar_stem: bool, zero_init_residual: bool, channels_last: bool
) -> Backbone:
    from torchvision import models  # ~2 s: only when a torchvision ResNet is asked for

    net = getattr(models, name)(weights=None, zero_init_residual=zero_init_residual)
    conv1, maxpool = net.conv1, net.maxpool
    if cifar_stem:
        conv1, maxpool = _cifar_conv1(net.conv1.out_channels), nn.Identity()
    return Backbone(
        name,
        conv1,
        net.bn1,
        maxpool,
        [net.layer1, net.layer2, net.layer3, net.layer4],
        cifar_stem=cifar_stem,
        channels_last=channels_last,
    )


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    layers = [BasicBlock(in_ch, out_ch, stride, downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _small_resnet(cifar_stem: bool, zero_init_residual: bool, channels_last: bool) -> Backbone:
    w = SMALL_RESNET_WIDTHS
    if cifar_stem:
        conv1, maxpool = _cifar_conv1(w[0]), nn.Identity()
    else:
        conv1 = nn.Conv2d(3, w[0], kernel_size=7, stride=2, padding=3, bias=False)
        maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    layers = [_stage(w[0], w[0], 1, stride=1)]
    layers += [_stage(w[i - 1], w[i], 1, stride=2) for i in range(1, 4)]
    backbone = Backbone(
        "small_resnet",
        conv1,
        nn.BatchNorm2d(w[0]),
        maxpool,
        layers,
        cifar_stem=cifar_stem,
        channels_last=channels_last,
    )
    _init_like_torchvision(backbone, zero_init_residual)
    return backbone


def _torchvision_builder(name: str) -> Callable[[bool, bool, bool], Backbone]:
    def build(cifar_stem: bool, zero_init_residual: bool, channels_last: bool) -> Backbone:
        return _from_torchvision(name, cifar_stem, zero_init_residual, channels_last)

    return build


# name -> builder(cifar_stem, zero_init_residual, channels_last)
BACKBONES: dict[str, Callable[[bool, bool, bool], Backbone]] = {
    "small_resnet": _small_resnet,
    "resnet18": _torchvision_builder("resnet18"),
    "resnet50": _torchvision_builder("resnet50"),
}


def build_backbone(
    name: str,
    cifar_stem: bool = False,
    zero_init_residual: bool = False,
    channels_last: bool = True,
) -> Backbone:
    """Build a randomly initialised backbone by registry name (never downloads weights).

    Args:
        name: one of `BACKBONES` ("small_resnet", "resnet18", "resnet50").
        cifar_stem: 3x3 stride-1 conv1 and no max-pool, for 32-96 px images.
        zero_init_residual: zero the last BN gamma of every residual block.
        channels_last: run `forward` in NHWC layout (see `Backbone`).
    """
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone '{name}'; known backbones: {', '.join(sorted(BACKBONES))}"
        ) from None
    return builder(cifar_stem, zero_init_residual, channels_last)
