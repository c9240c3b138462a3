"""Feature extraction and kNN split over 2 gloo processes == 1 process, in dataset order.

Each rank extracts its shard (strided, no padding duplicates, or a shuffled and padded
``DistributedSampler``'s), the rows are all-gathered with their dataset indices and put back in
dataset order. The dataset sizes are odd, so the shards differ in size and the gather pads; one
case has fewer images than ranks (a rank with nothing to extract). The reference runs in the
parent, in a process that never joins a group, while the ranks work; both sides use one thread.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from sslengine.config import parse_config
from sslengine.data.datasets import ImageArrayDataset
from sslengine.distributed import is_dist
from sslengine.eval.features import (
    extract_features,
    extract_features_distributed,
    gather_by_index,
    shard_indices,
)
from sslengine.eval.knn import knn_classify
from sslengine.eval.runner import knn_eval
from sslengine.models.backbones import build_backbone

WORLD = 2
N_TRAIN, N_TEST = 13, 7  # odd: the shards are 7 + 6 and 4 + 3 rows
SIDE = 16
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
TAPS = ("layer2", "pooled")
BATCH = 4  # batch boundaries differ between 1 process and the shards
CLASSES = ["a", "b", "c"]
ATOL = 1e-6


def make_split(n: int, seed: int) -> ImageArrayDataset:
    """Noisy images whose mean colour depends on the class: the kNN finds some, not all."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n).astype(np.int64)
    base = np.array([[171, 75, 75], [75, 171, 75], [75, 75, 171]], dtype=np.float64)[labels]
    noise = rng.normal(0, 60, (n, SIDE, SIDE, 3))
    images = np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return ImageArrayDataset(images=images, labels=labels, classes=list(CLASSES))


def make_backbone(state: dict[str, torch.Tensor] | None = None):
    torch.manual_seed(0)
    backbone = build_backbone("small_resnet", cifar_stem=True)
    if state is not None:
        backbone.load_state_dict(state)
    return backbone


def knn_cfg(tap: str = "pooled", grid: int = 1):
    return parse_config(
        {
            "seed": 0,
            "eval": {
                "knn_k": [1, 3, 20],
                "knn_temperature": 0.1,
                "knn_tap": tap,
                "knn_patch_grid": grid,
            },
        }
    )


def compute(backbone, train: ImageArrayDataset, test: ImageArrayDataset) -> dict[str, Any]:
    """Everything compared; in a group the distributed paths run, else the reference."""
    out: dict[str, Any] = {}
    if is_dist():
        feats = extract_features_distributed(
            backbone, train.images, MEAN, STD, TAPS, batch_size=BATCH, labels=train.labels
        )
        out["shard_sizes"] = [len(shard_indices(N_TRAIN, r, WORLD)) for r in range(WORLD)]
        # a shuffled, padded DistributedSampler's indices: 14 rows, one image twice
        sampler = DistributedSampler(
            range(N_TRAIN), num_replicas=WORLD, rank=dist.get_rank(), shuffle=True, seed=3
        )
        mine = np.array(list(sampler), dtype=np.int64)
        out["sampler_order"] = mine
        padded = extract_features_distributed(
            backbone,
            train.images,
            MEAN,
            STD,
            TAPS,
            batch_size=BATCH,
            labels=train.labels,
            indices=mine,
        )
        out["padded"] = {k: torch.from_numpy(v) for k, v in padded.items()}
        # fewer images than ranks: rank 1 has an empty shard and only joins the gather
        tiny = extract_features_distributed(backbone, train.images[:1], MEAN, STD, TAPS)
    else:
        feats = extract_features(backbone, train.images, MEAN, STD, TAPS, batch_size=BATCH)
        feats["labels"] = train.labels.copy()
        tiny = extract_features(backbone, train.images[:1], MEAN, STD, TAPS)
    out["features"] = {k: torch.from_numpy(v) for k, v in feats.items()}
    out["tiny"] = {k: torch.from_numpy(v) for k, v in tiny.items()}
    out["knn"] = knn_eval(backbone, train, test, knn_cfg(), MEAN, STD, torch.device("cpu"))
    out["knn_layer2"] = knn_eval(
        backbone, train, test, knn_cfg("layer2"), MEAN, STD, torch.device("cpu")
    )
    out["knn_grid"] = knn_eval(
        backbone, train, test, knn_cfg("layer1", grid=2), MEAN, STD, torch.device("cpu")
    )
    return out


def _worker(rank: int, port: int, inputs_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    try:
        state = torch.load(inputs_path, weights_only=True)
        backbone = make_backbone(state)
        result = compute(backbone, make_split(N_TRAIN, 1), make_split(N_TEST, 2))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, dict, dict]:
    """(1-process reference, rank 0's results, rank 1's results)."""
    work = Path(tmp_path_factory.mktemp("features_dist"))
    backbone = make_backbone()
    inputs_path = work / "backbone.pt"
    torch.save(backbone.state_dict(), inputs_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = mp.start_processes(
            _worker,
            args=(_free_port(), str(inputs_path), str(work)),
            nprocs=WORLD,
            join=False,
            start_method="spawn",
        )
        try:
            assert not is_dist()
            single = compute(backbone, make_split(N_TRAIN, 1), make_split(N_TEST, 2))
        finally:
            while not ctx.join():
                pass
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks[0], ranks[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_extraction_equals_one_process_in_dataset_order(results):
    single, rank0, rank1 = results
    assert rank0["shard_sizes"] == [7, 6]  # uneven shards: the gather had to pad
    for multi in (rank0, rank1):  # every rank gets the whole matrix
        for key in ("features", "padded"):
            got = multi[key]
            assert set(got) == set(TAPS) | {"labels"}
            assert torch.equal(got["labels"], single["features"]["labels"])
            for tap in TAPS:
                assert (
                    got[tap].shape == single["features"][tap].shape == (N_TRAIN, got[tap].shape[1])
                )
                torch.testing.assert_close(
                    got[tap], single["features"][tap], atol=ATOL, rtol=0, msg=f"{key} {tap}"
                )
        for tap in TAPS:
            torch.testing.assert_close(multi["tiny"][tap], single["tiny"][tap], atol=ATOL, rtol=0)
    # the padded sampler really shuffled and really duplicated an image across the ranks
    order = np.concatenate([rank0["sampler_order"], rank1["sampler_order"]])
    assert len(order) == N_TRAIN + 1 and len(set(order.tolist())) == N_TRAIN
    assert not np.array_equal(np.sort(rank0["sampler_order"]), rank0["sampler_order"])
    # not a comparison of zeros / constant rows
    pooled = single["features"]["pooled"]
    assert float(pooled.abs().max()) > 1e-2 and float((pooled[0] - pooled[1]).abs().max()) > 1e-4


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_knn_equals_one_process(results):
    single, rank0, rank1 = results
    assert set(single["knn"]) == {"knn_top1_k1", "knn_top1_k3", "knn_top1_k20"}
    assert rank0["knn"] == single["knn"]
    assert rank1["knn"] == single["knn"]
    # eval.knn_tap: the same on another tap
    assert rank0["knn_layer2"] == single["knn_layer2"] == rank1["knn_layer2"]
    # eval.knn_patch_grid: every rank cuts its shard into the same cells
    assert rank0["knn_grid"] == single["knn_grid"] == rank1["knn_grid"]
    # neither all right nor all wrong: a misplaced row or label would change the numbers
    assert all(0.0 < acc < 1.0 for acc in single["knn"].values()), single["knn"]


# ---- the helpers without a process group


def test_shards_are_disjoint_cover_everything_and_differ_by_at_most_one():
    for n in (0, 1, 2, 7, 13):
        for world in (1, 2, 3):
            shards = [shard_indices(n, r, world) for r in range(world)]
            joined = np.concatenate(shards)
            assert np.array_equal(np.sort(joined), np.arange(n))
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_indices(5, 2, 2)


def test_gather_by_index_without_a_group_orders_rows_and_drops_duplicates():
    rows = np.array([[3.0], [1.0], [0.0], [2.0], [1.5]])
    idx = np.array([3, 1, 0, 2, 1])  # index 1 twice: the first occurrence wins
    out = gather_by_index({"x": rows, "y": idx * 10}, idx, 4)
    assert out["x"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out["y"].tolist() == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="computed by no rank"):
        gather_by_index({"x": rows[:2]}, idx[:2], 4)
    with pytest.raises(ValueError, match="rows for"):
        gather_by_index({"x": rows}, idx[:2], 4)


def test_extract_features_of_given_indices_are_those_rows():
    backbone = make_backbone()
    images = make_split(9, 0).images
    full = extract_features(backbone, images, MEAN, STD, TAPS, batch_size=BATCH)
    idx = np.array([8, 0, 5, 5, 2])
    part = extract_features(backbone, images, MEAN, STD, TAPS, batch_size=2, indices=idx)
    for tap in TAPS:
        np.testing.assert_allclose(part[tap], full[tap][idx], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="indices"):
        extract_features(backbone, images, MEAN, STD, indices=[9])
    with pytest.raises(ValueError, match="no images"):
        extract_features(backbone, images, MEAN, STD, indices=[])


def test_knn_eval_reads_the_configured_tap():
    """eval.knn_tap picks the features: equal to knn_classify on that tap's pooled features,
    and a different number from the pooled output's on these images."""
    train, test = make_split(N_TRAIN, 1), make_split(N_TEST, 2)
    backbone = make_backbone()
    got = knn_eval(backbone, train, test, knn_cfg("layer2"), MEAN, STD, torch.device("cpu"))
    f_train = extract_features(backbone, train.images, MEAN, STD, ("layer2",))["layer2"]
    f_test = extract_features(backbone, test.images, MEAN, STD, ("layer2",))["layer2"]
    want = knn_classify(
        torch.from_numpy(f_train),
        torch.from_numpy(train.labels),
        torch.from_numpy(f_test),
        torch.from_numpy(test.labels),
        ks=(1, 3, 20),
        temperature=0.1,
        num_classes=len(CLASSES),
    )
    assert got == want
