"""Datasets, the decoded-array cache and path confinement (sslengine.data.datasets / .paths)."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from sslengine.data.datasets import (
    CIFAR10_CLASSES,
    DatasetError,
    ImageArrayDataset,
    UnsafePickleError,
    dataset_info,
    decode_image,
    load_dataset,
)
from sslengine.data.paths import PathNotAllowedError, dataset_roots, resolve_within_roots

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10/cifar10-jpg.tar.gz"
# The test session's dataset cache (services_fixtures.ssl_home): extracting the 60,000-file
# archive takes 20-60 s on these machines, so the CIFAR tests share one extraction.
SESSION_CACHE = Path(__file__).resolve().parents[1] / "var" / "test-cache"


def jpeg_bytes(array: np.ndarray, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, **save_kwargs)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_plain_folder(root: Path, per_class: int = 3, size: int = 20) -> None:
    """root/<class>/<k>.png with distinct, known colours."""
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            colour = (40 * c + 10 * k, 100, 200 - 30 * k)
            Image.new("RGB", (size, size), colour).save(root / name / f"{k:02d}.png")


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_file())


# ---------------------------------------------------------------------------- digits


def test_digits_loads_offline_with_labels_and_classes(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_dataset('digits') tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    train = load_dataset("digits", None, "train", None, tmp_path)
    test = load_dataset("digits", None, "test", None, tmp_path)
    assert train.images.shape == (1437, 32, 32, 3) and test.images.shape == (360, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.classes == [str(d) for d in range(10)] and train.skipped == 0
    assert train.source != test.source  # two different splits, not one folder twice
    # Stratified 80/20: every class's test share is 20% of its count, +-1.
    target = load_digits().target
    for c in range(10):
        assert abs((test.labels == c).sum() - 0.2 * (target == c).sum()) <= 1
    # A greyscale digit upscaled: the three channels are equal.
    assert np.array_equal(train.images[..., 0], train.images[..., 2])


def test_digits_at_8px_are_sklearns_images(tmp_path):
    """At their native 8x8 the two splits together hold exactly sklearn's 1,797 images."""
    digits = load_digits()
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    parts = [load_dataset("digits", None, s, 8, tmp_path) for s in ("train", "test")]
    ours = np.concatenate([p.images[..., 0] for p in parts])
    labels = np.concatenate([p.labels for p in parts])

    def rows(images, lab):
        return sorted(bytes([int(y)]) + img.tobytes() for img, y in zip(images, lab, strict=True))

    assert rows(ours, labels) == rows(expected, digits.target)


def test_digits_max_per_class_and_bad_split(tmp_path):
    small = load_dataset("digits", None, "train", 16, tmp_path, max_per_class=5)
    assert small.images.shape == (50, 16, 16, 3)
    assert np.bincount(small.labels).tolist() == [5] * 10
    with pytest.raises(DatasetError, match="splits train and test"):
        load_dataset("digits", None, "validation", 16, tmp_path)


def test_test_max_per_class_caps_only_the_held_out_split(tmp_path, monkeypatch):
    from sslengine.config import parse_config
    from sslengine.train.data import load_split, load_splits

    monkeypatch.setenv("SSL_CACHE", str(tmp_path))
    both = parse_config({"dataset": {"image_size": 16, "max_per_class": 5}})
    train, test = load_splits(both)
    assert (len(train), len(test)) == (50, 50)  # empty: the held-out split takes max_per_class
    more = parse_config(
        {"dataset": {"image_size": 16, "max_per_class": 5, "test_max_per_class": 20}}
    )
    train, test = load_splits(more)
    assert len(train) == 50 and np.bincount(test.labels).tolist() == [20] * 10
    assert len(load_split(more, "test")) == 200
    # only the test split: a dataset read with the train split twice keeps max_per_class
    same = more.model_copy(deep=True)
    same.dataset.test_split = "train"
    assert same.dataset.max_per_class_of("train") == 5
    assert more.dataset.max_per_class_of("test") == 20


# ---------------------------------------------------------------------------- cache


def test_cache_hit_reuses_the_npy_without_decoding(tmp_path):
    cache = tmp_path / "cache"
    first = load_dataset("digits", None, "train", 32, cache)
    (npy,) = [p for p in cache_files(cache) if p.suffixes == [".npy"]]
    before = npy.stat()
    second = load_dataset("digits", None, "train", 32, cache)
    after = npy.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert isinstance(second.images, np.memmap) and Path(second.images.filename) == npy
    assert np.array_equal(first.images, second.images)
    assert not [p for p in cache_files(cache) if p.name.endswith(".tmp")]


def test_imagefolder_cache_is_not_redecoded_and_invalidates_on_new_files(tmp_path):
    root, cache = tmp_path / "folder", tmp_path / "cache"
    write_plain_folder(root)
    first = np.array(load_dataset("imagefolder", root, "train", 16, cache).images)
    # Same size, same mtime, different bytes: the fingerprint cannot tell, so a re-decode
    # would show up as a skipped (undecodable) file; a cache hit returns the old pixels.
    victim = root / "cat" / "00.png"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_dataset("imagefolder", root, "train", 16, cache)
    assert again.skipped == 0 and np.array_equal(np.asarray(again.images), first)
    # A newer mtime changes the fingerprint: rebuilt, and now the zeroed file is skipped.
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt = load_dataset("imagefolder", root, "train", 16, cache)
    assert len(rebuilt) == len(first) - 1 and rebuilt.skipped == 1
    assert rebuilt.skipped_files == [os.path.join("cat", "00.png")]
    # So does a new file.
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "dog" / "99.png")
    assert len(load_dataset("imagefolder", root, "train", 16, cache)) == len(first)


def _load_in_child(root: str, cache: str, queue) -> None:
    ds = load_dataset("imagefolder", root, "train", 16, cache)
    queue.put((np.asarray(ds.images).tobytes(), ds.labels.tolist()))


def test_two_processes_racing_build_one_valid_cache(tmp_path):
    root, cache = tmp_path / "folder", tmp_path / "cache"
    write_plain_folder(root, per_class=6)
    ctx = multiprocessing.get_context("spawn")  # two independent processes (fork is unsafe after
    # Celery/kombu connections exist in this process: their after-fork hook blocks)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_load_in_child, args=(str(root), str(cache), queue)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    final = load_dataset("imagefolder", root, "train", 16, cache)
    assert np.asarray(final.images).tobytes() == results[0][0]
    names = [p.name for p in cache_files(cache)]
    assert sum(n.endswith(".json") for n in names) == 1
    assert not [n for n in names if n.endswith(".tmp")]


# ---------------------------------------------------------------------------- ImageFolder


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Two classes: every odd-but-valid image mode, and every kind of bad file."""
    root = tmp_path / "messy"
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    Image.new("L", (20, 20), 100).save(a / "01_gray.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(a / "02_cmyk.jpg", quality=95)
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 6))
    pal.save(a / "03_palette.png")
    Image.fromarray(np.full((20, 20), 257 * 100, dtype=np.uint16)).save(a / "04_16bit.png")
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:10] = (0, 0, 255, 255)  # top half opaque blue, bottom half fully transparent
    Image.fromarray(rgba).save(a / "05_rgba.png")
    # Stored 40 wide x 20 high, left half red / right half blue, EXIF orientation 6 ("rotate
    # 90 clockwise to display"): displayed 20 x 40 with red on top and blue below.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    (a / "06_exif.jpg").write_bytes(jpeg_bytes(stored, exif=exif))
    (b / "00_ok.jpg").write_bytes(jpeg_bytes(noise(24, 24)))
    good = jpeg_bytes(noise(64, 64, seed=1))
    (b / "bad_truncated.jpg").write_bytes(good[: len(good) // 2])
    (b / "bad_empty.jpg").write_bytes(b"")
    (b / "bad_text.jpg").write_text("this is not a JPEG\n")
    (b / "bad_garbage.png").write_bytes(np.random.default_rng(2).bytes(500))
    (b / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_imagefolder_skips_and_counts_bad_files(messy_folder, tmp_path):
    ds = load_dataset("imagefolder", messy_folder, "train", 16, tmp_path / "cache")
    assert ds.classes == ["a", "b"]
    assert ds.skipped == 4
    bad = {"bad_truncated.jpg", "bad_empty.jpg", "bad_text.jpg", "bad_garbage.png"}
    assert {Path(f).name for f in ds.skipped_files} == bad
    assert ds.images.shape == (7, 16, 16, 3) and ds.labels.tolist() == [0] * 6 + [1]
    img = np.asarray(ds.images, dtype=np.int64)
    assert (img[0] == 100).all()  # greyscale
    assert np.abs(img[1] - [255, 0, 0]).max() <= 12  # CMYK (0, 255, 255, 0) is red
    assert (img[2] == [0, 200, 0]).all()  # palette index 1
    assert (img[3] == 100).all()  # 16-bit 25,700 / 257 = 100, not clipped to 255
    assert (img[4, :6] == [0, 0, 255]).all() and (img[4, -6:] == 255).all()  # alpha on white
    exif = img[5]  # EXIF applied: red on top, blue at the bottom
    assert np.abs(exif[2, 2] - [255, 0, 0]).max() < 40
    assert np.abs(exif[13, 2] - [0, 0, 255]).max() < 40


def test_imagefolder_pool_path_matches_single_image_decoding(tmp_path):
    """>= 256 files goes through the 2-process pool; compare with decode_image file by file."""
    root = tmp_path / "many"
    for c in ("x", "y"):
        (root / c).mkdir(parents=True)
    for k in range(300):
        arr = noise(12 + k % 7, 10 + k % 5, seed=k)
        Image.fromarray(arr).save(root / ("x" if k % 2 else "y") / f"{k:03d}.png")
    (root / "x" / "zz_bad.png").write_bytes(b"not a png")
    (root / "y" / "zz_bad.jpg").write_bytes(b"")
    ds = load_dataset("imagefolder", root, "train", 8, tmp_path / "cache")
    assert ds.skipped == 2 and len(ds) == 300
    files = sorted((root / "x").glob("[0-9]*.png")) + sorted((root / "y").glob("[0-9]*.png"))
    expected = np.stack([decode_image(f, 8) for f in files])
    assert np.array_equal(np.asarray(ds.images), expected)
    assert ds.labels.tolist() == [0] * 150 + [1] * 150


def test_imagefolder_split_folders_and_info(tmp_path):
    root = tmp_path / "splits"
    write_plain_folder(root / "train", per_class=3)
    write_plain_folder(root / "val", per_class=1)
    train = load_dataset("imagefolder", root, "train", 8, tmp_path / "c")
    val = load_dataset("imagefolder", root, "val", 8, tmp_path / "c")
    assert (len(train), len(val)) == (6, 2) and train.source != val.source
    with pytest.raises(DatasetError, match="no split folder 'test'.*train, val"):
        load_dataset("imagefolder", root, "test", 8, tmp_path / "c")
    info = dataset_info("imagefolder", root)
    assert info["splits"] == ["train", "val"] and info["per_split"] == {"train": 6, "val": 2}
    assert info["images"] == 8 and info["classes"] == ["cat", "dog"]
    plain = tmp_path / "plain"
    write_plain_folder(plain, per_class=2)
    info = dataset_info("imagefolder", plain)
    assert (info["images"], info["splits"], info["classes"]) == (4, [], ["cat", "dog"])
    # No split folders: any split name is the whole folder, so train and test share a source.
    a = load_dataset("imagefolder", plain, "train", 8, tmp_path / "c")
    b = load_dataset("imagefolder", plain, "test", 8, tmp_path / "c")
    assert a.source == b.source and len(a) == 4


def test_subset_keeps_classes_and_copies_rows(tmp_path):
    ds = load_dataset("digits", None, "test", 8, tmp_path)
    sub = ds.subset([5, 0, 7])
    assert isinstance(sub, ImageArrayDataset) and len(sub) == 3 and sub.classes == ds.classes
    assert np.array_equal(sub.images[1], ds.images[0]) and sub.labels[2] == ds.labels[7]
    assert not isinstance(sub.images, np.memmap)


# ---------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'.*digits, cifar10, imagefolder"):
        load_dataset("mnist", None, "train", 32, tmp_path)
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(missing)):
        load_dataset("imagefolder", missing, "train", 32, tmp_path)
    with pytest.raises(DatasetError, match="needs a root"):
        load_dataset("cifar10", None, "train", 32, tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "img.png")
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_dataset("imagefolder", flat, "train", 32, tmp_path / "c")
    empty_classes = tmp_path / "empty"
    (empty_classes / "a").mkdir(parents=True)
    (empty_classes / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no image files"):
        load_dataset("imagefolder", empty_classes, "train", 32, tmp_path / "c")
    all_bad = tmp_path / "bad"
    (all_bad / "a").mkdir(parents=True)
    (all_bad / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="no decodable images.*1 files skipped"):
        load_dataset("imagefolder", all_bad, "train", 32, tmp_path / "c")
    with pytest.raises(DatasetError, match="plain folder name"):
        load_dataset("imagefolder", empty_classes, "../bad", 32, tmp_path / "c")
    with pytest.raises(DatasetError, match="no CIFAR-10 data"):
        load_dataset("cifar10", empty_classes, "train", 32, tmp_path / "c")
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix in (".npy", ".json")]


# ---------------------------------------------------------------------------- confinement


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path, Path]:
    """(data root, second root, a folder outside both), all holding an ImageFolder tree."""
    data, other, outside = tmp_path / "data", tmp_path / "other", tmp_path / "outside"
    for r in (data, other, outside):
        write_plain_folder(r / "set", per_class=1)
    return data, other, outside


def test_resolve_within_roots(roots, tmp_path):
    data, other, outside = roots
    allowed = [data, other]
    assert resolve_within_roots(data / "set", allowed) == (data / "set").resolve()
    assert resolve_within_roots("set", [other]) == (other / "set").resolve()  # relative
    with pytest.raises(PathNotAllowedError, match=r"data/\.\./outside.*outside the allowed") as e:
        resolve_within_roots(data / ".." / "outside" / "set", allowed)
    assert str(data) in str(e.value) and str(other) in str(e.value)
    with pytest.raises(PathNotAllowedError):
        resolve_within_roots("../outside/set", [data])
    (data / "escape").symlink_to(outside / "set", target_is_directory=True)
    with pytest.raises(PathNotAllowedError, match="escape"):
        resolve_within_roots(data / "escape", allowed)
    (data / "alias").symlink_to(data / "set", target_is_directory=True)  # stays inside: fine
    assert resolve_within_roots(data / "alias", allowed) == (data / "set").resolve()
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_within_roots(data / "missing", allowed)
    with pytest.raises(PathNotAllowedError):  # missing and outside: not allowed, not "missing"
        resolve_within_roots(tmp_path / "elsewhere" / "missing", allowed)


def test_load_dataset_confined_to_roots(roots, tmp_path):
    data, _, outside = roots
    cache = tmp_path / "cache"
    ds = load_dataset("imagefolder", "set", "train", 8, cache, allowed_roots=[data])
    assert len(ds) == 2
    (data / "escape").symlink_to(outside / "set", target_is_directory=True)
    with pytest.raises(PathNotAllowedError):
        load_dataset("imagefolder", data / "escape", "train", 8, cache, allowed_roots=[data])
    with pytest.raises(PathNotAllowedError):
        load_dataset(
            "imagefolder", data / ".." / "outside" / "set", "train", 8, cache, allowed_roots=[data]
        )
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", "nope", "train", 8, cache, allowed_roots=[data])
    # A symlinked file inside a class folder that points outside is skipped, never read.
    (data / "set" / "cat" / "leak.png").symlink_to(outside / "set" / "dog" / "00.png")
    ds = load_dataset("imagefolder", "set", "train", 8, cache, allowed_roots=[data])
    assert len(ds) == 2 and ds.skipped == 1
    assert ds.skipped_files == [os.path.join("cat", "leak.png")]


def test_dataset_roots_from_environment(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("SSL_DATASET_ROOTS", f"{a}{os.pathsep}{b}")
    assert dataset_roots() == [a.resolve(), b.resolve()]
    monkeypatch.delenv("SSL_DATASET_ROOTS")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SSL_HOME", str(home))
    assert dataset_roots() == [(home / "data").resolve()]
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    assert dataset_roots() == [(home / "data").resolve(), (tmp_path / "shared/datasets").resolve()]


# ---------------------------------------------------------------------------- CIFAR-10


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_ARCHIVE.is_file(), reason="offline CIFAR-10 archive not present")
def test_cifar10_from_shared_archive():
    """Extracts the 60k-file archive once (into the session's cache, where the other CIFAR
    tests find it), decodes 20 images per class."""
    cache = SESSION_CACHE
    train = load_dataset("cifar10", CIFAR_ARCHIVE, "train", None, cache, max_per_class=20)
    assert train.images.shape == (200, 32, 32, 3) and train.classes == CIFAR10_CLASSES
    assert np.bincount(train.labels).tolist() == [20] * 10 and train.skipped == 0
    (extracted,) = [
        p for p in (cache / "extracted").iterdir() if p.is_dir() and p.name.startswith("cifar10-")
    ]
    extracted_mtime = extracted.stat().st_mtime_ns
    # Independent check: the first airplane, read straight from the archive with PIL.
    with tarfile.open(CIFAR_ARCHIVE) as tf:
        names = sorted(tf.getnames())
        first = [n for n in names if n.startswith("train/airplane/")][0]
        truck = [n for n in names if n.startswith("test/truck/")][19]  # 20th = last kept
        first = np.asarray(Image.open(tf.extractfile(first)).convert("RGB"))
        truck = np.asarray(Image.open(tf.extractfile(truck)).convert("RGB"))
    assert np.array_equal(train.images[0], first)
    test = load_dataset("cifar10", CIFAR_ARCHIVE, "test", None, cache, max_per_class=20)
    assert len(test) == 200 and test.source != train.source
    assert np.array_equal(test.images[-1], truck)
    assert extracted.stat().st_mtime_ns == extracted_mtime  # extracted once, not twice
    # The preset's form: "cifar10" relative to a data root holding the archive's folder.
    again = load_dataset(
        "cifar10",
        "cifar10",
        "train",
        None,
        cache,
        max_per_class=20,
        allowed_roots=[CIFAR_ARCHIVE.parents[1]],
    )
    assert np.array_equal(np.asarray(again.images), np.asarray(train.images))
    info = dataset_info("cifar10", CIFAR_ARCHIVE)
    assert info["per_split"] == {"test": 10_000, "train": 50_000} and info["images"] == 60_000
    assert info["classes"] == CIFAR10_CLASSES


# ------------------------------------------------- CIFAR-10, torchvision's python batches


class _Py2Pickler(pickle._Pickler):
    """Writes what the published ``cifar-10-batches-py`` files hold: Python 2 protocol-2
    pickles, every string a byte string (BINSTRING), numpy 1.x's module names."""

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_py2_str, str: save_py2_str}


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"_codecs" not in raw and b"numpy._core" not in raw
    return raw


CIFAR_FAKE_SIZES = {f"data_batch_{i}": 3 for i in range(1, 6)} | {"test_batch": 4}


def write_cifar_batches(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """root/cifar-10-batches-py with tiny batches; returns {file: (HWC images, labels)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    written = {}
    for k, (name, n) in enumerate(CIFAR_FAKE_SIZES.items()):
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [(k * 3 + i) % 10 for i in range(n)]
        rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # row-major CHW: R, then G, then B
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"img_{k}_{i}.png".encode() for i in range(n)]}  # fmt: skip
        (folder / name).write_bytes(py2_pickle(entry))
        written[name] = (hwc, labels)
    meta = {b"num_cases_per_batch": 3, b"num_vis": 3072,
            b"label_names": [c.encode() for c in CIFAR10_CLASSES]}  # fmt: skip
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return written


def test_cifar10_python_batches_load_as_hwc_images(tmp_path):
    data = tmp_path / "data"
    written = write_cifar_batches(data / "cifar10")
    cache = tmp_path / "cache"
    train = load_dataset("cifar10", "cifar10", "train", None, cache, allowed_roots=[data])
    names = [f"data_batch_{i}" for i in range(1, 6)]
    assert train.images.shape == (15, 32, 32, 3) and train.images.dtype == np.uint8
    assert np.array_equal(np.asarray(train.images), np.concatenate([written[n][0] for n in names]))
    assert train.labels.tolist() == sum((written[n][1] for n in names), [])
    assert train.classes == CIFAR10_CLASSES
    # Pixel (row 0, col 1) of image 0 is bytes 1, 1025 and 2049 of its CHW row.
    rows = written["data_batch_1"][0].transpose(0, 3, 1, 2).reshape(3, 3072)
    assert train.images[0, 0, 1].tolist() == rows[0, [1, 1025, 2049]].tolist()
    test = load_dataset("cifar10", data / "cifar10", "test", 16, cache, allowed_roots=[data])
    assert test.images.shape == (4, 16, 16, 3) and test.labels.tolist() == [5, 6, 7, 8]
    assert test.source != train.source
    few = load_dataset("cifar10", data / "cifar10", "train", None, cache, max_per_class=1)
    assert sorted(few.labels.tolist()) == list(range(10))
    # The same folder in a .tar.gz goes through the same reader.
    archive = data / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(data / "cifar10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    packed = load_dataset("cifar10", archive, "train", None, cache, allowed_roots=[data])
    assert np.array_equal(np.asarray(packed.images), np.asarray(train.images))


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("open('marker-eval', 'w')",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "numpy dtype then os.system"])
def test_cifar10_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch, payload):
    data = tmp_path / "data"
    write_cifar_batches(data / "cifar10")
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = {
        "os.system": {b"data": _RunsShell(f"touch {marker}"), b"labels": [0]},
        "builtins.eval": {b"data": _Evals(), b"labels": [0]},
        # allowed globals first, the payload later in the same file
        "numpy dtype then os.system": [
            np.zeros((1, 3072), np.uint8),
            _RunsShell(f"touch {marker}"),
        ],
    }[payload]
    victim = data / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    victim.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load") as err:
        load_dataset("cifar10", "cifar10", "train", None, tmp_path / "c", allowed_roots=[data])
    assert str(victim) in str(err.value)
    # the refused global is named (protocol 2 spells builtins "__builtin__")
    refused = f"{os.system.__module__}.system'" if "system" in payload else "__builtin__.eval'"
    assert refused in str(err.value)
    assert not marker.exists() and not (tmp_path / "marker-eval").exists()
    assert not list((tmp_path / "c").glob("*.npy"))


def test_cifar10_bad_batches_are_clear_errors(tmp_path):
    root = tmp_path / "cifar"
    write_cifar_batches(root)
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8),
                                                      b"labels": [0, 1]}))  # fmt: skip
    with pytest.raises(DatasetError, match="data_batch_2.*3072"):
        load_dataset("cifar10", root, "train", None, tmp_path / "c")
    (folder / "data_batch_2").write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DatasetError, match="data_batch_2.*not a readable"):
        load_dataset("cifar10", root, "train", None, tmp_path / "c")
    (folder / "data_batch_2").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_2"):
        load_dataset("cifar10", root, "train", None, tmp_path / "c")
    (folder / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((1, 3072), np.uint8),
                                                    b"labels": [10]}))  # fmt: skip
    with pytest.raises(DatasetError, match="label 10 is outside 0..9"):
        load_dataset("cifar10", root, "test", None, tmp_path / "c")


def test_cifar10_batch_symlinked_outside_the_roots_is_not_read(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    write_cifar_batches(data / "cifar10")
    write_cifar_batches(outside)
    link = data / "cifar10" / "cifar-10-batches-py" / "test_batch"
    link.unlink()
    link.symlink_to(outside / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(PathNotAllowedError, match="test_batch.*outside the allowed"):
        load_dataset("cifar10", "cifar10", "test", None, tmp_path / "c", allowed_roots=[data])
