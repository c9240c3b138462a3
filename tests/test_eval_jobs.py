"""The evaluation runner on a real stored run: rows and artifacts per docs/eval-contract.md,
clear refusals that write nothing, the CLI, and one evaluation through the real queue."""

from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from sslengine.eval.jobs import main, probe_over_training, run_evaluation
from sslengine.models.backbones import TAPS
from sslengine.store import Store
from sslengine.store.artifacts import run_artifact_dir

torch.set_num_threads(1)


def _rows(store: Store, run_id: str, ids: list[int]):
    by_id = {r.id: r for r in store.list_eval_results(run_id)}
    return [by_id[i] for i in ids]


def _final_step(store: Store, run_id: str) -> int:
    return store.latest_checkpoint(run_id).step


def test_probe_writes_one_row_per_tap(finished_run):
    store = Store.default()
    ids = run_evaluation(store, finished_run, "probe", params={"epochs": 4, "batch_size": 128})
    rows = _rows(store, finished_run, ids)
    assert [r.layer for r in rows] == list(TAPS)
    for r in rows:
        assert r.kind == "probe" and r.checkpoint_step == _final_step(store, finished_run)
        assert set(r.metrics) == {"top1", "top5", "dim", "epochs"}
        assert 0.0 <= r.metrics["top1"] <= r.metrics["top5"] <= 1.0
        assert r.metrics["epochs"] == 4 and r.artifact_path is None
    by_layer = {r.layer: r.metrics for r in rows}
    # digits at 16 px through small_resnet: conv1 16x16x16 maps fit whole, pooled is 128-d
    assert by_layer["conv1"]["dim"] == 4096 and by_layer["pooled"]["dim"] == 128
    assert by_layer["conv1"]["top1"] > 0.5  # 10 classes: chance is 0.1


def test_knn_row_agrees_with_the_training_loops_knn(finished_run):
    store = Store.default()
    (row_id,) = run_evaluation(store, finished_run, "knn")
    (row,) = _rows(store, finished_run, [row_id])
    assert row.layer == "pooled" and row.checkpoint_step == _final_step(store, finished_run)
    assert set(row.metrics) == {"knn_top1_k20", "knn_top1_k200", "n_train", "n_test", "patch_grid"}
    assert row.metrics["patch_grid"] == 1
    assert (row.metrics["n_train"], row.metrics["n_test"]) == (1437, 360)  # digits 80/20
    # the loop evaluated the same final weights with its own code path at the end of training
    loop_rows = [
        r for r in store.list_eval_results(finished_run, "knn") if r.id != row_id and r.metrics
    ]
    assert loop_rows, "the training loop records a kNN result"
    assert row.metrics["knn_top1_k20"] == pytest.approx(loop_rows[0].metrics["knn_top1_k20"])


def test_knn_job_reads_the_patch_grid_it_is_given(finished_run):
    """params.patch_grid: a different readout of the same checkpoint, recorded in the row."""
    store = Store.default()
    whole, grid = (
        run_evaluation(store, finished_run, "knn"),
        run_evaluation(store, finished_run, "knn", params={"patch_grid": 2}),
    )
    (w,), (g,) = _rows(store, finished_run, whole), _rows(store, finished_run, grid)
    assert (w.metrics["patch_grid"], g.metrics["patch_grid"]) == (1, 2)
    assert g.metrics["n_test"] == w.metrics["n_test"] == 360
    assert g.metrics["knn_top1_k20"] != w.metrics["knn_top1_k20"]


def test_retrieval_writes_embeddings_labels_and_a_loadable_index(finished_run):
    store = Store.default()
    (row_id,) = run_evaluation(store, finished_run, "retrieval")
    (row,) = _rows(store, finished_run, [row_id])
    step = _final_step(store, finished_run)
    folder = Path(row.artifact_path)
    assert folder == run_artifact_dir(finished_run) / "eval" / f"retrieval-step{step:08d}-pooled"
    emb = np.load(folder / "embeddings.npy")
    labels = np.load(folder / "labels.npy")
    assert emb.dtype == np.float32 and emb.shape == (360, 128)
    assert labels.dtype == np.int64 and labels.shape == (360,)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["split"] == "test" and meta["tap"] == "pooled" and meta["index_type"] == "flat"
    assert meta["dataset"]["name"] == "digits"
    index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP_IFC)
    assert index.ntotal == 360
    m = row.metrics
    assert (m["n"], m["dim"], m["index_type"]) == (360, 128, "flat")
    # precision@10 recomputed by brute force in numpy from the stored files
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :10]
    assert m["precision_at_10"] == pytest.approx((labels[top] == labels[:, None]).mean())


def test_clusters_writes_contract_files_and_thumbnails(finished_run):
    from sslengine.config import DatasetConfig
    from sslengine.eval.thumbnails import thumbnail_path

    store = Store.default()
    (row_id,) = run_evaluation(store, finished_run, "clusters", params={"top_n": 4})
    (row,) = _rows(store, finished_run, [row_id])
    folder = Path(row.artifact_path)
    assert row.layer == "pooled"
    m = row.metrics
    assert m["source"] == "kmeans" and m["k"] == 10  # default: the number of classes
    assign = np.load(folder / "assignments.npy")
    scores = np.load(folder / "scores.npy")
    counts = json.loads((folder / "usage.json").read_text())["counts"]
    top = json.loads((folder / "top_images.json").read_text())
    assert assign.dtype == np.int64 and assign.shape == (360,) and scores.dtype == np.float32
    assert counts == np.bincount(assign, minlength=10).tolist() and sum(counts) == 360
    assert np.load(folder / "centroids.npy").shape == (10, 128)
    for cluster, images in top.items():
        members = np.flatnonzero(assign == int(cluster))
        best = members[np.argsort(-scores[members], kind="stable")][:4]
        assert images == best.tolist()
    meta = json.loads((folder / "meta.json").read_text())
    dataset_cfg = DatasetConfig.model_validate(meta["dataset"])
    first = top[next(iter(top))][0]
    path = thumbnail_path(dataset_cfg, meta["split"], first)
    assert path.is_file()  # rendered in bulk by the job
    with Image.open(path) as im:
        assert im.size == (64, 64)


def test_thumbnails_are_rendered_once_from_the_decoded_cache(ssl_home):
    from sslengine.config import DatasetConfig, ExperimentConfig
    from sslengine.eval.thumbnails import render_thumbnails, thumbnail_path
    from sslengine.settings import cache_dir
    from sslengine.train.data import load_split

    dataset_cfg = DatasetConfig(name="digits", image_size=16)
    images = load_split(ExperimentConfig(dataset=dataset_cfg), "test").images
    paths = render_thumbnails(dataset_cfg, "test", [7, 3, 7])
    assert paths[0] == paths[2] and paths[0].name == "7.png"
    assert paths[0].is_relative_to(cache_dir() / "thumbs")
    assert Path(images.filename).stem in paths[0].parts  # keyed by the dataset cache entry
    mtime = paths[1].stat().st_mtime_ns
    assert thumbnail_path(dataset_cfg, "test", 3) == paths[1]
    assert paths[1].stat().st_mtime_ns == mtime  # not rendered again
    with Image.open(paths[1]) as im:
        pixels = np.asarray(im.convert("RGB"))
    # 16 px enlarged 4x by nearest neighbour: every 4th pixel is the cached image
    np.testing.assert_array_equal(pixels[::4, ::4], images[3])
    small = thumbnail_path(dataset_cfg, "test", 3, size=8)
    with Image.open(small) as im:
        assert im.size == (8, 8)
    with pytest.raises(ValueError, match="out of range"):
        thumbnail_path(dataset_cfg, "test", len(images))


def test_finetune_writes_one_row(finished_run):
    store = Store.default()
    params = {"epochs": 1, "batch_size": 128}
    (row_id,) = run_evaluation(store, finished_run, "finetune", params=params)
    (row,) = _rows(store, finished_run, [row_id])
    assert row.layer == "all"
    assert set(row.metrics) == {"top1", "top5", "epochs", "lr", "backbone_lr"}
    assert 0.0 <= row.metrics["top1"] <= row.metrics["top5"] <= 1.0


def test_probe_over_training_probes_every_checkpoint(finished_run):
    store = Store.default()
    steps = [c.step for c in store.list_checkpoints(finished_run)]
    assert len(steps) > 1
    ids = probe_over_training(store, finished_run, "conv1,pooled", {"epochs": 1})
    rows = _rows(store, finished_run, ids)
    assert [(r.checkpoint_step, r.layer) for r in rows] == [
        (s, layer) for s in steps for layer in ("conv1", "pooled")
    ]


@pytest.fixture(scope="module")
def unlabelled_run(ssl_home, finished_run):
    """A run on a one-folder ImageFolder (no labels), given a checkpoint to evaluate."""
    folder = ssl_home / "data" / "unlabelled" / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    store = Store.default()
    config = {"dataset": {"name": "imagefolder", "root": str(folder.parent), "image_size": 16}}
    run_id = store.create_run(
        config, name="unlabelled", method="simclr", dataset="imagefolder", backbone="small_resnet"
    )
    ckpt = store.latest_checkpoint(finished_run)
    store.add_checkpoint(run_id, ckpt.step, ckpt.path)
    return run_id


@pytest.fixture(scope="module")
def run_without_checkpoint(ssl_home):
    store = Store.default()
    return store.create_run({}, name="empty", method="simclr", dataset="digits", backbone="x")


@pytest.mark.parametrize(
    ("which", "kind", "kwargs", "message"),
    [
        ("missing", "knn", {}, "run nope does not exist"),
        ("empty", "probe", {}, "has no checkpoint"),
        ("finished", "probe", {"layer": "conv1,layer9"}, "layer9"),
        ("finished", "probe", {"checkpoint_step": 7}, "available steps: 10, "),
        ("finished", "probe", {"params": {"epochz": 3}}, "epochz"),
        ("finished", "probe", {"params": {"epochs": 0}}, "epochs"),
        ("finished", "evaluate", {}, "unknown evaluation kind"),
        ("finished", "finetune", {"layer": "conv1"}, "layer must be 'all'"),
        ("finished", "clusters", {"params": {"source": "prototypes"}}, "only swav runs"),
        ("unlabelled", "probe", {}, "needs labels"),
        ("unlabelled", "knn", {}, "needs labels"),
    ],
)
def test_bad_requests_raise_and_write_nothing(
    which, kind, kwargs, message, finished_run, unlabelled_run, run_without_checkpoint
):
    run_id = {
        "missing": "nope",
        "empty": run_without_checkpoint,
        "finished": finished_run,
        "unlabelled": unlabelled_run,
    }[which]
    store = Store.default()
    rows_before = len(store.list_eval_results())
    eval_dir = run_artifact_dir(finished_run) / "eval"
    files_before = sorted(eval_dir.rglob("*")) if eval_dir.exists() else []
    with pytest.raises(ValueError, match=message):
        run_evaluation(store, run_id, kind, **kwargs)
    assert len(store.list_eval_results()) == rows_before
    assert (sorted(eval_dir.rglob("*")) if eval_dir.exists() else []) == files_before


def test_retrieval_and_clusters_need_no_labels(unlabelled_run):
    store = Store.default()
    (rid,) = run_evaluation(store, unlabelled_run, "retrieval")
    (cid,) = run_evaluation(store, unlabelled_run, "clusters")
    retrieval, clusters = _rows(store, unlabelled_run, [rid, cid])
    assert retrieval.metrics["n"] == 12 and "precision_at_10" not in retrieval.metrics
    assert clusters.metrics["k"] == 12  # default 100 clusters, at most one per image
    assert clusters.metrics["source"] == "kmeans"


def test_module_entry_point_reports_errors_with_exit_2(finished_run, capsys):
    assert main([finished_run, "probe", "--layer", "layer9"]) == 2
    err = capsys.readouterr().err
    assert "layer9" in err and "Traceback" not in err
    assert main([finished_run, "knn", "--params", '{"k": [5]}']) == 0
    ids = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ids"]
    (row,) = _rows(Store.default(), finished_run, ids)
    assert set(row.metrics) == {"knn_top1_k5", "n_train", "n_test", "patch_grid"}


def test_cli_prints_rows_as_json_and_as_a_table(finished_run):
    from typer.testing import CliRunner

    from sslengine.cli_eval import eval_app

    runner = CliRunner()
    result = runner.invoke(eval_app, ["knn", finished_run, "--json", "--param", "k=[10]"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1 and set(rows[0]["metrics"]) == {
        "knn_top1_k10",
        "n_train",
        "n_test",
        "patch_grid",
    }
    result = runner.invoke(eval_app, ["probe", finished_run, "--layer", "pooled", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    header, line = result.stdout.strip().splitlines()[-2:]
    assert header.split()[:3] == ["step", "layer", "top1"] and line.split()[1] == "pooled"
    bad = runner.invoke(eval_app, ["probe", finished_run, "--layer", "layer9"])
    assert bad.exit_code == 2 and "layer9" in bad.output


@pytest.mark.integration
def test_probe_through_the_queue(finished_run, celery_worker, queue_name):
    from tasks.evaluate import submit_evaluation

    store = Store.default()
    before = {r.id for r in store.list_eval_results(finished_run, "probe")}
    with pytest.raises(ValueError, match="layer9"):  # validated before anything is queued
        submit_evaluation(finished_run, "probe", layer="layer9", queue=queue_name)
    submit_evaluation(
        finished_run, "probe", layer="layer4,pooled", params={"epochs": 1}, queue=queue_name
    )
    deadline = time.monotonic() + 180
    new = []
    while time.monotonic() < deadline and len(new) < 2:
        new = [r for r in store.list_eval_results(finished_run, "probe") if r.id not in before]
        time.sleep(0.5)
    assert sorted(r.layer for r in new) == ["layer4", "pooled"]
    assert all(r.checkpoint_step == _final_step(store, finished_run) for r in new)


def test_knn_job_defaults_to_the_tap_the_runs_own_knn_read():
    from sslengine.config import parse_config
    from sslengine.eval.jobs import KnnParams, RetrievalParams, _resolve_layers

    cfg = parse_config({"eval": {"knn_tap": "layer2"}})
    assert _resolve_layers("knn", None, KnnParams(), cfg) == ("layer2",)
    assert _resolve_layers("knn", "layer3", KnnParams(), cfg) == ("layer3",)
    assert _resolve_layers("retrieval", None, RetrievalParams(), cfg) == ("pooled",)


def test_knn_job_refuses_a_patch_grid_too_fine_for_the_runs_images(finished_run):
    store = Store.default()
    before = len(store.list_eval_results(finished_run))
    too_fine = "this run's images: patch_grid 8 cuts 16 px images into 2 px"
    with pytest.raises(ValueError, match=too_fine):
        run_evaluation(store, finished_run, "knn", params={"patch_grid": 8})
    assert len(store.list_eval_results(finished_run)) == before
