"""Datasets decoded once into a uint8 array cache, memory-mapped by every process that trains.

Decoding JPEGs every epoch costs more CPU than a small backbone's forward pass (and a GPU
worker has few cores to spare), so each (dataset, split, size) is decoded once into an
``(N, H, W, 3)`` uint8 ``.npy`` under the cache folder and opened with
``np.load(mmap_mode="r")``: the page cache then shares one copy between all DDP ranks and
evaluation jobs on a host.

Cache files, for a key ``k`` (hash of the dataset name, the resolved root, a fingerprint of
the source -- file count, total size and newest mtime for a folder; size and mtime for an
archive -- the split, the image size and ``max_per_class``):

- ``<stem>.npy``        images, uint8 (N, H, W, 3)
- ``<stem>.labels.npy`` labels, int64 (N,), -1 when unlabelled
- ``<stem>.json``       classes, skipped count and names, source; written last, so its
  presence marks a complete entry.

Each file is written to a private temporary name and moved into place with ``os.replace``
(atomic on POSIX), and builders take an ``flock`` on ``<stem>.lock``, so ranks racing to build
the same entry neither corrupt it nor decode it twice.

Supported names (``KNOWN_DATASETS``):

- ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 grey digits shipped inside the wheel;
  no download), upscaled to ``image_size`` (default 32), split 80/20 stratified, seed 0.
- ``cifar10``: torchvision's ``cifar-10-batches-py`` folder, an ImageFolder tree with
  ``train/`` and ``test/``, or a ``.tar.gz`` of either (extracted once into the cache). The
  batches are pickles: they are read with an unpickler that builds only numpy arrays and plain
  data, so a crafted file in a user's folder cannot run code (``UnsafePickleError``).
- ``imagefolder``: ``root/<class>/<image>`` (or ``root/<split>/<class>/<image>``), decoded with
  PIL: EXIF orientation applied, any mode converted to RGB, shorter side resized to
  ``image_size`` (default 64) then centre-cropped (torchvision's ``Resize`` + ``CenterCrop``).
  Unreadable files (corrupt, truncated, empty, not an image) are skipped and counted.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
import tarfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from sslengine.data.paths import is_within, resolve_within_roots

__all__ = [
    "ARCHIVE_SUFFIXES",
    "CIFAR10_CLASSES",
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "ImageArrayDataset",
    "KNOWN_DATASETS",
    "UnsafePickleError",
    "dataset_info",
    "decode_image",
    "is_archive",
    "load_dataset",
]

log = logging.getLogger(__name__)

KNOWN_DATASETS: tuple[str, ...] = ("digits", "cifar10", "imagefolder")
# torchvision's ImageFolder list; anything else in a class folder (README, .DS_Store) is ignored.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
SPLIT_DIR_NAMES: frozenset[str] = frozenset({"train", "val", "valid", "validation", "test"})
CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
MAX_LISTED_SKIPS = 50
_CACHE_FORMAT = 1  # bump when the decoding changes, so old caches are not reused
_POOL_WORKERS = 2
_POOL_MIN_FILES = 256  # below this a pool's start-up costs more than it saves


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message names the dataset, path or split at fault."""


@dataclass
class ImageArrayDataset:
    """Decoded images and their labels.

    Attributes:
        images: uint8 (N, H, W, 3), usually a read-only ``np.memmap`` of the cache file.
        labels: int64 (N,), class indices into ``classes``; -1 for unlabelled images.
        classes: class names, index = label.
        skipped: number of files that could not be decoded and were left out.
        skipped_files: the first ``MAX_LISTED_SKIPS`` of them, relative to the split folder.
        source: what was read (a resolved folder/archive path, or the built-in's name); two
            splits with the same source are the same images.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageArrayDataset:
        """The images at ``indices`` (copied into memory), same classes and source."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageArrayDataset(
            images=np.ascontiguousarray(self.images[idx]),
            labels=np.asarray(self.labels[idx], dtype=np.int64),
            classes=list(self.classes),
            skipped=self.skipped,
            skipped_files=list(self.skipped_files),
            source=self.source,
        )


# ------------------------------------------------------------------------------ public API


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None,
    split: str,
    image_size: int | None,
    cache_dir: str | os.PathLike[str],
    max_per_class: int | None = None,
    allowed_roots: Sequence[Path] | None = None,
) -> ImageArrayDataset:
    """Load (decoding once, then from the cache) one split of a dataset.

    Args:
        name: one of ``KNOWN_DATASETS``.
        root: folder or archive (``cifar10``, ``imagefolder``); ignored for ``digits``. With
            ``allowed_roots`` it must resolve inside one of them (a relative path is looked up
            in each); without, it is taken relative to the working directory.
        split: ``train`` / ``test`` for the built-ins and CIFAR-10; for an ImageFolder the
            subfolder of that name when ``root`` has split folders, else the whole ``root``.
        image_size: side of the cached square images (default 32 digits/CIFAR, 64 folders).
        cache_dir: where the ``.npy`` caches (and extracted archives) live.
        max_per_class: keep the first ``max_per_class`` files of each class (sorted order).
        allowed_roots: confine ``root`` to these folders (see ``paths.resolve_within_roots``).

    Raises:
        DatasetError: unknown name or split, missing path, no class folders, no decodable
            images. ``paths.PathNotAllowedError`` when ``root`` escapes ``allowed_roots``.
    """
    if name not in KNOWN_DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; known datasets: {', '.join(KNOWN_DATASETS)}")
    if image_size is not None and image_size < 1:
        raise DatasetError(f"image_size must be a positive number of pixels, got {image_size}")
    if max_per_class is not None and max_per_class < 1:
        raise DatasetError(f"max_per_class must be at least 1, got {max_per_class}")
    if not split or split in (".", "..") or "/" in split or os.sep in split:
        raise DatasetError(f"split must be a plain folder name like 'train', got '{split}'")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        return _load_digits(split, image_size or 32, cache, max_per_class)
    path = _resolve_root(name, root, allowed_roots)
    if name == "cifar10":
        return _load_cifar10(path, split, image_size or 32, cache, max_per_class, allowed_roots)
    return _load_imagefolder(
        "imagefolder", path, split, image_size or 64, cache, max_per_class, allowed_roots
    )


def dataset_info(
    name: str,
    root: str | os.PathLike[str] | None,
    allowed_roots: Sequence[Path] | None = None,
) -> dict:
    """What a dataset holds, without decoding anything (for the launch form).

    Returns ``{"images": total, "classes": [names], "splits": [split names],
    "per_split": {split: count}, "source": str}``. ``splits`` is empty for an ImageFolder with
    no split folders (every split name then means the whole folder). For an archive this lists
    its members (about a second for CIFAR-10), nothing is extracted.
    """
    if name not in KNOWN_DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; known datasets: {', '.join(KNOWN_DATASETS)}")
    if name == "digits":
        labels, _ = _digits_arrays()
        per_split = {s: int(len(_digits_split_indices(labels, s))) for s in ("train", "test")}
        return _info(per_split, [str(c) for c in range(10)], "sklearn.datasets.load_digits")
    path = _resolve_root(name, root, allowed_roots)
    if name == "cifar10":
        kind, where = _cifar10_layout(path)
        if kind == "torchvision":
            batches = where / "cifar-10-batches-py"
            n_train = 10_000 * sum((batches / f"data_batch_{i}").is_file() for i in range(1, 6))
            n_test = 10_000 * (batches / "test_batch").is_file()
            return _info({"train": n_train, "test": n_test}, list(CIFAR10_CLASSES), str(where))
        if kind == "archive":
            st = where.stat()
            return copy.deepcopy(_archive_info(str(where), st.st_size, st.st_mtime_ns))
        path = where
    return _folder_info(path, allowed_roots)


# ------------------------------------------------------------------------------ decoding


def decode_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode one file to uint8 (size, size, 3): EXIF-transposed, RGB, resized, centre-cropped.

    Modes: 16-bit greyscale is scaled by 1/257 (not clipped at 255), transparency is composited
    on white (what a viewer shows), CMYK/palette/greyscale go through PIL's ``convert``. Large
    JPEGs are decoded at a reduced DCT scale (``draft``) that still leaves both sides >= size.
    Raises whatever PIL raises on a bad file; the loaders catch it and count a skip.
    """
    with warnings.catch_warnings():
        # PIL warns (not raises) on odd-but-readable files: EXIF junk, palette transparency.
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im.load()
            rgb = _to_rgb(ImageOps.exif_transpose(im))
    return _resize_center_crop(rgb, size)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        # "I" is PIL's 32-bit int mode; files that land there hold 16-bit samples unless
        # their values say otherwise.
        if mode != "I" or a.max(initial=0) > 255:
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    elif mode == "F":
        a = np.asarray(im).astype(np.float64)
        if a.max(initial=0) <= 1.0:  # float images are usually in [0, 1]
            a = a * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _resize_center_crop(im: Image.Image, size: int) -> np.ndarray:
    """torchvision ``Resize(size)`` (shorter side, bilinear, antialiased) + ``CenterCrop``."""
    w, h = im.size
    if (w, h) != (size, size):
        short, long = (w, h) if w <= h else (h, w)
        new_long = max(size, int(size * long / short))
        nw, nh = (size, new_long) if w <= h else (new_long, size)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    out = np.asarray(im, dtype=np.uint8)
    if out.shape != (size, size, 3):  # pragma: no cover - PIL guarantees this after crop
        raise ValueError(f"decoded shape {out.shape} != ({size}, {size}, 3)")
    return out


def _decode_or_reason(job: tuple[str, int]) -> np.ndarray | str:
    """Pool worker: the image, or why it could not be decoded (never raises)."""
    path, size = job
    try:
        return decode_image(path, size)
    except Exception as exc:  # any decoder failure is a skipped file
        return f"{type(exc).__name__}: {exc}"


def _decode_results(paths: list[str], size: int) -> Iterator[np.ndarray | str]:
    """Decoded images in order, from a pool of 2 threads when there are enough files.

    Threads, not processes: Pillow releases the GIL while it decodes and resizes, so two
    threads use two cores, and nothing is forked. Forking was tried and is unsafe here: a
    child inherits the parent's open connections, and kombu's after-fork hook blocked forever
    reading a Redis socket in a process that had submitted a Celery task (seen in the test
    suite); forked children also inherit CUDA contexts and OpenMP pools they cannot use.
    """
    jobs = [(p, size) for p in paths]
    if len(jobs) < _POOL_MIN_FILES:
        for job in jobs:
            yield _decode_or_reason(job)
        return
    with ThreadPoolExecutor(_POOL_WORKERS, thread_name_prefix="decode") as pool:
        yield from pool.map(_decode_or_reason, jobs)


# ------------------------------------------------------------------------------ cache


@dataclass
class _Built:
    labels: np.ndarray
    classes: list[str]
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)


def _cache_stem(name: str, split: str, size: int, key_parts: dict) -> str:
    blob = json.dumps({"format": _CACHE_FORMAT, **key_parts}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
    safe_split = "".join(c if c.isalnum() or c in "-_" else "_" for c in split)[:40]
    return f"{name}-{safe_split}-{size}px-{digest}"


def _read_cache(cache: Path, stem: str, source: str) -> ImageArrayDataset | None:
    meta_path = cache / f"{stem}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(cache / f"{stem}.npy", mmap_mode="r")
        labels = np.load(cache / f"{stem}.labels.npy")
        if list(images.shape) != meta["shape"] or labels.shape != (images.shape[0],):
            return None
        return ImageArrayDataset(
            images=images,
            labels=labels.astype(np.int64, copy=False),
            classes=list(meta["classes"]),
            skipped=int(meta["skipped"]),
            skipped_files=list(meta["skipped_files"]),
            source=source,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a half-written or foreign entry: rebuild it


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (flock; released by the kernel if the holder dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic replace alone keeps it correct
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tmp_name(final: Path) -> Path:
    # Leading dot + pid + random: private to this writer, invisible to cache readers.
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _atomic_save_npy(final: Path, array: np.ndarray) -> None:
    tmp = _tmp_name(final)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _cached(
    cache: Path,
    stem: str,
    source: str,
    build: Callable[[Path], _Built],
) -> ImageArrayDataset:
    """Return the cache entry ``stem``, building it under a lock if absent.

    ``build(tmp_images_path)`` writes the images ``.npy`` to the path it is given and returns
    the rest; the entry is then published file by file with ``os.replace``, metadata last.
    """
    hit = _read_cache(cache, stem, source)
    if hit is not None:
        return hit
    with _file_lock(cache / f"{stem}.lock"):
        hit = _read_cache(cache, stem, source)  # another process built it while we waited
        if hit is not None:
            return hit
        images_path = cache / f"{stem}.npy"
        tmp = _tmp_name(images_path)
        try:
            built = build(tmp)
            os.replace(tmp, images_path)
        finally:
            tmp.unlink(missing_ok=True)
        _atomic_save_npy(cache / f"{stem}.labels.npy", built.labels.astype(np.int64))
        shape = list(np.load(images_path, mmap_mode="r").shape)
        meta = {
            "format": _CACHE_FORMAT,
            "shape": shape,
            "classes": built.classes,
            "skipped": built.skipped,
            "skipped_files": built.skipped_files[:MAX_LISTED_SKIPS],
            "source": source,
        }
        meta_path = cache / f"{stem}.json"
        meta_tmp = _tmp_name(meta_path)
        try:
            meta_tmp.write_text(json.dumps(meta, indent=1))
            os.replace(meta_tmp, meta_path)
        finally:
            meta_tmp.unlink(missing_ok=True)
    hit = _read_cache(cache, stem, source)
    if hit is None:  # pragma: no cover - only if the disk is failing under us
        raise DatasetError(f"could not read back the cache entry just written: {cache / stem}")
    return hit


def _save_array_builder(images: np.ndarray, built: _Built) -> Callable[[Path], _Built]:
    def build(tmp: Path) -> _Built:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(images, dtype=np.uint8))
            handle.flush()
            os.fsync(handle.fileno())
        return built

    return build


# ------------------------------------------------------------------------------ helpers


def _resolve_root(
    name: str, root: str | os.PathLike[str] | None, allowed_roots: Sequence[Path] | None
) -> Path:
    if root is None or str(root).strip() == "":
        raise DatasetError(f"dataset '{name}' needs a root (a folder or archive path)")
    if allowed_roots is not None:
        try:
            return resolve_within_roots(root, allowed_roots)
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset '{name}': {exc}") from None
    try:
        return Path(root).expanduser().resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"dataset '{name}': path '{root}' does not exist") from None


def _first_per_class(labels: np.ndarray, k: int | None) -> np.ndarray:
    """Indices keeping the first ``k`` items of each label, in their original order."""
    if k is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    seen: dict[int, int] = {}
    for i, lab in enumerate(labels.tolist()):
        if seen.get(lab, 0) < k:
            seen[lab] = seen.get(lab, 0) + 1
            keep[i] = True
    return np.flatnonzero(keep)


def _info(per_split: dict[str, int], classes: list[str], source: str) -> dict:
    return {
        "images": int(sum(per_split.values())),
        "classes": classes,
        "splits": list(per_split),
        "per_split": dict(per_split),
        "source": source,
    }


def is_archive(path: Path) -> bool:
    """A file the CIFAR-10 loader reads as a tar archive (by its suffix)."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


# ------------------------------------------------------------------------------ digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(labels (1797,), images uint8 (1797, 8, 8)); 0..16 intensities mapped to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return d.target.astype(np.int64), images


def _digits_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise DatasetError(f"dataset 'digits' has splits train and test, not '{split}'")
    train, test = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    return np.sort(train if split == "train" else test)


def _load_digits(
    split: str, size: int, cache: Path, max_per_class: int | None
) -> ImageArrayDataset:
    import sklearn

    labels_all, images_all = _digits_arrays()
    idx = _digits_split_indices(labels_all, split)
    stem = _cache_stem(
        "digits",
        split,
        size,
        {
            "name": "digits",
            "sklearn": sklearn.__version__,
            "split": split,
            "size": size,
            "max_per_class": max_per_class,
        },
    )

    def build(tmp: Path) -> _Built:
        keep = idx[_first_per_class(labels_all[idx], max_per_class)]
        grey = images_all[keep]
        # Upscale the 8x8 digits once here, not per step: the views then see 32x32 images.
        out = np.stack([_resize_center_crop(Image.fromarray(g).convert("RGB"), size) for g in grey])
        built = _Built(labels=labels_all[keep], classes=[str(c) for c in range(10)])
        return _save_array_builder(out, built)(tmp)

    return _cached(cache, stem, f"sklearn.datasets.load_digits#{split}", build)


# ------------------------------------------------------------------------------ CIFAR-10


def _cifar10_layout(path: Path) -> tuple[str, Path]:
    """("torchvision", root) | ("imagefolder", root) | ("archive", file)."""
    if path.is_file():
        if is_archive(path):
            return "archive", path
        raise DatasetError(f"dataset 'cifar10': '{path}' is a file but not a .tar/.tar.gz archive")
    if path.name == "cifar-10-batches-py":
        return "torchvision", path.parent
    if (path / "cifar-10-batches-py").is_dir():
        return "torchvision", path
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "imagefolder", path
    archives = sorted(p for p in path.iterdir() if is_archive(p))
    if len(archives) > 1:  # several: prefer the one that says what it is
        named = [p for p in archives if "cifar" in p.name.lower()]
        archives = named if len(named) == 1 else archives
    if len(archives) == 1:
        return "archive", archives[0]
    found = ", ".join(p.name for p in archives) or "none"
    raise DatasetError(
        f"dataset 'cifar10': no CIFAR-10 data in '{path}'; expected a cifar-10-batches-py/ "
        f"folder, train/ and test/ ImageFolder folders, or one .tar.gz of them (archives: {found})"
    )


def _extract_archive(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` once under ``cache/extracted``; return the folder it holds.

    Extraction goes to a temporary folder renamed into place, under a lock, so a reader never
    sees a half-extracted tree. ``filter="data"`` refuses absolute paths, ``..`` and links that
    point outside the destination (a hostile archive cannot write elsewhere).
    """
    st = archive.stat()
    digest = hashlib.sha256(f"{archive}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    base = archive.name.split(".")[0]
    dest = cache / "extracted" / f"{base}-{digest}"
    if dest.is_dir():
        return _single_top_folder(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.parent / f"{dest.name}.lock"):
        if not dest.is_dir():
            tmp = _tmp_name(dest)
            try:
                with tarfile.open(archive, "r:*") as tf:
                    tf.extractall(tmp, filter="data")
                os.replace(tmp, dest)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DatasetError(f"cannot extract archive '{archive}': {exc}") from exc
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return _single_top_folder(dest)


def _single_top_folder(folder: Path) -> Path:
    """Archives often wrap everything in one top folder (cifar10/train/...): step into it."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in SPLIT_DIR_NAMES:
        return entries[0]
    return folder


def _load_cifar10(
    path: Path,
    split: str,
    size: int,
    cache: Path,
    max_per_class: int | None,
    allowed_roots: Sequence[Path] | None,
) -> ImageArrayDataset:
    if split not in ("train", "test"):
        raise DatasetError(f"dataset 'cifar10' has splits train and test, not '{split}'")
    kind, where = _cifar10_layout(path)
    if kind == "torchvision":
        return _load_cifar10_torchvision(where, split, size, cache, max_per_class, allowed_roots)
    if kind == "imagefolder":
        return _load_imagefolder(
            "cifar10", where, split, size, cache, max_per_class, allowed_roots, need_split=True
        )
    st = where.stat()
    stem = _cache_stem(
        "cifar10",
        split,
        size,
        {
            "name": "cifar10",
            "archive": str(where),
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "split": split,
            "size": size,
            "max_per_class": max_per_class,
        },
    )
    source = f"{where}#{split}"
    hit = _read_cache(cache, stem, source)
    if hit is not None:  # decoded before: no need to extract again
        return hit
    layout, inner = _cifar10_layout(_extract_archive(where, cache))
    if layout == "torchvision":
        build = _cifar10_torchvision_builder(inner, split, size, max_per_class)
    elif layout == "imagefolder":
        # Extracted files are ours (under cache_dir), so no root confinement applies.
        folder = _split_folder("cifar10", inner, split, need_split=True)
        _, build = _imagefolder_builder("cifar10", folder, size, max_per_class, None)
    else:
        raise DatasetError(f"archive '{where}' holds another archive, not CIFAR-10 images")
    return _cached(cache, stem, source, build)


def _load_cifar10_torchvision(
    root: Path,
    split: str,
    size: int,
    cache: Path,
    max_per_class: int | None,
    allowed_roots: Sequence[Path] | None = None,
) -> ImageArrayDataset:
    batches = root / "cifar-10-batches-py"
    files = sorted([*batches.glob("*_batch*"), *batches.glob(_CIFAR10_META)])
    if allowed_roots is not None:  # a batch file symlinked out of the roots is never read
        for f in files:
            resolve_within_roots(f, allowed_roots)
    stem = _cache_stem(
        "cifar10",
        split,
        size,
        {
            "name": "cifar10",
            "root": str(root),
            "split": split,
            "size": size,
            "max_per_class": max_per_class,
            "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        },
    )
    build = _cifar10_torchvision_builder(root, split, size, max_per_class)
    return _cached(cache, stem, f"{batches}#{split}", build)


_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_BATCHES = ("test_batch",)
_CIFAR10_META = "batches.meta"


class UnsafePickleError(DatasetError):
    """A CIFAR-10 batch file asked to load something other than arrays and plain data."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What ``_codecs.encode`` is used for in protocol-2 pickles of ``bytes`` (written by
    Python 3): nothing else is accepted, so the name cannot become a general codec call."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    """The globals a pickled uint8 ndarray refers to, under numpy 1.x and 2.x module names.

    Taken from numpy's own ``__reduce_ex__`` (not imported by name), so the allowed objects
    are exactly numpy's array reconstructors, ``ndarray`` and ``dtype``: all they can build is
    an array, a pure function of the bytes in the file.
    """
    probe = np.zeros(2, dtype=np.uint8)
    reconstruct = probe.__reduce_ex__(2)[0]  # numpy(._core|.core).multiarray._reconstruct
    frombuffer = probe.__reduce_ex__(5)[0]  # numpy(._core|.core).numeric._frombuffer (>= 5)
    allowed: dict[tuple[str, str], object] = {}
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{pkg}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, strings, numbers and numpy arrays, and
    nothing else: any other global (``os.system``, ``builtins.eval``, a class whose
    ``__reduce__`` runs code) raises ``UnsafePickleError`` before it is called."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR batches are Python 2 pickles
        self._path = path
        self._allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"dataset 'cifar10': refusing to load '{self._path}': the pickle asks for "
                f"'{module}.{name}', which a CIFAR-10 batch never contains (only numpy "
                f"arrays, dicts, lists and strings are allowed); the file is not a genuine "
                f"CIFAR-10 python batch and may be malicious"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError(
            f"dataset 'cifar10': refusing to load '{self._path}': it uses persistent ids"
        )


def _read_cifar_pickle(path: Path) -> dict:
    """One ``cifar-10-batches-py`` file, unpickled without running code from it."""
    try:
        with open(path, "rb") as handle:
            obj = _CifarUnpickler(handle, path).load()
    except UnsafePickleError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"dataset 'cifar10': missing file '{path}'") from None
    except Exception as exc:  # truncated, not a pickle, bad array state...
        raise DatasetError(
            f"dataset 'cifar10': '{path}' is not a readable CIFAR-10 python batch "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(
            f"dataset 'cifar10': '{path}' holds a {type(obj).__name__}, not a CIFAR-10 dict"
        )
    return obj


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3) HWC, labels int64 (N,)) of one batch file."""
    entry = _read_cifar_pickle(path)
    data, labels = entry.get(b"data"), entry.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(
            f"dataset 'cifar10': '{path}': b'data' must be a uint8 (N, 3072) array, got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"dataset 'cifar10': '{path}': b'data' rows must hold 3072 values "
            f"(3 x 32 x 32), got {data.shape[1]}"
        )
    try:
        labels_arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels_arr = np.empty(0)
    if labels_arr.shape != (data.shape[0],):
        raise DatasetError(
            f"dataset 'cifar10': '{path}': b'labels' must be a list of {data.shape[0]} "
            f"integers (one per row of b'data')"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW rows -> HWC
    return np.ascontiguousarray(images), labels_arr


def _read_cifar_classes(batches: Path) -> list[str]:
    meta_path = batches / _CIFAR10_META
    if not meta_path.is_file():
        return list(CIFAR10_CLASSES)
    names = _read_cifar_pickle(meta_path).get(b"label_names")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"dataset 'cifar10': '{meta_path}': b'label_names' is not a list")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def _cifar10_torchvision_builder(
    root: Path, split: str, size: int, max_per_class: int | None
) -> Callable[[Path], _Built]:
    """Reads torchvision's ``cifar-10-batches-py`` (the same arrays ``torchvision.datasets.
    CIFAR10`` returns) with a restricted unpickler: the batches are pickles, and a pickle from
    a user-supplied folder must not be able to run code. No md5 check (torchvision's is only
    against the exact published files): the arrays' dtype, shape and labels are checked."""

    def build(tmp: Path) -> _Built:
        batches = root / "cifar-10-batches-py"
        names = _CIFAR10_TRAIN_BATCHES if split == "train" else _CIFAR10_TEST_BATCHES
        missing = [n for n in names if not (batches / n).is_file()]
        if missing:
            raise DatasetError(
                f"dataset 'cifar10': '{batches}' lacks {', '.join(missing)} "
                f"(the {split} split needs {', '.join(names)})"
            )
        classes = _read_cifar_classes(batches)
        parts = [_read_cifar_batch(batches / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        bad = labels[(labels < 0) | (labels >= len(classes))]
        if bad.size:
            raise DatasetError(
                f"dataset 'cifar10' at '{batches}': label {int(bad[0])} is outside "
                f"0..{len(classes) - 1} ({len(classes)} classes in {_CIFAR10_META})"
            )
        keep = _first_per_class(labels, max_per_class)
        images = images[keep]
        if size != images.shape[1]:
            images = np.stack([_resize_center_crop(Image.fromarray(x), size) for x in images])
        return _save_array_builder(images, _Built(labels[keep], classes))(tmp)

    return build


# ------------------------------------------------------------------------------ ImageFolder


def _split_folder(name: str, root: Path, split: str, need_split: bool) -> Path:
    candidate = root / split
    if candidate.is_dir():
        return candidate
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in SPLIT_DIR_NAMES)
    if need_split or present:
        raise DatasetError(
            f"dataset '{name}': no split folder '{split}' in '{root}' "
            f"(split folders found: {', '.join(present) or 'none'})"
        )
    return root  # a plain <class>/<image> tree: every split name means all of it


def _scan_imagefolder(
    name: str, folder: Path, allowed_roots: Sequence[Path] | None
) -> tuple[list[str], list[tuple[str, int]], dict, list[str]]:
    """Classes, (relative file, label) pairs in sorted order, a fingerprint, escaped links.

    Only stats are read (no decoding). With ``allowed_roots``, a symlinked class folder or file
    whose target lies outside every root is left out (and reported), as the root itself is.
    """
    roots = [Path(r).resolve() for r in allowed_roots] if allowed_roots is not None else None

    def escapes(p: str) -> bool:
        if roots is None:
            return False
        real = Path(p).resolve()
        return not any(is_within(real, r) for r in roots)

    try:
        class_entries = sorted(
            (e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")),
            key=lambda e: e.name,
        )
    except NotADirectoryError:
        raise DatasetError(f"dataset '{name}': '{folder}' is not a folder") from None
    if not class_entries:
        raise DatasetError(
            f"dataset '{name}': no class subfolders in '{folder}'; expected "
            f"<root>/<class>/<image> (one folder per class)"
        )
    classes: list[str] = []
    files: list[tuple[str, int]] = []
    escaped: list[str] = []
    count, total_bytes, newest = 0, 0, 0
    for entry in class_entries:
        if entry.is_symlink() and escapes(entry.path):
            escaped.append(entry.name + "/")
            continue
        label = len(classes)
        classes.append(entry.name)
        stack = [Path(entry.path)]
        while stack:  # depth-first, sorted, symlinked sub-folders not followed (no loops)
            current = stack.pop()
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
            subdirs = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(Path(e.path))
                    continue
                if not e.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                rel = os.path.relpath(e.path, folder)
                if e.is_symlink() and escapes(e.path):
                    escaped.append(rel)
                    continue
                try:
                    st = e.stat()
                except OSError:  # dangling link: a file that cannot be read
                    st = None
                count += 1
                if st is not None:
                    total_bytes += st.st_size
                    newest = max(newest, st.st_mtime_ns)
                files.append((rel, label))
            stack.extend(reversed(subdirs))
    fingerprint = {
        "files": count,
        "bytes": total_bytes,
        "newest_mtime_ns": newest,
        "escaped": escaped,
    }
    return classes, files, fingerprint, escaped


def _load_imagefolder(
    name: str,
    root: Path,
    split: str,
    size: int,
    cache: Path,
    max_per_class: int | None,
    allowed_roots: Sequence[Path] | None,
    need_split: bool = False,
) -> ImageArrayDataset:
    if root.is_file():
        raise DatasetError(f"dataset '{name}': '{root}' is a file; expected a folder")
    folder = _split_folder(name, root, split, need_split)
    if allowed_roots is not None:
        folder = resolve_within_roots(folder, allowed_roots)
    fingerprint, build = _imagefolder_builder(name, folder, size, max_per_class, allowed_roots)
    stem = _cache_stem(
        name,
        split,
        size,
        {
            "name": name,
            "folder": str(folder),
            "split": split,
            "size": size,
            "max_per_class": max_per_class,
            **fingerprint,
        },
    )
    return _cached(cache, stem, str(folder), build)


def _imagefolder_builder(
    name: str,
    folder: Path,
    size: int,
    max_per_class: int | None,
    allowed_roots: Sequence[Path] | None,
) -> tuple[dict, Callable[[Path], _Built]]:
    """Scan ``folder`` now (cheap: stats only); decode later, only if the cache misses."""
    classes, files, fingerprint, escaped = _scan_imagefolder(name, folder, allowed_roots)
    labels_all = np.asarray([lab for _, lab in files], dtype=np.int64)
    keep = _first_per_class(labels_all, max_per_class)

    def build(tmp: Path) -> _Built:
        if len(keep) == 0:
            raise DatasetError(
                f"dataset '{name}': no image files in '{folder}' "
                f"(extensions: {' '.join(IMAGE_EXTENSIONS)})"
            )
        chosen = [files[i] for i in keep.tolist()]
        paths = [str(folder / rel) for rel, _ in chosen]
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
        )
        good = np.zeros(len(paths), dtype=bool)
        skipped_files = list(escaped)
        for k, result in enumerate(_decode_results(paths, size)):
            if isinstance(result, str):
                if len(skipped_files) < MAX_LISTED_SKIPS:
                    skipped_files.append(chosen[k][0])
                log.warning("skipping %s: %s", paths[k], result)
            else:
                out[k] = result
                good[k] = True
        n_good = int(good.sum())
        skipped = len(escaped) + len(paths) - n_good
        if n_good == 0:
            del out
            raise DatasetError(
                f"dataset '{name}': no decodable images in '{folder}' ({skipped} files "
                f"skipped, e.g. {', '.join(skipped_files[:5])})"
            )
        labels = labels_all[keep][good]
        if n_good < len(paths):
            # Compact in chunks into a second file so peak memory stays a chunk, not the set.
            compact = _tmp_name(tmp)
            dst = np.lib.format.open_memmap(
                compact, mode="w+", dtype=np.uint8, shape=(n_good, size, size, 3)
            )
            rows = np.flatnonzero(good)
            for s in range(0, n_good, 4096):
                dst[s : s + 4096] = out[rows[s : s + 4096]]
            dst.flush()
            del dst, out
            os.replace(compact, tmp)
        else:
            out.flush()
            del out
        return _Built(labels, classes, skipped, skipped_files)

    return fingerprint, build


def _folder_info(root: Path, allowed_roots: Sequence[Path] | None) -> dict:
    if root.is_file():
        raise DatasetError(f"'{root}' is a file; expected a folder")
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in SPLIT_DIR_NAMES)
    if not splits:
        classes, files, _, _ = _scan_imagefolder("imagefolder", root, allowed_roots)
        info = _info({}, classes, str(root))
        info["images"] = len(files)
        return info
    per_split: dict[str, int] = {}
    classes: list[str] = []
    for s in splits:
        cls, files, _, _ = _scan_imagefolder("imagefolder", root / s, allowed_roots)
        per_split[s] = len(files)
        classes = classes or cls
    return _info(per_split, classes, str(root))


@functools.lru_cache(maxsize=16)
def _archive_info(archive: str, size: int, mtime_ns: int) -> dict:
    """Counts from an archive's member names (size/mtime in the cache key: a new file re-lists)."""
    counts: dict[str, int] = {}
    classes: set[str] = set()
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                if not member.isfile() or not member.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                at = next((i for i, p in enumerate(parts) if p in SPLIT_DIR_NAMES), None)
                if at is None or len(parts) < at + 3:
                    continue
                counts[parts[at]] = counts.get(parts[at], 0) + 1
                classes.add(parts[at + 1])
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"cannot read archive '{archive}': {exc}") from exc
    ordered = {s: counts[s] for s in sorted(counts)}
    return _info(ordered, sorted(classes), archive)
