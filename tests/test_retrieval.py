"""Retrieval with faiss: exact vs numpy brute force, tuned approximate indexes, precision@k."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from sslengine.data.datasets import decode_image
from sslengine.eval.retrieval import (
    build_index,
    drop_self_matches,
    embed_images,
    embed_uploaded,
    index_type_of,
    load_index,
    precision_at_k,
    save_index,
    search,
)
from sslengine.models.backbones import build_backbone

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Brute force in numpy: cosine similarities, the k largest of each row, best first."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ xn.T
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)


def recall_at(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(t)) / len(t) for a, t in zip(ids, truth, strict=True)]))


def test_flat_index_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32) * rng.uniform(0.1, 5, size=(3000, 1))
    q = rng.normal(size=(60, 32)).astype(np.float32)
    index = build_index(x, "auto")
    assert index_type_of(index) == "flat"
    scores, ids = search(index, q, 10)
    truth = exact_top_k(x, q, 10)
    assert recall_at(ids, truth) == 1.0
    np.testing.assert_array_equal(ids, truth)  # continuous data: no ties, same order
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.take_along_axis(qn @ xn.T, truth, 1), atol=1e-5)


@pytest.mark.slow
def test_tuned_ivf_on_100k_random_vectors_reaches_recall_095():
    """Uniformly random 64-d vectors are the hardest case for an approximate index; tuning
    raises nprobe until recall@10 >= 0.95, measured here on fresh queries vs numpy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100_000, 64)).astype(np.float32)
    q = rng.normal(size=(500, 64)).astype(np.float32)
    index = build_index(x, "ivf")
    assert index_type_of(index) == "ivf"
    _, ids = search(index, q, 10)
    assert recall_at(ids, exact_top_k(x, q, 10)) >= 0.95


def test_tuned_hnsw_reaches_recall_095_and_auto_picks_it_for_large_sets(monkeypatch):
    import sslengine.eval.retrieval as retrieval

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8000, 32)).astype(np.float32)
    q = rng.normal(size=(300, 32)).astype(np.float32)
    monkeypatch.setattr(retrieval, "AUTO_FLAT_BELOW", 5000)  # "large" for this test
    index = build_index(x, "auto")
    assert index_type_of(index) == "hnsw"
    _, ids = search(index, q, 10)
    assert recall_at(ids, exact_top_k(x, q, 10)) >= 0.95


def test_precision_at_k_by_hand_and_on_labelled_clusters():
    labels = np.array([0, 0, 1, 1, 2])
    ids = np.array([[1, 2, 3], [0, 4, -1], [3, 2, 0]])
    queries = np.array([0, 0, 1])
    # neighbour labels: [0, 1, 1] / [0, 2, missing] / [1, 1, 0] against 0 / 0 / 1
    assert precision_at_k(ids, labels, queries, 1) == pytest.approx(1.0)
    assert precision_at_k(ids, labels, queries, 2) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert precision_at_k(ids, labels, queries, 3) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 16)) * 10
    y = np.repeat(np.arange(5), 40)
    x = (centres[y] + rng.normal(size=(200, 16))).astype(np.float32)
    index = build_index(x, "flat")
    _, found = search(index, x, 11)
    neighbours = drop_self_matches(found, np.arange(200), 10)
    assert (neighbours != np.arange(200)[:, None]).all()
    assert precision_at_k(neighbours, y, y, 10) == 1.0
    shuffled = rng.permutation(y)  # labels unrelated to the geometry: about 39/199 agree
    assert precision_at_k(neighbours, shuffled, shuffled, 10) < 0.35


def test_drop_self_matches_keeps_order():
    ids = np.array([[5, 3, 9, 1], [2, 7, 8, 4]])
    out = drop_self_matches(ids, np.array([3, 4]), 3)
    np.testing.assert_array_equal(out, [[5, 9, 1], [2, 7, 8]])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_saved_index_loads_memory_mapped_and_searches_the_same(kind, tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    index = build_index(x, kind)
    before = search(index, x[:20], 5)
    path = save_index(index, tmp_path / "sub" / "index.faiss")
    loaded = load_index(path, mmap=True)
    assert index_type_of(loaded) == kind and loaded.ntotal == 2000
    if kind == "ivf":  # the inverted lists stay on disk, mapped, not read into memory
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded).invlists)
        assert isinstance(lists, faiss.OnDiskInvertedLists)
    after = search(loaded, x[:20], 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])


def test_uploaded_image_is_embedded_like_its_dataset_twin(tmp_path):
    """An uploaded photo (odd size, RGBA) goes through the dataset cache's preparation, so its
    embedding equals that of the same file decoded by the dataset loader."""
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", cifar_stem=True)
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(30, 45, 4), dtype=np.uint8)
    path = tmp_path / "upload.png"
    Image.fromarray(pixels, "RGBA").save(path)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    with Image.open(path) as im:
        uploaded = embed_uploaded(backbone, im, 16, mean, std)
    cached = decode_image(path, 16)[None]  # what the dataset cache would store
    expected = embed_images(backbone, cached, mean, std)
    assert uploaded.shape == (1, backbone.out_dim)
    np.testing.assert_allclose(uploaded, expected, atol=1e-6)
    assert np.linalg.norm(uploaded) == pytest.approx(1.0, abs=1e-5)
