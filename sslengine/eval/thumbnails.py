"""Small PNG thumbnails of dataset images, rendered once from the decoded uint8 cache.

The dashboard shows many images at a time (cluster top images, retrieval neighbours); it
serves files from disk instead of touching the dataset per request. Layout:

    cache_dir() / "thumbs" / <dataset cache key> / <split> / <index>.png        (size 64)
    cache_dir() / "thumbs" / <dataset cache key> / <split> / <index>_<size>.png (other sizes)

The dataset cache key is the stem of the decoded-images cache file (e.g.
``digits-test-16px-72e21577...``), which changes whenever the dataset's source, split, image
size or ``max_per_class`` change, so thumbnails never outlive the images they show. The key of a
(dataset config, split) is remembered for the life of the process.

Images smaller than the thumbnail are enlarged with nearest-neighbour (a 16 px digit stays
crisp), larger ones reduced with Lanczos (antialiased). Files are written to a temporary name
and renamed, so concurrent renderers (a worker and the app) never expose a torn PNG.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from sslengine.config import DatasetConfig, ExperimentConfig
from sslengine.data.datasets import ImageArrayDataset
from sslengine.settings import cache_dir

__all__ = ["THUMB_SIZE", "render_thumbnails", "thumbnail_path"]

THUMB_SIZE = 64


def _load(dataset_cfg: DatasetConfig, split: str) -> ImageArrayDataset:
    from sslengine.train.data import load_split

    return load_split(ExperimentConfig(dataset=dataset_cfg), split)


@functools.lru_cache(maxsize=128)
def _key_and_count(dataset_json: str, split: str, cache: str) -> tuple[str, int]:
    ds = _load(DatasetConfig.model_validate_json(dataset_json), split)
    filename = getattr(ds.images, "filename", None)
    if filename:
        key = Path(filename).stem
    else:  # not memory-mapped (cannot happen for the built-in loaders): key on the config
        key = "cfg-" + hashlib.sha256(f"{dataset_json}|{split}".encode()).hexdigest()[:20]
    return key, len(ds)


def _folder(dataset_cfg: DatasetConfig, split: str) -> tuple[Path, int]:
    cache = cache_dir()
    key, n = _key_and_count(dataset_cfg.model_dump_json(), split, str(cache))
    safe_split = "".join(c if c.isalnum() or c in "-_" else "_" for c in split)[:40]
    return cache / "thumbs" / key / safe_split, n


def _file(folder: Path, index: int, size: int) -> Path:
    return folder / (f"{index}.png" if size == THUMB_SIZE else f"{index}_{size}.png")


def _check(indices: Iterable[int], n: int, split: str) -> list[int]:
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"image index {bad[0]} out of range: split '{split}' has {n} images")
    return out


def _write_png(array: np.ndarray, size: int, path: Path) -> None:
    im = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if im.size != (size, size):
        enlarge = size >= max(im.size)
        resample = Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS
        im = im.resize((size, size), resample)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render_thumbnails(
    dataset_cfg: DatasetConfig, split: str, indices: Iterable[int], size: int = THUMB_SIZE
) -> list[Path]:
    """Render (once) the thumbnails of `indices` of one split; returns their paths in order.

    Reads the decoded uint8 cache (memory-mapped; rows gathered in index order), never the
    source files. Existing thumbnails are left alone. Raises ValueError for an index outside
    the split.
    """
    if not 8 <= size <= 1024:
        raise ValueError(f"thumbnail size must be in [8, 1024], got {size}")
    folder, n = _folder(dataset_cfg, split)
    wanted = _check(indices, n, split)
    paths = [_file(folder, i, size) for i in wanted]
    missing = sorted({i for i, p in zip(wanted, paths, strict=True) if not p.is_file()})
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        images = _load(dataset_cfg, split).images
        rows = np.asarray(images[np.asarray(missing, dtype=np.int64)])
        for i, row in zip(missing, rows, strict=True):
            _write_png(row, size, _file(folder, i, size))
    return paths


def thumbnail_path(
    dataset_cfg: DatasetConfig, split: str, index: int, size: int = THUMB_SIZE
) -> Path:
    """Path of the PNG thumbnail of image `index` of `split`, rendering it if it is missing
    (evaluation jobs render the images they reference in bulk beforehand)."""
    folder, n = _folder(dataset_cfg, split)
    index = _check([index], n, split)[0]
    path = _file(folder, index, size)
    if not path.is_file():
        render_thumbnails(dataset_cfg, split, [index], size)
    return path
