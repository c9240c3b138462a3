"""Pretext-task generators: rotation, max-Hamming permutations, jigsaw, relative patch."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from sslengine.data.pretext import (
    NEIGHBOUR_OFFSETS,
    jigsaw_batch,
    max_hamming_permutations,
    relative_patch_batch,
    rotate_batch,
)

torch.set_num_threads(1)


def coordinate_images(b: int, c: int, h: int, w: int) -> torch.Tensor:
    """Pixel = image * 1e6 + channel * 1e5 + y * w + x: a crop reveals where it came from."""
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    img = torch.arange(b, dtype=torch.float64)[:, None, None, None] * 1e6
    ch = torch.arange(c, dtype=torch.float64)[None, :, None, None] * 1e5
    return img + ch + y * w + x


def corner(patch: torch.Tensor, w: int) -> tuple[int, int]:
    value = int(patch[0, 0].item()) % 100_000
    return value // w, value % w


# ----------------------------------------------------------------------------- rotation


def test_rotate_batch_hand_computed_counter_clockwise():
    x = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)
    x_rot, labels = rotate_batch(x)
    assert x_rot.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2, 3]
    assert x_rot[1, 0].tolist() == [[2, 4], [1, 3]]  # 90 deg CCW: top-right goes to top-left
    assert x_rot[2, 0].tolist() == [[4, 3], [2, 1]]
    assert x_rot[3, 0].tolist() == [[3, 1], [4, 2]]


def test_rotate_batch_label_undoes_rotation():
    x = torch.rand(3, 2, 5, 5)
    x_rot, labels = rotate_batch(x)
    assert x_rot.shape == (12, 2, 5, 5)
    for i in range(12):
        back = torch.rot90(x_rot[i], -int(labels[i]), dims=(-2, -1))
        torch.testing.assert_close(back, x[i % 3])
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.rand(1, 1, 4, 5))


# ----------------------------------------------------------------------------- permutations


def naive_greedy(n_tiles: int, n_perms: int, first: int) -> list[tuple[int, ...]]:
    everything = list(itertools.permutations(range(n_tiles)))

    def hamming(p, q):
        return sum(a != b for a, b in zip(p, q, strict=True))

    chosen = [everything[first]]
    while len(chosen) < n_perms:
        best_key, best = None, None
        for p in everything:
            if p in chosen:
                continue
            distances = [hamming(p, q) for q in chosen]
            key = (min(distances), sum(distances))
            if best_key is None or key > best_key:  # strict: first in lexicographic order wins
                best_key, best = key, p
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("n_tiles,n_perms", [(4, 10), (5, 30)])
def test_max_hamming_matches_naive_greedy(n_tiles, n_perms):
    perms = max_hamming_permutations(n_perms, n_tiles=n_tiles, seed=3)
    first = int(np.random.default_rng(3).integers(math.factorial(n_tiles)))
    assert [tuple(p) for p in perms.tolist()] == naive_greedy(n_tiles, n_perms, first)


def min_pairwise_hamming(perms: np.ndarray) -> int:
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(d, perms.shape[1] + 1)
    return int(d.min())


def test_max_hamming_nine_tiles_valid_spread_and_fast():
    start = time.perf_counter()
    perms = max_hamming_permutations(1000, seed=11)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0  # ~1 s on one core; generous for a shared CI machine
    assert perms.dtype == torch.int64 and perms.shape == (1000, 9)
    a = perms.numpy()
    assert (np.sort(a, axis=1) == np.arange(9)).all()
    assert len({tuple(r) for r in a.tolist()}) == 1000
    # Far better spread than a random set of the same size.
    rng = np.random.default_rng(0)
    random_set = np.stack([rng.permutation(9) for _ in range(1000)])
    assert min_pairwise_hamming(a) > min_pairwise_hamming(random_set)
    # Greedy: the first 100 of a run are the 100-set (same seed), and the result is cached.
    torch.testing.assert_close(max_hamming_permutations(100, seed=11), perms[:100])
    again = time.perf_counter()
    max_hamming_permutations(1000, seed=11)
    assert time.perf_counter() - again < 0.5


def test_max_hamming_rejects_too_many():
    with pytest.raises(ValueError, match="n_perms"):
        max_hamming_permutations(25, n_tiles=4)
    with pytest.raises(ValueError, match="n_perms"):
        max_hamming_permutations(0)


# ----------------------------------------------------------------------------- jigsaw


def test_jigsaw_inverse_permutation_recovers_cells_and_respects_gap():
    b, grid, cell, tile, gap = 4, 3, 10, 6, 2
    x = coordinate_images(b, 2, grid * cell + 1, grid * cell)
    perms = max_hamming_permutations(20, seed=0)
    g = torch.Generator().manual_seed(0)
    tiles, labels = jigsaw_batch(
        x, perms, generator=g, tile_size=tile, gap=gap, normalize_tiles=False
    )
    assert tiles.shape == (b, 9, 2, tile, tile) and labels.shape == (b,)
    w = x.shape[-1]
    for s in range(b):
        perm = perms[labels[s]]
        original = torch.empty_like(tiles[s])
        original[perm] = tiles[s]  # inverse permutation
        boxes = []
        for cell_index in range(9):
            t = original[cell_index]
            y0, x0 = corner(t[0], w)
            assert int(t[0, 0, 0].item()) // 1_000_000 == s  # from the right image
            torch.testing.assert_close(t[0], x[s, 0, y0 : y0 + tile, x0 : x0 + tile])
            torch.testing.assert_close(t[1], x[s, 1, y0 : y0 + tile, x0 : x0 + tile])
            r, c = divmod(cell_index, grid)
            # inside its own cell, with gap // 2 pixels kept free at the leading border
            assert r * cell + gap // 2 <= y0 <= (r + 1) * cell - tile - (gap - gap // 2)
            assert c * cell + gap // 2 <= x0 <= (c + 1) * cell - tile - (gap - gap // 2)
            boxes.append((r, c, y0, x0))
        for r, c, y0, x0 in boxes:  # neighbours never closer than the gap
            for r2, c2, y2, x2 in boxes:
                if (r2, c2) == (r, c + 1):
                    assert x2 - (x0 + tile) >= gap
                if (r2, c2) == (r + 1, c):
                    assert y2 - (y0 + tile) >= gap


def test_jigsaw_per_tile_normalisation_reproducible_and_uint8():
    x = (torch.rand(3, 3, 48, 48) * 255).to(torch.uint8)
    perms = max_hamming_permutations(10)
    a, la = jigsaw_batch(x, perms, generator=torch.Generator().manual_seed(5))
    b, lb = jigsaw_batch(x, perms, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert torch.equal(la, lb) and a.dtype == torch.float32
    assert a.shape == (3, 9, 3, 13, 13)  # cell 16, tile floor(16 * 64 / 75) = 13
    mean = a.mean(dim=(-2, -1))
    std = a.std(dim=(-2, -1), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    flat = torch.full((1, 1, 30, 30), 7.0)
    tiles, _ = jigsaw_batch(flat, perms, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tiles, torch.zeros_like(tiles))  # constant tile -> zeros, not NaN
    with pytest.raises(ValueError, match="tile_size"):
        jigsaw_batch(x, perms, tile_size=16, gap=2)


# ----------------------------------------------------------------------------- relative patch


@pytest.mark.parametrize("size,patch,gap,jitter", [(64, 12, 6, 2), (32, None, None, None)])
def test_relative_patch_positions_match_labels(size, patch, gap, jitter):
    b = 64
    x = coordinate_images(b, 1, size, size)
    g = torch.Generator().manual_seed(1)
    centre, neighbour, labels = relative_patch_batch(
        x, generator=g, patch_size=patch, gap=gap, jitter=jitter
    )
    p = centre.shape[-1]
    if patch is None:
        p_default, gap, jitter = 7, 3, 1  # 32 / 4.14 -> 7, jitter max(1, round(0.5)), gap 7 // 2
        assert p == p_default
    assert labels.min() >= 0 and labels.max() <= 7
    assert len(set(labels.tolist())) == 8  # all positions occur in 64 draws
    for s in range(b):
        cy, cx = corner(centre[s, 0], size)
        ny, nx = corner(neighbour[s, 0], size)
        torch.testing.assert_close(neighbour[s, 0], x[s, 0, ny : ny + p, nx : nx + p])
        row, col = NEIGHBOUR_OFFSETS[int(labels[s])]
        dy, dx = ny - cy, nx - cx
        for d, k in ((dy, row), (dx, col)):
            nominal = (k - 1) * (p + gap)
            assert abs(d - nominal) <= 2 * jitter
        # never overlapping: separated along the axis the neighbour lies on
        if row != 1:
            assert abs(dy) - p >= gap - 2 * jitter >= 0
        if col != 1:
            assert abs(dx) - p >= gap - 2 * jitter >= 0


@pytest.mark.parametrize("k", [3, 8])
def test_relative_patch_k_distinct_neighbours_of_one_centre(k):
    b, size, p, gap, jitter = 16, 32, 7, 3, 1  # the 32 px defaults (see above)
    x = coordinate_images(b, 1, size, size)
    g = torch.Generator().manual_seed(3)
    centre, neighbour, labels = relative_patch_batch(x, generator=g, neighbours=k)
    assert centre.shape == (b, 1, p, p) and neighbour.shape == (b * k, 1, p, p)
    assert labels.shape == (b * k,)
    for s in range(b):
        mine = labels[s * k : (s + 1) * k].tolist()
        assert len(set(mine)) == k  # distinct positions around the same centre
        cy, cx = corner(centre[s, 0], size)
        for n, label in enumerate(mine):
            ny, nx = corner(neighbour[s * k + n, 0], size)
            row, col = NEIGHBOUR_OFFSETS[label]
            for d, r in ((ny - cy, row), (nx - cx, col)):
                assert abs(d - (r - 1) * (p + gap)) <= 2 * jitter
    if k == 8:
        assert all(sorted(labels[s * 8 : (s + 1) * 8].tolist()) == list(range(8)) for s in range(b))
    with pytest.raises(ValueError, match="neighbours"):
        relative_patch_batch(x, neighbours=9)


def test_relative_patch_one_neighbour_keeps_the_draw_order():
    """neighbours=1 (the default) draws origin y, origin x, then the label, as the one-pair
    batch always did: a run's batches do not change with the option's arrival."""
    x = coordinate_images(8, 1, 32, 32)
    c, n, labels = relative_patch_batch(x, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    footprint = 3 * 7 + 2 * 3 + 2 * 1  # the 32 px defaults
    origin_y = torch.randint(0, 32 - footprint + 1, (8,), generator=g) + 1
    origin_x = torch.randint(0, 32 - footprint + 1, (8,), generator=g) + 1
    assert torch.equal(labels, torch.randint(0, 8, (8,), generator=g))
    assert n.shape == c.shape == (8, 1, 7, 7)
    for s in range(8):  # the centre sits at grid (1, 1) of that origin, within the jitter
        cy, cx = corner(c[s, 0], 32)
        assert abs(cy - (origin_y[s] + 7 + 3)) <= 1 and abs(cx - (origin_x[s] + 7 + 3)) <= 1


def test_relative_patch_colour_dropping():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 40, 40) * 255
    g = torch.Generator().manual_seed(2)
    centre, neighbour, _ = relative_patch_batch(x, generator=g, color_drop=True)
    plain_c, plain_n, _ = relative_patch_batch(
        x, generator=torch.Generator().manual_seed(2), color_drop=False
    )
    for dropped, plain in ((centre, plain_c), (neighbour, plain_n)):
        for s in range(16):
            kept = [c for c in range(3) if torch.equal(dropped[s, c], plain[s, c])]
            assert len(kept) == 1  # exactly one channel survives
            k = kept[0]
            for c in range(3):
                if c != k:  # noise around the kept channel's mean, ~1/100 of its std
                    assert dropped[s, c].mean().item() == pytest.approx(
                        plain[s, k].mean().item(), rel=0.01
                    )
                    ratio = dropped[s, c].std() / plain[s, k].std(unbiased=False)
                    assert 0.005 < ratio < 0.02
    gray = (torch.rand(2, 1, 40, 40) * 255).to(torch.uint8)
    c1, _, _ = relative_patch_batch(gray, generator=torch.Generator().manual_seed(0))
    assert c1.dtype == torch.float32 and c1.shape[1] == 1
    with pytest.raises(ValueError, match="gap"):
        relative_patch_batch(x, patch_size=12, gap=2, jitter=2)
