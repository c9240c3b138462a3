"""What every method shares: a backbone, a way to make views, a loss. Never the loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from sslengine.data.augment import BatchAugment, ViewConfig
from sslengine.models.backbones import build_backbone

if TYPE_CHECKING:
    from sslengine.config import ExperimentConfig

METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method '{name}' registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@dataclass
class StepOutput:
    """What one training step returns to the loop (tensors stay on the device: no sync)."""

    loss: Tensor
    features: Tensor | None = None  # backbone features of one view, for the online probe
    embeddings: tuple[Tensor, Tensor] | None = None  # two views' embeddings, collapse metrics
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set heads in __init__ and implement `make_views` and `forward`.

    `make_views` turns a uint8 batch (B, 3, H, W) into the method's inputs (on the batch's
    device, random parameters from `generator`); `forward(views, indices)` returns a StepOutput.
    Keeping the two apart lets the distributed tests feed identical views to 1 and 2 processes.
    State that must survive a restart (queues, banks, prototypes, momentum encoders) lives in
    registered buffers or submodules so `state_dict()` captures it.
    """

    name: ClassVar[str] = ""

    def __init__(self, cfg: ExperimentConfig, dataset_size: int, mean: tuple, std: tuple):
        super().__init__()
        self.cfg = cfg
        self.dataset_size = dataset_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.backbone = build_backbone(cfg.backbone.name, cifar_stem=cfg.backbone.cifar_stem)
        # augmenters built once (see `augmenter`), keyed by what distinguishes them
        self._augmenters: dict[tuple, BatchAugment] = {}

    # -- views ---------------------------------------------------------------------------
    def view_config(
        self,
        size: int | None = None,
        scale_min: float | None = None,
        scale_max: float | None = None,
    ) -> ViewConfig:
        v = self.cfg.views
        return ViewConfig(
            size=size or self.cfg.dataset.image_size,
            scale=(
                scale_min if scale_min is not None else v.crop_scale_min,
                scale_max if scale_max is not None else v.crop_scale_max,
            ),
            hflip_p=v.hflip_p,
            jitter_p=v.jitter_p,
            brightness=v.brightness,
            contrast=v.contrast,
            saturation=v.saturation,
            hue=v.hue,
            grayscale_p=v.grayscale_p,
            blur_p=v.blur_p_for(self.cfg.dataset.image_size),
            solarize_p=v.solarize_p,
            mean=self.mean,
            std=self.std,
        )

    def augmenter(
        self,
        size: int | None = None,
        scale_min: float | None = None,
        scale_max: float | None = None,
        **overrides: Any,
    ) -> BatchAugment:
        """The `BatchAugment` for ``view_config(size, scale_min, scale_max)`` with the
        ViewConfig fields in `overrides` replaced; built on first use, then reused every step
        (the config is validated once; the views are exactly those a fresh one would draw).
        ``cfg.views`` / ``cfg.dataset`` are read at that first use: change them before the
        first step, or build a new method."""
        key = (size, scale_min, scale_max, tuple(sorted(overrides.items())))
        aug = self._augmenters.get(key)
        if aug is None:
            view_cfg = self.view_config(size, scale_min, scale_max)
            if overrides:
                view_cfg = dataclasses.replace(view_cfg, **overrides)
            compile_ = self.cfg.train.compile_augment
            aug = self._augmenters[key] = BatchAugment(view_cfg, compile=compile_)
        return aug

    def two_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        aug = self.augmenter()
        return [aug(images, generator), aug(images, generator)]

    def make_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        return self.two_views(images, generator)

    def forward(self, views: list[Tensor], indices: Tensor) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    # -- hooks the loop calls --------------------------------------------------------------
    def on_before_optimizer_step(self, step: int) -> None:
        """E.g. SwAV zeroes the prototypes' gradient while they are frozen."""

    def on_after_optimizer_step(self, step: int) -> None:
        """E.g. SwAV re-normalises its prototypes."""

    def uses_sync_bn(self) -> bool:
        """Methods whose loss needs global batch statistics convert BN to SyncBatchNorm."""
        return True


def build_method(cfg: ExperimentConfig, dataset_size: int, mean: tuple, std: tuple) -> Method:
    try:
        cls = METHODS[cfg.method]
    except KeyError:
        raise ValueError(
            f"unknown method '{cfg.method}'; known methods: {', '.join(sorted(METHODS))}"
        ) from None
    return cls(cfg, dataset_size, mean, std)
