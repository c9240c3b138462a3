"""Inputs and labels for the classification pretext tasks, batched on tensors.

- Rotation (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image
  Rotations"): 4-way, 0/90/180/270 degrees.
- Jigsaw (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving
  Jigsaw Puzzles"): 3x3 tiles shuffled by one permutation of a max-Hamming-distance set.
- Relative patch position (Doersch et al. 2015, "Unsupervised Visual Representation Learning by
  Context Prediction"): 8-way position of a neighbour patch relative to the centre patch.

Images are (B, C, H, W), float or uint8. Every random choice is drawn from the ``generator``
argument (on the generator's own device, then moved to the images' device), so a batch is
reproducible from a seed whatever device the images live on.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NEIGHBOUR_OFFSETS",
    "jigsaw_batch",
    "max_hamming_permutations",
    "relative_patch_batch",
    "rotate_batch",
]

# Relative-patch labels: (row, col) of the neighbour in the 3x3 grid whose centre is (1, 1),
# row-major with the centre skipped: 0 top-left, 1 top, 2 top-right, 3 left, 4 right,
# 5 bottom-left, 6 bottom, 7 bottom-right.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2),
)  # fmt: skip


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """Uniform integers in [0, high), drawn on the generator's device, returned on ``device``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, high, size, generator=generator, device=gen_device).to(device)


def _check_images(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W); got shape {tuple(x.shape)}")


def _crop(x_hwc: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """Square crops of side ``size`` at per-crop corners: x (B, H, W, C), top/left (B, n).

    Returns (B, n, C, size, size). One gather for the whole batch, no Python loop.
    """
    b, n = top.shape
    ar = torch.arange(size, device=x_hwc.device)
    rows = (top[..., None] + ar)[:, :, :, None]  # (B, n, s, 1)
    cols = (left[..., None] + ar)[:, :, None, :]  # (B, n, 1, s)
    batch = torch.arange(b, device=x_hwc.device)[:, None, None, None]
    return x_hwc[batch, rows, cols].permute(0, 1, 4, 2, 3)  # (B, n, C, s, s)


# ----------------------------------------------------------------------------- rotation


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four rotations of every image (Gidaris et al. 2018).

    Args:
        x: (B, C, H, W) images with H == W (a 90 degree turn must keep the shape).

    Returns:
        ``x_rot`` (4B, C, H, W) and ``labels`` (4B,): block k (rows ``k*B .. (k+1)*B - 1``)
        holds the images rotated by k * 90 degrees counter-clockwise (``torch.rot90`` on the
        (H, W) plane) and label k. The dtype is kept (rotation is exact).
    """
    _check_images(x)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images; got H={x.shape[-2]}, W={x.shape[-1]}")
    b = x.shape[0]
    x_rot = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=0)
    labels = torch.arange(4, device=x.device).repeat_interleave(b)
    return x_rot, labels


# ----------------------------------------------------------------------------- jigsaw


@functools.lru_cache(maxsize=4)
def _all_permutations(n_tiles: int) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(n_tiles))), dtype=np.uint8)
    perms.setflags(write=False)
    return perms


@functools.lru_cache(maxsize=16)
def _max_hamming(n_perms: int, n_tiles: int, seed: int) -> np.ndarray:
    everything = _all_permutations(n_tiles)
    total = everything.shape[0]
    columns = np.ascontiguousarray(everything.T)  # (n_tiles, n!): one contiguous row per tile
    min_dist = np.full(total, n_tiles, dtype=np.int8)  # distance to the chosen set, -1 = chosen
    sum_dist = np.zeros(total, dtype=np.int32)
    dist = np.empty(total, dtype=np.uint8)
    differs = np.empty(total, dtype=bool)

    chosen = np.empty(n_perms, dtype=np.int64)
    j = int(np.random.default_rng(seed).integers(total))  # Alg. 1 starts from a random one
    for i in range(n_perms):
        chosen[i] = j
        p = everything[j]
        dist.fill(0)
        for t in range(n_tiles):
            np.not_equal(columns[t], p[t], out=differs)
            np.add(dist, differs.view(np.uint8), out=dist)
        np.minimum(min_dist, dist.view(np.int8), out=min_dist)
        sum_dist += dist
        min_dist[j] = -1
        if i + 1 == n_perms:
            break
        best = min_dist.max()
        candidates = np.flatnonzero(min_dist == best)
        j = int(candidates[np.argmax(sum_dist[candidates])])
    out = everything[chosen].astype(np.int64)
    out.setflags(write=False)
    return out


def max_hamming_permutations(n_perms: int, n_tiles: int = 9, seed: int = 0) -> Tensor:
    """A set of tile permutations far apart in Hamming distance (Noroozi & Favaro 2016, Alg. 1).

    Greedy selection over all ``n_tiles!`` permutations: start from a random one (seeded), then
    repeatedly add the permutation whose MINIMUM Hamming distance to the chosen set is largest
    (ties: the largest total distance, which is Alg. 1's own criterion, then the first in
    lexicographic order). Maximising the minimum distance is what makes the puzzle classes
    hard to confuse; the paper's Alg. 1 line ``argmax 1^T D`` maximises the total only.

    Vectorised numpy on a (n_tiles, n!) uint8 table with running min/sum distances: about a
    millisecond per chosen permutation for 9 tiles. Results are cached per arguments.

    Args:
        n_perms: size of the set (the jigsaw's number of classes; 100 / 1000 in the paper).
        n_tiles: tiles per puzzle (9 for a 3x3 grid); at most 10.
        seed: picks the first permutation.

    Returns:
        (n_perms, n_tiles) int64 tensor; row k maps output slot i to source tile ``row[i]``.

    Raises:
        ValueError: if ``n_perms`` exceeds ``n_tiles!`` or is not positive.
    """
    if not 1 <= n_tiles <= 10:
        raise ValueError(
            f"n_tiles must be in 1..10 (all n! permutations are enumerated), got {n_tiles}"
        )
    if not 1 <= n_perms <= math.factorial(n_tiles):
        raise ValueError(
            f"n_perms must be between 1 and n_tiles! = {math.factorial(n_tiles)}, got {n_perms}"
        )
    return torch.from_numpy(_max_hamming(n_perms, n_tiles, seed).copy())


TILE_NORMS = ("channel", "tile", "none")


def _standardise_tiles(tiles: Tensor, eps: float, mode: str = "channel") -> Tensor:
    # Zero mean, unit std per tile, so a tile's brightness/contrast cannot tell its neighbours
    # (Noroozi & Favaro Sec. 3.2 normalise each tile independently). "channel": per tile and
    # channel, as their released code does (removes the tile's colour cast too); "tile": one
    # mean and std over the tile's channels and pixels (keeps its colour).
    dims = (-2, -1) if mode == "channel" else (-3, -2, -1)
    mean = tiles.mean(dim=dims, keepdim=True)
    std = tiles.std(dim=dims, keepdim=True, unbiased=False)
    return (tiles - mean) / std.clamp_min(eps)


def jigsaw_batch(
    x: Tensor,
    permutations: Tensor,
    *,
    generator: torch.Generator | None = None,
    grid: int = 3,
    tile_size: int | None = None,
    gap: int | None = None,
    normalize_tiles: bool | str = True,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    """Cut each image into a grid x grid puzzle and shuffle it by a random permutation.

    The image's top-left ``grid*cell`` square region is split into cells of ``cell =
    min(H, W) // grid`` pixels; in each cell a ``tile_size`` tile is cropped at a random
    offset (jitter) that keeps at least ``gap`` pixels between tiles of neighbouring cells, so
    tiles never share an edge and the network cannot solve the puzzle by matching borders
    (Noroozi & Favaro: 64-pixel tiles in 75-pixel cells).

    Args:
        x: (B, C, H, W) float or uint8 images.
        permutations: (P, grid*grid) integer permutations, e.g. ``max_hamming_permutations``.
        generator: source of the random offsets and permutation choices.
        grid: tiles per side.
        tile_size: tile side; default ``floor(cell * 64 / 75)`` as in the paper.
        gap: minimum pixels between tiles of adjacent cells; default half the slack
            ``(cell - tile_size) // 2``, leaving the other half as jitter.
        normalize_tiles: standardise each tile by its own mean and std: ``"channel"`` (or
            True) per channel, ``"tile"`` over all its channels at once (keeps its colour),
            ``"none"`` (or False) not at all.
        eps: floor on the std (a constant tile becomes zeros).

    Returns:
        ``tiles`` (B, grid*grid, C, t, t) float (float32 for uint8 input) and ``labels`` (B,)
        int64 indices into ``permutations``. Output slot i holds the tile cut from cell
        ``permutations[labels[b], i]`` (cells numbered row-major), so the original order is
        recovered by ``original[:, perm] = tiles``.
    """
    _check_images(x)
    n_tiles = grid * grid
    if permutations.dim() != 2 or permutations.shape[1] != n_tiles:
        raise ValueError(
            f"permutations must be (P, {n_tiles}) for grid={grid}; got {tuple(permutations.shape)}"
        )
    b, _, h, w = x.shape
    cell = min(h, w) // grid
    t = tile_size if tile_size is not None else (cell * 64) // 75
    g = gap if gap is not None else (cell - t) // 2
    if t < 1 or g < 0 or t + g > cell:
        raise ValueError(
            f"tile_size={t} and gap={g} do not fit cells of {cell} px ({grid}x{grid} grid on "
            f"{h}x{w} images): need 1 <= tile_size and tile_size + gap <= cell"
        )

    device = x.device
    slack = cell - t - g  # jitter range inside the cell, after reserving the gap
    oy = _randint(slack + 1, (b, n_tiles), generator, device)
    ox = _randint(slack + 1, (b, n_tiles), generator, device)
    cells = torch.arange(n_tiles, device=device)
    top = (cells // grid) * cell + g // 2 + oy
    left = (cells % grid) * cell + g // 2 + ox
    tiles = _crop(x.permute(0, 2, 3, 1), top, left, t)  # (B, n, C, t, t) in cell order
    if not tiles.is_floating_point():
        tiles = tiles.float()

    labels = _randint(permutations.shape[0], (b,), generator, device)
    order = permutations.to(device=device, dtype=torch.long)[labels]  # (B, n)
    tiles = tiles[torch.arange(b, device=device)[:, None], order]
    mode = {True: "channel", False: "none"}.get(normalize_tiles, normalize_tiles)
    if mode not in TILE_NORMS:
        raise ValueError(f"normalize_tiles must be a bool or one of {TILE_NORMS}, got {mode!r}")
    if mode != "none":
        tiles = _standardise_tiles(tiles, eps, mode)
    return tiles, labels


# ----------------------------------------------------------------------- relative position


def _relative_patch_geometry(
    size: int, patch_size: int | None, gap: int | None, jitter: int | None
) -> tuple[int, int, int]:
    if patch_size is None:
        # Doersch et al.: 96 px patches, 48 px gaps, up to 7 px jitter; scale to the image.
        p = max(1, int(size / (4 + 1 / 7)))
        while True:
            j = jitter if jitter is not None else max(1, round(p / 14))
            gp = gap if gap is not None else max(2 * j, p // 2)
            if 3 * p + 2 * gp + 2 * j <= size or p == 1:
                break
            p -= 1
    else:
        p = patch_size
        j = jitter if jitter is not None else max(1, round(p / 14))
        gp = gap if gap is not None else max(2 * j, p // 2)
    if p < 1 or j < 0 or gp < 2 * j or 3 * p + 2 * gp + 2 * j > size:
        raise ValueError(
            f"patch_size={p}, gap={gp}, jitter={j} do not fit {size} px images: need "
            "gap >= 2 * jitter (patches never overlap) and 3*patch + 2*gap + 2*jitter <= size"
        )
    return p, gp, j


def _drop_colours(patches: Tensor, generator: torch.Generator | None, noise_scale: float) -> Tensor:
    # Doersch et al. Sec. 4: keep one random channel per patch, replace the other two with
    # Gaussian noise of ~1/100 its std. Chromatic aberration shifts colour channels relative to
    # each other across the lens; with one channel left the network cannot read a patch's
    # position off that shift. The noise is centred on the kept channel's mean so the dropped
    # channels carry neither colour nor a constant that reveals which channel was kept.
    b, c = patches.shape[:2]
    keep = _randint(c, (b,), generator, patches.device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(
        patches.shape, generator=generator, device=gen_device, dtype=patches.dtype
    ).to(patches.device)
    kept = patches[torch.arange(b, device=patches.device), keep][:, None]  # (B, 1, p, p)
    mean = kept.mean(dim=(-2, -1), keepdim=True)
    std = kept.std(dim=(-2, -1), keepdim=True, unbiased=False)
    replaced = mean + noise_scale * std * noise
    is_kept = torch.arange(c, device=patches.device)[None, :] == keep[:, None]  # (B, C)
    return torch.where(is_kept[:, :, None, None], patches, replaced)


def relative_patch_batch(
    x: Tensor,
    *,
    generator: torch.Generator | None = None,
    patch_size: int | None = None,
    gap: int | None = None,
    jitter: int | None = None,
    color_drop: bool = True,
    noise_scale: float = 0.01,
    neighbours: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """A centre patch, one of its 8 neighbours and the neighbour's position (Doersch et al.).

    A 3x3 layout of ``patch_size`` patches separated by ``gap`` pixels is placed at a random
    position in each image; every patch is then moved by its own random jitter in
    [-jitter, jitter] on each axis. Gaps and jitter stop the network from solving the task by
    continuing lines or textures across patch borders (Sec. 3).

    Args:
        x: (B, C, H, W) float or uint8 images.
        generator: source of every random choice.
        patch_size: patch side; default about ``min(H, W) / 4.14`` (the paper's 96 px patch with
            48 px gaps and 7 px jitter, scaled to the image).
        gap: pixels between nominal patch positions; default ``max(2 * jitter, patch // 2)``.
        jitter: max shift of each patch per axis; default ``max(1, round(patch / 14))``.
        color_drop: for 3-channel images, keep one random channel per patch and replace the
            other two by low-amplitude noise (the paper's "color dropping" defence against
            chromatic aberration). We chose it over the paper's alternative "projection" (green
            and magenta shifted towards gray) because it needs no dataset statistics.
        noise_scale: std of the replacement noise relative to the kept channel's std.
        neighbours: k distinct neighbours of every centre (1..8), each its own pair: k pairs
            for 1 + k patches through the trunk. 1 is the paper's one pair per image.

    Returns:
        ``centre`` (B, C, p, p), ``neighbour`` (B * k, C, p, p) as float (float32 for uint8
        input, same value scale) and ``labels`` (B * k,) in 0..7, indexing
        ``NEIGHBOUR_OFFSETS``; neighbour row ``i * k + n`` belongs to centre ``i``.
    """
    _check_images(x)
    if not 1 <= neighbours <= 8:
        raise ValueError(f"neighbours must be 1..8, got {neighbours}")
    b, c, h, w = x.shape
    k = neighbours
    p, g, j = _relative_patch_geometry(min(h, w), patch_size, gap, jitter)
    device = x.device
    footprint = 3 * p + 2 * g + 2 * j
    origin_y = _randint(h - footprint + 1, (b,), generator, device) + j
    origin_x = _randint(w - footprint + 1, (b,), generator, device) + j
    if k == 1:
        labels = _randint(8, (b, 1), generator, device)
    else:  # k distinct positions: the first k of a random permutation of the 8, per image
        gen_device = generator.device if generator is not None else torch.device("cpu")
        keys = torch.rand((b, 8), generator=generator, device=gen_device)
        labels = keys.argsort(dim=1)[:, :k].to(device)
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, device=device)[labels]  # (B, k, 2) (row, col)
    centre_rc = torch.ones_like(offsets[:, :1])
    grid_rc = torch.cat([centre_rc, offsets], dim=1)  # (B, 1 + k patches, 2)
    shift = _randint(2 * j + 1, (b, 1 + k, 2), generator, device) - j
    top = origin_y[:, None] + grid_rc[..., 0] * (p + g) + shift[..., 0]
    left = origin_x[:, None] + grid_rc[..., 1] * (p + g) + shift[..., 1]
    patches = _crop(x.permute(0, 2, 3, 1), top, left, p)  # (B, 1 + k, C, p, p)
    if not patches.is_floating_point():
        patches = patches.float()
    centre, neighbour = patches[:, 0], patches[:, 1:].flatten(0, 1)
    if color_drop and c == 3:
        centre = _drop_colours(centre, generator, noise_scale)
        neighbour = _drop_colours(neighbour, generator, noise_scale)
    return centre, neighbour, labels.reshape(-1)
