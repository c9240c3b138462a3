"""Layer-wise linear probe of a frozen backbone (Goyal et al. 2019, "Scaling and Benchmarking
Self-Supervised Visual Representation Learning", sec. 4.1; VISSL's ``linear_eval`` configs).

Every stage of the trunk (``conv1``, ``layer1`` .. ``layer4`` = "res1".."res5", and the
globally pooled features) gets its own linear classifier trained on frozen features, so the
chart "top-1 per layer" shows where a method's representation is most linearly separable
(pretext tasks peak before the last stage; invariance methods keep rising).

Protocol, as in VISSL:
- trunk in eval mode (BN running statistics), no gradient;
- each 4-D stage output is average-pooled to a small spatial grid so that C * g * g is about
  9k, then flattened; the head is ``BatchNorm1d(affine=False) -> Linear`` (weights N(0, 0.01),
  bias 0, as VISSL's ``eval_mlp``);
- SGD with Nesterov momentum 0.9, weight decay 5e-4, step schedule: lr x 0.1 at 60% and 80%
  of the steps (Goyal et al. use 28 epochs with steps at 8/16/24 on ImageNet).

Efficiency: the backbone runs ONCE over each split with every tap requested
(``forward_taps``), the pooled features are cached (in memory, or in memory-mapped files when
they would exceed ``memory_budget_bytes``), and all heads train together in one loop over
mini-batches (their losses are summed; the heads share no parameter, so each is trained
exactly as if alone).

Pooling grid (``probe_pool_grid``): the largest square grid g <= the map's side with
C * g * g <= 9216. For VISSL's ResNet-50 at 224 px this reproduces their numbers exactly
(they use fixed AvgPool2d kernels; here ``AdaptiveAvgPool2d(g)`` gives the same grid for any
input size):

==========  ============  =============================  ======================  =====
tap         ResNet-50     ResNet-50 (VISSL, 224 px)      C x g x g               dim
==========  ============  =============================  ======================  =====
conv1       64 @ 112      AvgPool(10, 10, 4)             64 x 12 x 12            9216
layer1      256 @ 56      AvgPool(16, 8, 0)              256 x 6 x 6             9216
layer2      512 @ 28      AvgPool(13, 5, 0)              512 x 4 x 4             8192
layer3      1024 @ 14     AvgPool(8, 3, 0)               1024 x 3 x 3            9216
layer4      2048 @ 7      AvgPool(6, 1, 0)               2048 x 2 x 2            8192
pooled      2048          global average                 2048                    2048
==========  ============  =============================  ======================  =====

ResNet-18 (64, 64, 128, 256, 512 channels), CIFAR stem at 32 px (ImageNet stem at 224 px gives
the same grids: the maps are 112/56/28/14/7 and every grid still fits):

==========  ==============  ===================  =====
tap         C @ side        C x g x g            dim
==========  ==============  ===================  =====
conv1       64 @ 32         64 x 12 x 12         9216
layer1      64 @ 32         64 x 12 x 12         9216
layer2      128 @ 16        128 x 8 x 8          8192
layer3      256 @ 8         256 x 6 x 6          9216
layer4      512 @ 4         512 x 4 x 4 (all)    8192
pooled      512             global average       512
==========  ==============  ===================  =====

small_resnet (16, 32, 64, 128 channels), CIFAR stem at 32 px. The net is so narrow that from
layer2 on the whole map fits under 9k dims, so nothing is pooled there (g = the map's side):

==========  ==============  ===================  =====
tap         C @ side        C x g x g            dim
==========  ==============  ===================  =====
conv1       16 @ 32         16 x 24 x 24         9216
layer1      16 @ 32         16 x 24 x 24         9216
layer2      32 @ 16         32 x 16 x 16 (all)   8192
layer3      64 @ 8          64 x 8 x 8 (all)     4096
layer4      128 @ 4         128 x 4 x 4 (all)    2048
pooled      128             global average       128
==========  ==============  ===================  =====
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from sslengine.data.datasets import ImageArrayDataset
from sslengine.eval.features import extract_features
from sslengine.models.backbones import TAPS

__all__ = [
    "PROBE_TARGET_DIM",
    "extract_probe_features",
    "layerwise_probe",
    "probe_pool_grid",
    "probe_pooling",
    "train_linear_heads",
]

PROBE_TARGET_DIM = 9216  # Goyal et al. 2019: "about 9k" features per layer (VISSL: 8192-9216)


def probe_pool_grid(channels: int, spatial: int, target: int = PROBE_TARGET_DIM) -> int:
    """Side g of the pooling grid: the largest g <= spatial with channels * g * g <= target.

    At least 1 (a layer wider than `target` channels is globally pooled). When the whole map
    fits (channels * spatial^2 <= target) g = spatial and nothing is averaged away.
    """
    if channels < 1 or spatial < 1 or target < 1:
        raise ValueError(f"channels, spatial and target must be >= 1, got {channels}, {spatial}")
    g = min(spatial, math.isqrt(target // channels)) if channels <= target else 1
    return max(1, g)


def _check_taps(taps: Sequence[str]) -> tuple[str, ...]:
    if isinstance(taps, str):
        taps = (taps,)
    taps = tuple(taps)
    if not taps:
        raise ValueError(f"no taps requested; choose from: {', '.join(TAPS)}")
    unknown = [t for t in taps if t not in TAPS]
    if unknown:
        raise ValueError(f"unknown tap(s) {unknown}; known taps: {', '.join(TAPS)}")
    if len(set(taps)) != len(taps):
        raise ValueError(f"taps requested twice: {list(taps)}")
    return taps


def probe_pooling(
    backbone: nn.Module,
    image_size: int,
    taps: Sequence[str] = TAPS,
    target: int = PROBE_TARGET_DIM,
) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """The pooling of every tap for `image_size` inputs, and the probe's input dimension.

    Returns ({tap: AdaptiveAvgPool2d(g) + Flatten} for 4-D taps, {tap: C * g * g (or D)}).
    The shapes come from one forward pass of a blank image (eval mode, no grad; the modules'
    training flags are restored).
    """
    taps = _check_taps(taps)
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    flags = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        with torch.inference_mode():
            x = torch.zeros(1, 3, image_size, image_size, device=device)
            shapes = {t: tuple(v.shape[1:]) for t, v in backbone.forward_taps(x, taps).items()}
    finally:
        for m, was_training in flags.items():
            m.training = was_training
    pools: dict[str, nn.Module] = {}
    dims: dict[str, int] = {}
    for tap, shape in shapes.items():
        if len(shape) == 1:
            dims[tap] = int(shape[0])
            continue
        c, h, w = shape
        g = probe_pool_grid(c, min(h, w), target)
        pools[tap] = nn.Sequential(nn.AdaptiveAvgPool2d(g), nn.Flatten(1))
        dims[tap] = c * g * g
    return pools, dims


def extract_probe_features(
    backbone: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    taps: Sequence[str] = TAPS,
    target: int = PROBE_TARGET_DIM,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    memory_budget_bytes: int = 2 << 30,
    workdir: str | Path | None = None,
    chunk_bytes: int = 256 << 20,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Pooled features (N, dim_tap) of every tap from ONE backbone pass per image.

    Images are processed in chunks of about `chunk_bytes` of output features, so peak memory
    is the chunk plus the result. When the result (N * sum(dims) * 4 bytes) is larger than
    `memory_budget_bytes`, it is written to ``.npy`` files in `workdir` (required then) and
    returned memory-mapped: CIFAR-10's 50k images x 6 taps x ~9k dims is ~9 GB.

    Returns ({tap: float32 (N, dim)}, {tap: dim}).
    """
    taps = _check_taps(taps)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("no images to extract features from")
    pools, dims = probe_pooling(backbone, int(images.shape[1]), taps, target)
    row_bytes = 4 * sum(dims.values())
    out: dict[str, np.ndarray] = {}
    if n * row_bytes > memory_budget_bytes:
        if workdir is None:
            raise ValueError(
                f"probe features need {n * row_bytes / 2**30:.1f} GiB, more than the "
                f"{memory_budget_bytes / 2**30:.1f} GiB budget: pass workdir= to memory-map them"
            )
        for tap in taps:
            path = Path(workdir) / f"{tap}.npy"
            out[tap] = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=(n, dims[tap])
            )
    else:
        out = {tap: np.empty((n, dims[tap]), dtype=np.float32) for tap in taps}
    # chunks are whole batches, so a chunk boundary never changes which images share a batch
    chunk = max(batch_size, (chunk_bytes // row_bytes) // batch_size * batch_size)
    for start in tqdm(range(0, n, chunk), desc="probe features", disable=not progress):
        feats = extract_features(
            backbone,
            images[start : start + chunk],
            mean,
            std,
            taps=taps,
            batch_size=batch_size,
            device=device,
            pool=pools,
        )
        for tap in taps:
            out[tap][start : start + feats[tap].shape[0]] = feats[tap]
    for arr in out.values():
        if isinstance(arr, np.memmap):
            arr.flush()
    return out, dims


def _topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int]) -> list[int]:
    top = logits.topk(max(ks), dim=1).indices  # (B, kmax), best first
    hit = top == labels[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of shuffled batches; a trailing batch of one sample (which BatchNorm cannot
    normalise in training mode) is dropped."""
    perm = rng.permutation(n)
    out = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    # sorted rows read a memory-mapped feature file sequentially; order within a batch is moot
    return [np.sort(b) for b in out]


def train_linear_heads(
    train_features: Mapping[str, np.ndarray],
    train_labels: np.ndarray,
    test_features: Mapping[str, np.ndarray],
    test_labels: np.ndarray,
    num_classes: int,
    epochs: int = 28,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    milestones: Sequence[float] = (0.6, 0.8),
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, float | int]]:
    """Train one ``BatchNorm1d(affine=False) -> Linear`` head per feature set, all together.

    Args:
        train_features / test_features: {name: float (N, D_name)} / {name: (M, D_name)}, same
            names and dims (numpy arrays or memmaps).
        train_labels: int (N,) in [0, num_classes); test_labels: int (M,).
        epochs, batch_size, lr, weight_decay, momentum: SGD with Nesterov momentum; lr is
            multiplied by 0.1 at each fraction of the total steps in `milestones`.
        seed: head initialisation and batch order.

    Returns:
        {name: {"top1": fraction, "top5": fraction (top-min(5, C)), "dim": D_name}} on the test
        set, with BN in eval mode (running statistics).
    """
    names = list(train_features)
    if sorted(names) != sorted(test_features):
        raise ValueError(f"train/test feature sets differ: {names} vs {list(test_features)}")
    y_train = np.asarray(train_labels, dtype=np.int64)
    y_test = np.asarray(test_labels, dtype=np.int64)
    n, m = len(y_train), len(y_test)
    if n < 2 or m < 1:
        raise ValueError(f"a probe needs >= 2 training and >= 1 test samples, got {n} and {m}")
    if y_train.min() < 0 or y_test.min() < 0:
        raise ValueError("the linear probe needs labels: the dataset has unlabelled images (-1)")
    if max(y_train.max(), y_test.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}")
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 2, lr > 0; got {epochs}, {batch_size}")
    dims = {}
    for name in names:
        tr, te = train_features[name], test_features[name]
        if tr.ndim != 2 or te.ndim != 2 or tr.shape[1] != te.shape[1]:
            raise ValueError(f"features '{name}' must be (N, D) and (M, D): {tr.shape}, {te.shape}")
        if tr.shape[0] != n or te.shape[0] != m:
            raise ValueError(
                f"features '{name}' have {tr.shape[0]}/{te.shape[0]} rows, not {n}/{m}"
            )
        dims[name] = int(tr.shape[1])

    run_on = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    heads = nn.ModuleDict()
    for name in names:
        linear = nn.Linear(dims[name], num_classes)
        nn.init.normal_(linear.weight, std=0.01, generator=gen)  # VISSL eval_mlp init
        nn.init.zeros_(linear.bias)
        heads[name] = nn.Sequential(nn.BatchNorm1d(dims[name], affine=False), linear)
    heads.to(run_on)
    opt = torch.optim.SGD(
        heads.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
    )
    rng = np.random.default_rng(seed)
    steps_per_epoch = len(_batches(n, batch_size, np.random.default_rng(0)))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=sorted({max(1, int(f * total)) for f in milestones}), gamma=0.1
    )
    labels_t = torch.from_numpy(y_train)

    def rows(arrays: Mapping[str, np.ndarray], idx: np.ndarray | slice) -> dict[str, Tensor]:
        return {k: torch.from_numpy(np.asarray(arrays[k][idx], dtype=np.float32)) for k in names}

    heads.train()
    for _ in tqdm(range(epochs), desc="linear probe", disable=not progress):
        for idx in _batches(n, batch_size, rng):
            x = rows(train_features, idx)
            y = labels_t[idx].to(run_on)
            loss = sum(
                F.cross_entropy(heads[k](x[k].to(run_on, non_blocking=True)), y) for k in names
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    ks = (1, min(5, num_classes))
    correct = {k: [0, 0] for k in names}
    heads.eval()
    with torch.inference_mode():
        for start in range(0, m, 1024):
            sl = slice(start, start + 1024)
            x = rows(test_features, sl)
            y = torch.from_numpy(y_test[sl]).to(run_on)
            for k in names:
                c1, c5 = _topk_correct(heads[k](x[k].to(run_on)), y, ks)
                correct[k][0] += c1
                correct[k][1] += c5
    return {
        k: {"top1": correct[k][0] / m, "top5": correct[k][1] / m, "dim": dims[k]} for k in names
    }


def _labelled(ds: ImageArrayDataset, what: str) -> np.ndarray:
    labels = np.asarray(ds.labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError(f"the {what} split is empty")
    if (labels < 0).any():
        raise ValueError(
            f"the linear probe needs labels, but the {what} split has "
            f"{int((labels < 0).sum())} unlabelled images"
        )
    return labels


def layerwise_probe(
    backbone: nn.Module,
    train_ds: ImageArrayDataset,
    test_ds: ImageArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    taps: Sequence[str] = TAPS,
    epochs: int = 28,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    device: str | torch.device | None = None,
    target: int = PROBE_TARGET_DIM,
    seed: int = 0,
    memory_budget_bytes: int = 2 << 30,
    workdir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float | int]]:
    """Linear-probe top-1/top-5 of every tap of a frozen backbone (see the module docstring).

    Args:
        backbone: a `Backbone`, already on `device` (None = where it is).
        train_ds / test_ds: labelled splits (uint8 (N, H, W, 3) images, labels >= 0).
        mean, std: the normalisation the backbone was trained with, in [0, 1] units.
        taps: names from `TAPS`; an unknown one raises ValueError naming it.
        memory_budget_bytes, workdir: features larger than the budget go to memory-mapped
            files in a temporary folder inside `workdir` (None: the system's temp folder),
            removed on return.

    Returns:
        {tap: {"top1", "top5", "dim"}} in the order of `taps`.
    """
    taps = _check_taps(taps)
    y_train = _labelled(train_ds, "training")
    y_test = _labelled(test_ds, "test")
    num_classes = max(len(train_ds.classes), int(y_train.max()) + 1, int(y_test.max()) + 1)
    if num_classes < 2:
        raise ValueError("the linear probe needs labels of at least 2 classes")
    with tempfile.TemporaryDirectory(prefix=".probe-features-", dir=workdir) as tmp:
        common = dict(
            taps=taps,
            target=target,
            batch_size=batch_size,
            device=device,
            memory_budget_bytes=memory_budget_bytes,
            progress=progress,
        )
        (Path(tmp) / "train").mkdir()
        (Path(tmp) / "test").mkdir()
        f_train, _ = extract_probe_features(
            backbone, train_ds.images, mean, std, workdir=Path(tmp) / "train", **common
        )
        f_test, _ = extract_probe_features(
            backbone, test_ds.images, mean, std, workdir=Path(tmp) / "test", **common
        )
        param = next(backbone.parameters(), None)
        head_device = (
            device if device is not None else (param.device if param is not None else None)
        )
        result = train_linear_heads(
            f_train,
            y_train,
            f_test,
            y_test,
            num_classes,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            device=head_device,
            seed=seed,
            progress=progress,
        )
        del f_train, f_test  # close the memmaps before their folder is removed
    return {tap: result[tap] for tap in taps}
