"""Frozen-backbone feature extraction, shared by kNN, linear probes, retrieval and clustering.

`extract_features` runs in one process. `extract_features_distributed` splits the work over
the ranks of a process group: every rank extracts its shard (`shard_indices`, DistributedSampler's
strided order without padding duplicates), then `gather_by_index` all-gathers the rows together
with their dataset indices and puts every row back at its index, so each rank ends up with the
same (N, D) matrix, in dataset order, as one process would compute. The gather is
gloo-compatible (sizes first, then fixed-size all_gathers of padded tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from sslengine.distributed import is_dist


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


def grid_cells(x: Tensor, grid: int) -> Tensor:
    """Cut (B, C, H, W) images into grid x grid non-overlapping cells of H // grid x W // grid
    pixels: (B * grid**2, C, H // grid, W // grid), image by image, cells in row-major order.
    When H or W is not a multiple of `grid`, the cells tile the centred region and the
    remainder at the borders is left out. grid = 1 returns `x` itself."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if grid == 1:
        return x
    b, c, h, w = x.shape
    ch, cw = h // grid, w // grid
    if ch < 1 or cw < 1:
        raise ValueError(f"a {grid}x{grid} grid does not fit {h}x{w} images")
    top, left = (h - ch * grid) // 2, (w - cw * grid) // 2
    x = x[:, :, top : top + ch * grid, left : left + cw * grid]
    # (B, C, g, ch, g, cw) -> (B, g, g, C, ch, cw)
    cells = x.reshape(b, c, grid, ch, grid, cw).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(b * grid * grid, c, ch, cw)


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
    indices: Sequence[int] | np.ndarray | None = None,
    patch_grid: int = 1,
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
        indices: only these rows of `images`, in this order (row k of the result is image
            ``indices[k]``); None = every image. Used for one rank's shard.
        patch_grid: 1 = each image whole; g > 1 = each image cut into g x g cells
            (`grid_cells`), every cell through the backbone on its own, and an image's feature
            at a tap the mean of its cells' (pooled) features. A trunk pretrained on patches
            (jigsaw, relative position) is read at the scale it was trained on, as Kolesnikov
            et al. 2019 evaluate those two methods (3 x 3 patches, representations averaged).

    Returns:
        {tap: float32 array (N, D_tap)}, in the order of `taps` (N = len(indices) if given).

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
    if patch_grid < 1 or min(images.shape[1:3]) < patch_grid:
        raise ValueError(
            f"patch_grid must be >= 1 and fit {images.shape[1]}x{images.shape[2]} images, "
            f"got {patch_grid}"
        )
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= images.shape[0]):
            raise ValueError(f"indices must lie in [0, {images.shape[0]})")
    n = images.shape[0] if indices is None else indices.size
    if n == 0:
        raise ValueError("no images to extract features from")
    if isinstance(taps, str):
        taps = (taps,)
    pool = dict(pool or {})
    run_on = _check_device(backbone, device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=run_on).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=run_on).view(1, -1, 1, 1)
    # (x / 255 - mean) / std as one multiply-add per pixel
    scale, shift = 1.0 / (255.0 * std_t), mean_t / std_t

    out: dict[str, np.ndarray] = {}
    flags = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        with torch.inference_mode():
            starts = range(0, n, batch_size)
            for start in tqdm(starts, desc="features", disable=not progress):
                # a copy: memmap slices are read-only, which torch.from_numpy warns about
                if indices is None:
                    batch = np.array(images[start : start + batch_size], order="C")
                else:  # fancy indexing reads only these rows of a memmap, and copies them
                    batch = np.ascontiguousarray(images[indices[start : start + batch_size]])
                x = torch.from_numpy(batch).to(run_on, non_blocking=True)
                x = x.permute(0, 3, 1, 2).float() * scale - shift
                feats = backbone.forward_taps(grid_cells(x, patch_grid), taps)
                for tap in taps:
                    f = feats[tap]
                    if tap in pool:
                        f = pool[tap](f)
                    elif f.dim() == 4:
                        f = f.mean(dim=(2, 3))
                    f = f.reshape(x.shape[0], patch_grid**2, -1).float().mean(dim=1)
                    f = f.cpu().numpy()
                    if tap not in out:  # the dimension is known only after the first batch
                        out[tap] = np.empty((n, f.shape[1]), dtype=np.float32)
                    out[tap][start : start + f.shape[0]] = f
    finally:
        for m, was_training in flags.items():
            m.training = was_training
    return {tap: out[tap] for tap in taps}


# ------------------------------------------------------------------------------ distributed


def shard_indices(n: int, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of ``range(n)``: indices rank, rank + world, rank + 2 world, ...

    The order of ``torch.utils.data.DistributedSampler(shuffle=False)`` but without the
    duplicates it appends to even out the shards: shards are disjoint, cover ``range(n)``
    and differ in size by at most one (a rank may get none when n < world).
    """
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need n >= 0 and 0 <= rank < world, got n={n} rank={rank} world={world}")
    return np.arange(rank, n, world, dtype=np.int64)


def collective_device() -> torch.device:
    """Where tensors handed to the default group must live: CUDA for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_padded(x: Tensor, counts: Sequence[int]) -> list[Tensor]:
    """All-gather (m_r, ...) tensors of different lengths m_r = counts[r] (same trailing shape
    and dtype everywhere): pad to max(counts), all_gather, then cut each rank's padding off."""
    longest = max(counts)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(out, padded)
    return [t[:c] for t, c in zip(out, counts, strict=True)]


def _width(a: np.ndarray) -> int:
    """A 2-D array's row width for the size exchange: -1 = unknown (no rows, width 0)."""
    if a.ndim != 2:
        return 0
    return -1 if a.shape == (0, 0) else int(a.shape[1])


def gather_by_index(
    arrays: Mapping[str, np.ndarray], indices: Sequence[int] | np.ndarray, n: int
) -> dict[str, np.ndarray]:
    """Reassemble rows that the ranks computed for their own dataset indices, on every rank.

    Args:
        arrays: {name: (m, ...) array}; row k belongs to dataset index ``indices[k]``. Every
            rank passes the same names, dtypes and trailing shapes, except that a rank with
            no rows may pass (0, 0) for a 2-D array whose width it could not know.
        indices: (m,) dataset indices of this rank's rows, in any order (a sampler's).
            The same index may come from several ranks (DistributedSampler's padding
            duplicates): the row of the lowest rank is kept.
        n: dataset size; together the ranks must cover ``range(n)``.

    Returns:
        {name: (n, ...) array}: row i is the row computed for dataset index i. Outside a
        process group (or in a group of one) the rows are only put in index order.

    Gloo-compatible: the row counts (and widths) are all-gathered first, then every array is
    padded to the longest shard and all-gathered once.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    m = idx.size
    for name, a in arrays.items():
        if a.shape[0] != m:
            raise ValueError(f"'{name}' has {a.shape[0]} rows for {m} indices")
    if m and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must lie in [0, {n})")
    names = list(arrays)
    if is_dist():
        device = collective_device()
        # header: [rows, then the width of every 2-D array (-1 when unknown: no rows)]
        widths = [_width(arrays[k]) for k in names]
        header = torch.tensor([m, *widths], dtype=torch.int64, device=device)
        headers = [torch.empty_like(header) for _ in range(dist.get_world_size())]
        dist.all_gather(headers, header)
        table = torch.stack(headers).cpu()
        counts = table[:, 0].tolist()
        all_idx = torch.cat(_all_gather_padded(torch.from_numpy(idx).to(device), counts))
        all_idx = all_idx.cpu().numpy()
        parts: dict[str, np.ndarray] = {}
        for col, name in enumerate(names, start=1):
            a = np.ascontiguousarray(arrays[name])
            if a.ndim == 2:
                width = int(table[:, col].max())
                known = table[:, col][table[:, 0] > 0]
                if known.numel() and bool((known != width).any()):
                    raise ValueError(f"'{name}' has different widths on different ranks")
                if m == 0:
                    a = np.zeros((0, width), dtype=a.dtype)
            t = torch.from_numpy(a).to(device)
            parts[name] = torch.cat(_all_gather_padded(t, counts)).cpu().numpy()
    else:
        all_idx, parts = idx, {k: np.asarray(v) for k, v in arrays.items()}

    # the first occurrence of every index (rank order), then scattered into dataset order
    unique, first = np.unique(all_idx, return_index=True)
    if unique.size != n:
        missing = np.setdiff1d(np.arange(n), unique)
        raise ValueError(f"{missing.size} of {n} dataset indices were computed by no rank")
    return {name: a[first] for name, a in parts.items()}


def extract_features_distributed(
    backbone: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    taps: Sequence[str] = ("pooled",),
    batch_size: int = 256,
    device: str | torch.device | None = None,
    pool: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    progress: bool = False,
    labels: np.ndarray | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    patch_grid: int = 1,
) -> dict[str, np.ndarray]:
    """`extract_features` with the work split over the process group; every rank gets all.

    Every rank must call it (it runs collectives) with the same images, arguments and
    weights. Rank r extracts ``indices`` (default: ``shard_indices(N, r, world)``), then the
    rows and their indices are all-gathered and put back in dataset order, so the result is
    the one-process result (up to float rounding from different batch compositions) in the
    same order whatever sampler cut the shards. Not distributed and no ``indices``: plain
    `extract_features`.

    Args:
        labels: optional (N,) labels of all images; gathered with the features (the labels of
            exactly the rows each rank computed) and returned as ``out["labels"]``.
        indices: this rank's rows (e.g. a DistributedSampler's, shuffled or padded with
            duplicates); together the ranks must cover every image.
        Others: as `extract_features`.

    Returns:
        {tap: float32 (N, D_tap)} in dataset order, plus "labels" (int64 (N,)) when given.
    """
    n = images.shape[0]
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if isinstance(taps, str):
        taps = (taps,)

    def extract(rows: np.ndarray | None) -> dict[str, np.ndarray]:
        return extract_features(
            backbone, images, mean, std, taps, batch_size, device, pool, progress,
            indices=rows, patch_grid=patch_grid,
        )  # fmt: skip

    if indices is None:
        if not is_dist():
            out = extract(None)
            return out if labels is None else {**out, "labels": labels.copy()}
        indices = shard_indices(n, dist.get_rank(), dist.get_world_size())
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size:
        local = extract(indices)
    else:  # fewer images than ranks: this rank only takes part in the gather
        local = {tap: np.zeros((0, 0), dtype=np.float32) for tap in taps}
    if labels is not None:
        local["labels"] = labels[indices]
    return gather_by_index(local, indices, n)
