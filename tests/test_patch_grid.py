"""eval.knn_patch_grid: an image read as the mean of its g x g cells' features.

The reference cuts the uint8 images into cells with numpy slicing, extracts every cell as an
image of its own, and averages by hand; the product cuts the batch on the device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslengine.config import ConfigError, parse_config
from sslengine.data.datasets import ImageArrayDataset
from sslengine.eval.features import extract_features, grid_cells
from sslengine.eval.knn import knn_classify
from sslengine.eval.runner import knn_eval
from sslengine.models.backbones import build_backbone

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
TAPS = ("layer1", "layer2", "pooled")
ATOL = 1e-5


def _images(n: int, side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _cells_by_hand(images: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W, C) -> (N, grid * grid, h, w, C), the centred region cut in row-major order."""
    n, h, w, _ = images.shape
    ch, cw = h // grid, w // grid
    top, left = (h - ch * grid) // 2, (w - cw * grid) // 2
    cells = [
        images[:, top + i * ch : top + (i + 1) * ch, left + j * cw : left + (j + 1) * cw]
        for i in range(grid)
        for j in range(grid)
    ]
    return np.stack(cells, axis=1)


def _backbone():
    torch.manual_seed(0)
    return build_backbone("small_resnet", cifar_stem=True)


def test_grid_cells_are_the_centred_cells_in_row_major_order():
    x = torch.arange(2 * 3 * 8 * 7, dtype=torch.float32).reshape(2, 3, 8, 7)
    cells = grid_cells(x, 3)  # 2 x 2 cells of a centred 6 x 6 region: top 1, left 0
    assert cells.shape == (2 * 9, 3, 2, 2)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                want = x[b, :, 1 + 2 * i : 3 + 2 * i, 2 * j : 2 + 2 * j]
                assert torch.equal(cells[b * 9 + i * 3 + j], want), (b, i, j)
    assert grid_cells(x, 1) is x
    with pytest.raises(ValueError, match="does not fit"):
        grid_cells(x, 8)
    with pytest.raises(ValueError, match=">= 1"):
        grid_cells(x, 0)


@pytest.mark.parametrize("side, grid", [(24, 3), (17, 2)])
def test_features_are_the_mean_of_each_cells_features(side: int, grid: int):
    backbone = _backbone()
    images = _images(5, side, seed=side)
    # batch boundaries (2 images = 2 * grid**2 cells) differ from the reference's
    got = extract_features(backbone, images, MEAN, STD, TAPS, batch_size=2, patch_grid=grid)
    cells = _cells_by_hand(images, grid)
    flat = np.ascontiguousarray(cells.reshape(-1, *cells.shape[2:]))
    per_cell = extract_features(backbone, flat, MEAN, STD, TAPS, batch_size=64)
    for tap in TAPS:
        want = per_cell[tap].reshape(5, grid * grid, -1).mean(axis=1)
        np.testing.assert_allclose(got[tap], want, atol=ATOL, rtol=0, err_msg=tap)
    whole = extract_features(backbone, images, MEAN, STD, ("pooled",))["pooled"]
    assert np.abs(whole - got["pooled"]).max() > 1e-3  # a different readout, not the same one


def test_a_pool_callable_is_applied_to_every_cell_before_the_mean():
    backbone = _backbone()
    images = _images(3, 16, seed=3)
    first_pixel = {"layer1": lambda f: f[:, :, 0, 0]}
    got = extract_features(
        backbone, images, MEAN, STD, ("layer1",), pool=first_pixel, patch_grid=2
    )["layer1"]
    flat = np.ascontiguousarray(_cells_by_hand(images, 2).reshape(-1, 8, 8, 3))
    per_cell = extract_features(backbone, flat, MEAN, STD, ("layer1",), pool=first_pixel)
    np.testing.assert_allclose(
        got, per_cell["layer1"].reshape(3, 4, -1).mean(axis=1), atol=ATOL, rtol=0
    )


def test_patch_grid_must_fit_the_images():
    backbone = _backbone()
    with pytest.raises(ValueError, match="patch_grid"):
        extract_features(backbone, _images(2, 8, 0), MEAN, STD, patch_grid=9)
    with pytest.raises(ValueError, match="patch_grid"):
        extract_features(backbone, _images(2, 8, 0), MEAN, STD, patch_grid=0)


def test_knn_eval_reads_the_grid_the_config_names():
    rng = np.random.default_rng(7)
    classes = ["a", "b", "c"]

    def split(n: int) -> ImageArrayDataset:
        labels = rng.integers(0, 3, n).astype(np.int64)
        base = np.array([[171, 75, 75], [75, 171, 75], [75, 75, 171]])[labels]
        noise = rng.normal(0, 60, (n, 24, 24, 3))
        images = np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return ImageArrayDataset(images=images, labels=labels, classes=classes)

    train, test = split(30), split(12)
    cfg = parse_config(
        {"dataset": {"image_size": 24}, "eval": {"knn_k": [1, 5], "knn_patch_grid": 3,
                                                 "knn_tap": "layer2"}}
    )  # fmt: skip
    backbone = _backbone()
    got = knn_eval(backbone, train, test, cfg, MEAN, STD, torch.device("cpu"))

    def by_hand(images: np.ndarray) -> torch.Tensor:
        flat = np.ascontiguousarray(_cells_by_hand(images, 3).reshape(-1, 8, 8, 3))
        f = extract_features(backbone, flat, MEAN, STD, ("layer2",))["layer2"]
        return torch.from_numpy(f.reshape(len(images), 9, -1).mean(axis=1))

    want = knn_classify(
        by_hand(train.images),
        torch.from_numpy(train.labels),
        by_hand(test.images),
        torch.from_numpy(test.labels),
        ks=(1, 5),
        temperature=cfg.eval.knn_temperature,
        num_classes=3,
    )
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_a_grid_that_cuts_cells_below_four_pixels_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"eval\.knn_patch_grid 5 cuts 16 px images into 3 px"):
        parse_config({"dataset": {"image_size": 16}, "eval": {"knn_patch_grid": 5}})
    with pytest.raises(ConfigError, match=r"eval\.knn_patch_grid"):
        parse_config({"eval": {"knn_patch_grid": 9}})
    assert parse_config({"dataset": {"image_size": 16}, "eval": {"knn_patch_grid": 4}})
