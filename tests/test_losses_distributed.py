"""1 process with batch 2B vs 2 gloo processes with batch B each: same losses, same gradients.

One process group is spawned for the whole file; every loss runs inside it. Gradients are with
respect to a small linear layer's weight, averaged over ranks as DDP does (all-reduce / world),
and must equal the single-process gradients. Losses: mean over ranks == single-process loss.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslengine.distributed import gather_no_grad, is_dist, world_size
from sslengine.losses import barlow_twins, info_nce, nt_xent, pirl_nce, sinkhorn_knopp, swav_loss
from sslengine.models.memory_bank import MemoryBank

pytestmark = pytest.mark.distributed

WORLD = 2
B = 4  # local batch; the single process sees 2B
D_IN, D = 5, 6
DT = torch.float64


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=DT)

    n = WORLD * B
    return {
        "weight": r(D, D_IN),
        "x1": r(n, D_IN),
        "x2": r(n, D_IN),
        "x3": r(n, D_IN),
        "queue": F.normalize(r(11, D), dim=1),
        "prototypes": F.normalize(r(7, D), dim=1),
        "bank_negatives": F.normalize(r(9, D), dim=1),
        "bank_positives": F.normalize(r(n, D), dim=1),
        "indices": torch.tensor([3, 0, 7, 7, 1, 9, 3, 5]),  # duplicates across ranks
    }


def _compute(rows: slice) -> dict[str, torch.Tensor]:
    """Every loss on the given rows of the global batch: loss values and d loss / d weight."""
    data = _data()
    x1, x2, x3 = data["x1"][rows], data["x2"][rows], data["x3"][rows]
    out: dict[str, torch.Tensor] = {}

    def run(name, loss_fn):
        weight = data["weight"].clone().requires_grad_(True)
        loss = loss_fn(weight)
        (grad,) = torch.autograd.grad(loss, weight)
        out[f"{name}/loss"], out[f"{name}/grad"] = loss.detach(), grad

    run("nt_xent", lambda w: nt_xent(x1 @ w.T, x2 @ w.T, temperature=0.3))
    run("barlow_twins", lambda w: barlow_twins(x1 @ w.T, x2 @ w.T, lambd=0.05))
    run("info_nce", lambda w: info_nce(x1 @ w.T, x2 @ w.T, data["queue"], temperature=0.2))

    def scores(x, w):
        return F.normalize(x @ w.T, dim=1) @ data["prototypes"].T

    def swav(w):
        crops = [scores(x, w) for x in (x1, x2, x3)]  # 2 large crops + 1 small
        codes = [sinkhorn_knopp(c, epsilon=0.05, iterations=3) for c in crops[:2]]
        out["sinkhorn/codes"] = codes[0]
        return swav_loss(crops, codes, temperature=0.1)

    run("swav", swav)
    run(
        "pirl",
        lambda w: pirl_nce(
            x1 @ w.T,
            x2 @ w.T,
            data["bank_positives"][rows],
            data["bank_negatives"],
            temperature=0.2,
            dataset_size=100,
        ),
    )
    bank = MemoryBank(10, D, seed=1).double()
    bank.update(data["indices"][rows], x3 @ data["weight"].T)
    out["memory_bank/bank"] = bank.bank
    return out


def _worker(rank: int, port: int, result_path: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        assert is_dist() and world_size() == WORLD
        local = _compute(slice(rank * B, (rank + 1) * B))
        reduced = {}
        for key, value in local.items():
            if key.endswith("/loss") or key.endswith("/grad"):
                # What DDP does to gradients; for losses, the mean of the ranks' values.
                total = value.clone()
                dist.all_reduce(total)
                reduced[key] = total / WORLD
            elif key == "sinkhorn/codes":
                reduced[key] = gather_no_grad(value)
            else:  # the bank: must be identical on every rank
                reduced[key] = value
                reduced[key + "@rank1"] = value.clone()
                dist.broadcast(reduced[key + "@rank1"], src=1)
        if rank == 0:
            torch.save(reduced, result_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, dict]:
    path = Path(tmp_path_factory.mktemp("dist")) / "results.pt"
    mp.spawn(_worker, args=(_free_port(), str(path)), nprocs=WORLD, join=True)
    assert not is_dist()  # the parent never joined the group: the reference is 1 process
    single = _compute(slice(0, WORLD * B))
    return single, torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", ["nt_xent", "barlow_twins", "info_nce", "swav", "pirl"])
def test_loss_and_ddp_gradient_match_single_process(results, name):
    single, multi = results
    torch.testing.assert_close(multi[f"{name}/loss"], single[f"{name}/loss"], atol=1e-5, rtol=0)
    torch.testing.assert_close(multi[f"{name}/grad"], single[f"{name}/grad"], atol=1e-5, rtol=0)
    assert single[f"{name}/grad"].abs().max() > 1e-4  # the comparison is not between zeros


def test_sinkhorn_codes_match_single_process(results):
    single, multi = results
    torch.testing.assert_close(multi["sinkhorn/codes"], single["sinkhorn/codes"], atol=1e-5, rtol=0)
    # the global batch matters: codes of one half alone differ
    half = sinkhorn_knopp(
        F.normalize(_data()["x1"][:B] @ _data()["weight"].T, dim=1) @ _data()["prototypes"].T
    )
    assert not torch.allclose(half, single["sinkhorn/codes"][:B], atol=1e-3)


def test_memory_bank_identical_on_ranks_and_equal_to_single_process(results):
    single, multi = results
    assert torch.equal(multi["memory_bank/bank"], multi["memory_bank/bank@rank1"])
    torch.testing.assert_close(multi["memory_bank/bank"], single["memory_bank/bank"])
