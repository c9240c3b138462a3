"""One experiment configuration: the single source of truth for the CLI, the queue and the UI.

Every field has a default taken from the method's paper (scaled down where the paper's value is
an ImageNet-scale budget) and a range; unknown keys are refused. The dashboard's launch form is
generated from these models, so a field added here appears in the form without UI code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "apply_overrides",
    "format_validation_error",
    "load_config",
]


class ConfigError(ValueError):
    """An experiment config that cannot run; the message names the offending field."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number (not NaN or infinity)")
    return value


class DatasetConfig(Section):
    name: Literal["digits", "cifar10", "imagefolder"] = Field(
        "digits", description="digits is built in (no download); cifar10 and imagefolder need root"
    )
    root: str | None = Field(None, description="folder or .tar.gz, inside a configured data root")
    train_split: str = "train"
    test_split: str = "test"
    image_size: int = Field(32, ge=8, le=512, description="images are cached at this size")
    max_per_class: int | None = Field(
        None, ge=1, description="keep at most this many images per class (quick experiments)"
    )
    test_max_per_class: int | None = Field(
        None,
        ge=1,
        description=(
            "at most this many held-out (test split) images per class; empty = max_per_class. "
            "Train on a subset, evaluate on more: a larger held-out set narrows the kNN and "
            "probe accuracies (2,000 images: one standard error ~1 point; 10,000: ~0.5)"
        ),
    )

    def max_per_class_of(self, split: str) -> int | None:
        """The per-class cap a run applies to `split`: test_max_per_class for the test split
        when it is set (and the test split is not the train split), else max_per_class."""
        if split == self.test_split != self.train_split and self.test_max_per_class is not None:
            return self.test_max_per_class
        return self.max_per_class

    @model_validator(mode="after")
    def _root_needed(self) -> DatasetConfig:
        if self.name in ("cifar10", "imagefolder") and not self.root:
            raise ValueError(f"dataset '{self.name}' needs dataset.root (a folder path)")
        return self


# The smallest cell (px) eval.knn_patch_grid may cut an image into.
MIN_PATCH_CELL = 4


def patch_grid_problem(field: str, grid: int, image_size: int) -> str | None:
    """Why a ``grid`` x ``grid`` readout of ``image_size`` px images is refused, naming
    ``field``; None when its cells are large enough (at least MIN_PATCH_CELL px)."""
    cell = image_size // grid
    if cell >= MIN_PATCH_CELL:
        return None
    return (
        f"{field} {grid} cuts {image_size} px images into {cell} px cells; cells need at "
        f"least {MIN_PATCH_CELL} px (lower the grid or raise dataset.image_size)"
    )


# Images at least this large get Gaussian blur when views.blur_p is left empty (auto).
BLUR_AUTO_MIN_SIZE = 64


class ViewsConfig(Section):
    """SimCLR augmentation pipeline (Chen et al. 2020, Appendix A), CIFAR-scale defaults."""

    crop_scale_min: float = Field(0.08, gt=0.0, le=1.0)
    crop_scale_max: float = Field(1.0, gt=0.0, le=1.0)
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    brightness: float = Field(0.4, ge=0.0, le=1.0)
    contrast: float = Field(0.4, ge=0.0, le=1.0)
    saturation: float = Field(0.4, ge=0.0, le=1.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description=(
            "Gaussian blur probability; empty = auto: 0.5 (the paper's ImageNet value) for "
            "images of 64 px and more, 0 below (SimCLR drops blur on CIFAR)"
        ),
    )
    solarize_p: float = Field(0.0, ge=0.0, le=1.0)

    def blur_p_for(self, image_size: int) -> float:
        """`blur_p`, or where it is left empty, the SimCLR paper's choice for this image size:
        blur on ImageNet-scale images (p=0.5), none on CIFAR-scale ones (Chen et al. 2020,
        Appendix B.9)."""
        if self.blur_p is not None:
            return self.blur_p
        return 0.5 if image_size >= BLUR_AUTO_MIN_SIZE else 0.0

    @model_validator(mode="after")
    def _scale_order(self) -> ViewsConfig:
        if self.crop_scale_min > self.crop_scale_max:
            raise ValueError("views.crop_scale_min must not exceed views.crop_scale_max")
        return self


class BackboneConfig(Section):
    name: Literal["small_resnet", "resnet18", "resnet50"] = "small_resnet"
    cifar_stem: bool = Field(
        True, description="3x3 stride-1 first conv, no max-pool (small images)"
    )


class OptimConfig(Section):
    name: Literal["sgd", "lars", "adamw"] = "lars"
    lr: float = Field(0.3, gt=0.0, le=100.0, description="base lr for batch 256 (scaled linearly)")
    lr_scaling: Literal["linear", "none"] = "linear"
    weight_decay: float = Field(1e-6, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="linear warmup share of steps")
    schedule: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = Field(0.0, ge=0.0, le=1.0)

    _finite_lr = field_validator("lr", "weight_decay")(_finite)


class TrainConfig(Section):
    batch_size: int = Field(128, ge=2, le=65536, description="global batch over all devices")
    epochs: int = Field(1, ge=1, le=10000)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    devices: Literal["auto"] | int = Field(1, description="'auto' = every GPU (1 on CPU), or N")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU")
    accumulate_grad_batches: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "split each device's batch into N micro-batches, backpropagate each, step once "
            "(saves memory). NOT equivalent to an N times larger batch: BatchNorm "
            "normalises over each micro-batch, SimCLR's negatives (and Barlow Twins' "
            "correlation, SwAV's Sinkhorn codes) come from one micro-batch only, and MoCo's "
            "queue / PIRL's memory bank are updated after every micro-batch. Exact only "
            "for a per-sample loss on a model without batch coupling"
        ),
    )
    log_every: int = Field(10, ge=1, description="flush metrics every N steps")
    collapse_every: int = Field(50, ge=1, description="collapse metrics every N steps")
    checkpoint_every: int = Field(200, ge=1, description="checkpoint every N steps")
    online_probe: bool = Field(
        True,
        description="train a linear probe on detached features during the run "
        "(logs online_probe_acc; never changes the representation)",
    )
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the model")
    compile_augment: bool = Field(
        False,
        description=(
            "torch.compile the batched augmentation: inductor fuses its ~100 small elementwise "
            "ops per view into a few loops (2.7x faster per view on CPU, and it keeps the loop "
            "fed when cores are oversubscribed); costs ~30 s of compilation at start"
        ),
    )

    @field_validator("devices")
    @classmethod
    def _devices_positive(cls, v: Literal["auto"] | int) -> Literal["auto"] | int:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'auto' or a positive number of devices")
        return v


class EvalConfig(Section):
    knn: bool = True
    knn_k: list[int] = Field(default_factory=lambda: [20, 200])
    knn_temperature: float = Field(0.07, gt=0.0, le=10.0)
    knn_max_train: int | None = Field(None, ge=1, description="subsample the kNN memory")
    knn_tap: Literal["conv1", "layer1", "layer2", "layer3", "layer4", "pooled"] = Field(
        "pooled",
        description=(
            "backbone tap the end-of-run kNN reads (globally average-pooled). Pretext-task "
            "features are most general before the last stage, which specialises to the "
            "pretext (Goyal et al. 2019: jigsaw peaks at res4 = layer3)"
        ),
    )
    knn_patch_grid: int = Field(
        1,
        ge=1,
        le=8,
        description=(
            "1 = each image whole; g = each image cut into g x g cells, every cell through the "
            "backbone, the image's feature the mean of its cells'. A trunk pretrained on patches "
            "(jigsaw, relative position) is then read at the scale it learned; Kolesnikov et al. "
            "2019 evaluate those two methods this way (3 x 3 patches, representations averaged)"
        ),
    )

    @field_validator("knn_k")
    @classmethod
    def _k_positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v


# ---- method sections: the paper's defaults -------------------------------------------------


class SimCLRConfig(Section):
    """Chen et al. 2020: 2-layer MLP head, NT-Xent; tau 0.5 on CIFAR (0.1 on ImageNet)."""

    temperature: float = Field(0.5, gt=0.0, le=10.0)
    proj_hidden_dim: int = Field(512, ge=8, le=16384)
    proj_dim: int = Field(128, ge=8, le=16384)
    views_forward: Literal["joint", "per_view"] = Field(
        "joint",
        description=(
            "joint: both views as one 2N batch through backbone and head (the paper's code; "
            "BatchNorm statistics over both views); per_view: one forward per view (BatchNorm "
            "statistics per view, as lightly's and solo-learn's loops do; on a CPU the smaller "
            "batch stays in cache, ~10-15% faster). The loss is the same function of z1, z2"
        ),
    )


class MoCoConfig(Section):
    """He et al. 2020 / Chen et al. 2020 (v2): EMA 0.999, queue K, InfoNCE tau 0.2, MLP head."""

    temperature: float = Field(0.2, gt=0.0, le=10.0)
    queue_size: int = Field(4096, ge=1, le=1_000_000)
    momentum: float = Field(0.99, ge=0.0, lt=1.0, description="paper: 0.999 at ImageNet scale")
    proj_hidden_dim: int = Field(512, ge=8, le=16384)
    proj_dim: int = Field(128, ge=8, le=16384)
    shuffle_bn: bool = True


class SwAVConfig(Section):
    """Caron et al. 2020: prototypes, Sinkhorn-Knopp (eps 0.05, 3 iters), tau 0.1, multi-crop."""

    n_prototypes: int = Field(100, ge=2, le=100_000)
    temperature: float = Field(0.1, gt=0.0, le=10.0)
    epsilon: float = Field(0.05, gt=0.0, le=10.0)
    sinkhorn_iterations: int = Field(3, ge=1, le=100)
    n_large_crops: int = Field(2, ge=2, le=8)
    n_small_crops: int = Field(4, ge=0, le=16)
    small_crop_size: int = Field(18, ge=4, le=512)
    large_crop_scale_min: float = Field(0.14, gt=0.0, le=1.0)
    small_crop_scale_max: float = Field(0.14, gt=0.0, le=1.0)
    freeze_prototypes_steps: int = Field(100, ge=0)
    queue_size: int = Field(0, ge=0, description="feature queue length (0 = none)")
    queue_start_step: int = Field(0, ge=0)
    proj_hidden_dim: int = Field(512, ge=8, le=16384)
    proj_dim: int = Field(128, ge=8, le=16384)


class BarlowTwinsConfig(Section):
    """Zbontar et al. 2021: 3-layer projector with BN, lambda 0.0051."""

    lambd: float = Field(0.0051, ge=0.0, le=10.0)
    proj_dim: int = Field(1024, ge=8, le=65536)


class RotationConfig(Section):
    """Gidaris et al. 2018: predict one of 4 rotations (0/90/180/270 degrees)."""


class JigsawConfig(Section):
    """Noroozi & Favaro 2016: 3x3 tiles, permutations chosen for maximal Hamming distance."""

    n_permutations: int = Field(100, ge=2, le=362_880, description="at most 9! = 362880")
    tile_gap: int = Field(2, ge=0, description="pixels of jitter/gap so edges cannot be matched")
    tile_norm: Literal["channel", "tile", "none"] = Field(
        "channel",
        description=(
            "standardise each tile by its own mean/std: per channel (the paper's code), over "
            "the whole tile (keeps its colour), or not at all"
        ),
    )


class RelativePositionConfig(Section):
    """Doersch et al. 2015: 8-way position of a neighbour patch relative to the centre."""

    patch_gap: int = Field(2, ge=0, description="pixels between patches; 0 = patch / 2")
    color_drop: bool = True
    neighbours: int = Field(
        1,
        ge=1,
        le=8,
        description=(
            "distinct neighbours of each centre patch, each a pair to classify: 1 = the "
            "paper's one pair per image; k pairs cost 1 + k patches through the trunk"
        ),
    )


class PIRLConfig(Section):
    """Misra & van der Maaten 2020: a memory bank, m=0.5, tau 0.07, 0.5/0.5 mix of two terms.

    The loss against the bank is InfoNCE by default (softmax over the positive and the sampled
    negatives, as in the public PIRL reimplementations); ``loss: nce`` is the paper's binary NCE
    with the normalisation constant Z estimated once on the first step (Wu et al. 2018, VISSL's
    ``norm_constant: -1``). The paper's literal Z = 1 is not offered: the negative terms then
    swamp the positive one and nothing trains. Measured on the CPU preset (BENCHMARKS.md): NCE
    with the estimated Z still diverges in a short run (Z is fixed against the random initial
    bank, then the bank fills with features far more alike), InfoNCE learns.
    """

    temperature: float = Field(0.07, gt=0.0, le=10.0)
    n_negatives: int = Field(1024, ge=1, le=1_000_000)
    bank_momentum: float = Field(0.5, ge=0.0, lt=1.0)
    loss_weight: float = Field(0.5, ge=0.0, le=1.0, description="lambda of the two NCE terms")
    proj_dim: int = Field(128, ge=8, le=16384)
    loss: Literal["infonce", "nce"] = Field(
        "infonce",
        description=(
            "infonce: softmax over the positive and the negatives (learns at any scale); nce: "
            "the paper's noise-contrastive estimation with Z = |D| x mean exp(s/tau) estimated "
            "once on the first step (Wu et al. 2018, VISSL; diverges in short runs)"
        ),
    )


class ExperimentConfig(Section):
    """Everything one pretraining run needs; validated before anything is queued."""

    method: str = Field("simclr", description="a registered method name")
    name: str = Field("", max_length=200)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    simclr: SimCLRConfig = Field(default_factory=SimCLRConfig)
    moco: MoCoConfig = Field(default_factory=MoCoConfig)
    swav: SwAVConfig = Field(default_factory=SwAVConfig)
    barlow_twins: BarlowTwinsConfig = Field(default_factory=BarlowTwinsConfig)
    rotation: RotationConfig = Field(default_factory=RotationConfig)
    jigsaw: JigsawConfig = Field(default_factory=JigsawConfig)
    relative_position: RelativePositionConfig = Field(default_factory=RelativePositionConfig)
    pirl: PIRLConfig = Field(default_factory=PIRLConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from sslengine.methods import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method '{v}'; known methods: {', '.join(sorted(METHODS))}")
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> ExperimentConfig:
        devices = self.train.devices if isinstance(self.train.devices, int) else 1
        if self.train.batch_size % devices:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is not divisible by "
                f"train.devices {devices}"
            )
        grid_problem = patch_grid_problem(
            "eval.knn_patch_grid", self.eval.knn_patch_grid, self.dataset.image_size
        )
        if grid_problem:
            raise ValueError(grid_problem)
        if self.method == "moco" and self.moco.queue_size % self.train.batch_size:
            raise ValueError(
                f"moco.queue_size {self.moco.queue_size} must be divisible by "
                f"train.batch_size {self.train.batch_size} (keys are enqueued a batch at a time)"
            )
        if self.method == "swav" and self.swav.queue_size % self.train.batch_size:
            raise ValueError(
                f"swav.queue_size {self.swav.queue_size} must be divisible by "
                f"train.batch_size {self.train.batch_size}"
            )
        return self

    # -- helpers --------------------------------------------------------------------------
    def method_section(self) -> Section:
        return getattr(self, self.method)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "dataset": self.dataset.name,
            "backbone": self.backbone.name,
            "batch_size": self.train.batch_size,
            "epochs": self.train.epochs,
        }


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a config field)"
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML scalars) to a raw config dict."""
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return out


def parse_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw dict; raises ConfigError whose message names every bad field."""
    if not isinstance(data, dict):
        raise ConfigError("config: must be a mapping of keys to values")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Load a YAML file (or defaults when path is None) and apply `--set key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
        data = loaded
    return parse_config(apply_overrides(data, overrides or []))


def config_errors(data: dict[str, Any]) -> dict[str, str]:
    """Validation problems keyed by dotted field path ('' for whole-config problems)."""
    try:
        ExperimentConfig.model_validate(data)
    except ValidationError as err:
        out: dict[str, str] = {}
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key (not a config field)"
            out[loc] = f"{out[loc]}; {msg}" if loc in out else msg
        return out
    return {}
