"""Clusters: spherical k-means recovers blobs, usage diagnostics by hand, SwAV prototypes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from sslengine.eval.clusters import (
    DOMINANT_FACTOR,
    assign_to_centroids,
    cluster_usage,
    kmeans_clusters,
    prototype_clusters,
)

torch.set_num_threads(1)


def purity(assign: np.ndarray, truth: np.ndarray) -> float:
    """Naive purity: each cluster votes for its majority true label."""
    total = 0
    for c in set(assign.tolist()):
        members = [t for a, t in zip(assign.tolist(), truth.tolist(), strict=True) if a == c]
        total += max(members.count(v) for v in set(members))
    return total / len(truth)


def test_kmeans_recovers_well_separated_blobs():
    rng = np.random.default_rng(0)
    k, per, d = 6, 80, 16
    centres = rng.normal(size=(k, d))
    truth = np.repeat(np.arange(k), per)
    x = (centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True)) * 5
    x = (x + rng.normal(scale=0.3, size=x.shape)).astype(np.float32)
    res = kmeans_clusters(x, k, seed=0)
    assert purity(res.assignments, truth) > 0.95
    assert adjusted_rand_score(truth, res.assignments) > 0.95
    assert res.counts.sum() == len(x) and res.k == k
    assert res.dead == 0 and res.dominant == 0
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    # every image is assigned to its most cosine-similar centroid, with that cosine as score
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ res.centroids.T
    np.testing.assert_array_equal(res.assignments, sims.argmax(1))
    np.testing.assert_allclose(res.scores, sims.max(1), atol=1e-5)


def test_assign_to_centroids_matches_a_python_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 5)).astype(np.float32)
    c = rng.normal(size=(4, 5)).astype(np.float32)
    assign, scores = assign_to_centroids(x, c, batch_size=7)
    for i, row in enumerate(x.tolist()):
        cos = []
        for cen in c.tolist():
            dot = sum(a * b for a, b in zip(row, cen, strict=True))
            cos.append(
                dot / math.sqrt(sum(a * a for a in row)) / math.sqrt(sum(b * b for b in cen))
            )
        assert assign[i] == cos.index(max(cos))
        assert scores[i] == pytest.approx(max(cos), abs=1e-5)


def test_usage_counts_dead_dominant_entropy_and_top_images_by_hand():
    # N = 20 images, K = 10 clusters: equipartition share N/K = 2, dominant means > 8 images
    assign = np.array([0] * 12 + [1, 1, 2, 2, 3, 3, 4, 4])
    scores = np.linspace(0.0, 1.0, 20).astype(np.float32)
    scores[3] = scores[5] = 0.99  # a tie inside cluster 0: broken by image index
    usage = cluster_usage(assign, scores, k=10, top_n=4)
    assert usage["counts"].tolist() == [12, 2, 2, 2, 2, 0, 0, 0, 0, 0]
    assert usage["counts"].sum() == 20
    assert usage["dead"] == 5
    assert DOMINANT_FACTOR == 4.0
    assert usage["dominant"] == 1  # 12 > 4 * 20 / 10 = 8; the clusters of 2 are not
    p = [12 / 20] + [2 / 20] * 4
    assert usage["usage_entropy"] == pytest.approx(-sum(q * math.log(q) for q in p))
    assert usage["max_entropy"] == pytest.approx(math.log(10))
    assert usage["top_images"][0] == [3, 5, 11, 10]  # 0.99, 0.99, then the largest linspace
    assert usage["top_images"][1] == [13, 12]
    assert set(usage["top_images"]) == {0, 1, 2, 3, 4}  # dead clusters have no images


def test_equal_usage_has_maximal_entropy_and_no_flags():
    assign = np.tile(np.arange(5), 4)
    usage = cluster_usage(assign, np.ones(20, dtype=np.float32), k=5)
    assert usage["usage_entropy"] == pytest.approx(math.log(5))
    assert usage["dead"] == usage["dominant"] == 0


def test_kmeans_refuses_more_clusters_than_images():
    with pytest.raises(ValueError, match="k must be"):
        kmeans_clusters(np.ones((3, 4), dtype=np.float32), 5)


def test_swav_prototype_clusters_of_a_trained_run(tmp_path, ssl_home):
    """A tiny SwAV run: the prototype path scores every image by its projected, normalised
    features against the normalised prototypes (recomputed here image by image)."""
    from sslengine.config import parse_config
    from sslengine.eval.features import extract_features
    from sslengine.eval.jobs import load_backbone
    from sslengine.methods import build_method
    from sslengine.train.checkpoint import latest_checkpoint, load_checkpoint
    from sslengine.train.data import load_split
    from sslengine.train.loop import pretrain

    cfg = parse_config(swav_config())
    pretrain(cfg, tmp_path)
    state = load_checkpoint(latest_checkpoint(tmp_path))
    method = build_method(cfg, 100, tuple(state["mean"]), tuple(state["std"]))
    method.load_state_dict(
        {k.removeprefix("method."): v for k, v in state["model"].items() if k.startswith("method.")}
    )
    method.eval()
    backbone, ckpt = load_backbone(latest_checkpoint(tmp_path))
    test = load_split(cfg, "test")
    feats = extract_features(backbone, test.images, ckpt.mean, ckpt.std)["pooled"]
    res = prototype_clusters(method.projector, method.prototypes.weight, feats)
    assert res.source == "prototypes" and res.k == 16
    assert res.counts.sum() == len(test)

    protos = F.normalize(state["model"]["method.prototypes.weight"].float(), dim=1)
    mean = torch.tensor(ckpt.mean).view(1, 3, 1, 1)
    std = torch.tensor(ckpt.std).view(1, 3, 1, 1)
    with torch.no_grad():
        for i in range(0, len(test), 37):  # a sample of images, one at a time
            x = torch.from_numpy(np.array(test.images[i : i + 1])).permute(0, 3, 1, 2)
            h = method.backbone((x.float() / 255.0 - mean) / std)
            z = F.normalize(method.projector(h), dim=1)
            s = (z @ protos.T)[0]
            assert res.assignments[i] == int(s.argmax())
            assert res.scores[i] == pytest.approx(float(s.max()), abs=1e-4)


def swav_config() -> dict:
    return {
        "method": "swav",
        "dataset": {"name": "digits", "image_size": 16, "max_per_class": 20},
        "backbone": {"name": "small_resnet"},
        "train": {"batch_size": 32, "epochs": 1, "max_steps": 3, "log_every": 1},
        "eval": {"knn": False},
        "swav": {
            "n_prototypes": 16,
            "n_small_crops": 2,
            "small_crop_size": 12,
            "freeze_prototypes_steps": 1,
            "queue_size": 0,
        },
    }


def test_swav_run_clusters_through_the_job_runner(tmp_path, ssl_home):
    """The runner picks SwAV's prototypes for a swav run and writes the contract's files."""
    from sslengine.config import parse_config
    from sslengine.eval.jobs import run_evaluation
    from sslengine.store import Store
    from sslengine.store.artifacts import run_artifact_dir
    from sslengine.train.loop import pretrain
    from sslengine.train.reporter import StoreReporter

    store = Store.default()
    cfg = parse_config(swav_config())
    run_id = store.create_run(
        cfg.model_dump(mode="json"),
        name="swav-clusters",
        method="swav",
        dataset="digits",
        backbone="small_resnet",
    )
    reporter = StoreReporter(store, run_id)
    pretrain(cfg, run_artifact_dir(run_id) / "checkpoints", reporter=reporter)
    reporter.close()
    (row_id,) = run_evaluation(store, run_id, "clusters")
    row = next(r for r in store.list_eval_results(run_id, "clusters") if r.id == row_id)
    assert row.layer == "prototypes" and row.checkpoint_step == 3
    assert row.metrics["source"] == "prototypes" and row.metrics["k"] == 16
    assert row.metrics["max_entropy"] == pytest.approx(math.log(16))
    folder = row.artifact_path
    assign = np.load(f"{folder}/assignments.npy")
    counts = json.loads(Path(folder, "usage.json").read_text())["counts"]
    assert counts == np.bincount(assign, minlength=16).tolist()
    assert row.metrics["dead"] == sum(c == 0 for c in counts)
    assert np.load(f"{folder}/centroids.npy").shape == (16, 128)
