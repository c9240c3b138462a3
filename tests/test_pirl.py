"""PIRL's NCE normalisation constant and that the method's loss trains.

With the paper's ``Z = 1`` the NCE's negative terms swamp the positive one and the loss rises
(BENCHMARKS.md, "Methods on CIFAR-10 (CPU)"); ``loss: nce`` now estimates Z once as Wu et al.
2018 / VISSL do, ``loss: infonce`` (the default) needs none.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslengine.config import parse_config
from sslengine.losses import pirl_nce
from sslengine.losses.pirl import nce_log_normaliser
from sslengine.methods import build_method
from sslengine.train.loop import pretrain
from test_train_loop import Recorder

DT = torch.float64


def naive_log_z(v, m_neg, temperature, dataset_size):
    """log(|D| * mean over (image, negative) pairs of exp(cos / tau)), one pair at a time."""
    total, count = 0.0, 0
    for i in range(v.shape[0]):
        negatives = m_neg[i] if m_neg.dim() == 3 else m_neg
        for m in negatives:
            cos = float(torch.dot(v[i], m) / (v[i].norm() * m.norm()))
            total += math.exp(cos / temperature)
            count += 1
    return math.log(dataset_size * total / count)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nce_log_normaliser_matches_naive(shared, temperature):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 6, generator=g, dtype=DT) * 3  # not unit: normalised inside
    m_neg = torch.randn(*((7, 6) if shared else (5, 7, 6)), generator=g, dtype=DT)
    got = nce_log_normaliser(v, m_neg, temperature, dataset_size=300)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(naive_log_z(v, m_neg, temperature, 300), rel=1e-6)


def test_nce_log_normaliser_is_finite_at_tiny_temperature():
    # exp(1 / 0.005) = e^200 overflows float32 and float64 alike; the log-space estimate does not.
    v = torch.tensor([[1.0, 0.0]])
    m_neg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = nce_log_normaliser(v, m_neg, 0.005, dataset_size=10)
    # log(10 * (e^200 + e^0) / 2) = 200 + log 5 (+ e^-200)
    assert got.item() == pytest.approx(200 + math.log(5), rel=1e-6)


def _normaliser_data():
    g = torch.Generator().manual_seed(2)
    # ranks' features deliberately different in scale of similarity (rank 1's near the bank)
    m_neg = F.normalize(torch.randn(9, 6, generator=g, dtype=DT), dim=1)
    v = torch.cat([torch.randn(4, 6, generator=g, dtype=DT), m_neg[:4] + 0.1])
    return v, m_neg


def _normaliser_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        v, m_neg = _normaliser_data()
        local = nce_log_normaliser(v[rank * 4 : (rank + 1) * 4], m_neg, 0.07, dataset_size=300)
        both = [torch.empty_like(local) for _ in range(2)]
        dist.all_gather(both, local)
        if rank == 0:
            torch.save(torch.stack(both), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_nce_log_normaliser_two_processes_equal_one(tmp_path):
    """Each rank scores its half of the batch; the all-reduced Z is the whole batch's Z."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "z.pt"
    mp.spawn(_normaliser_worker, args=(port, str(out)), nprocs=2, join=True)
    ranks = torch.load(Path(out), weights_only=True)
    v, m_neg = _normaliser_data()
    single = nce_log_normaliser(v, m_neg, 0.07, dataset_size=300)
    assert torch.equal(ranks[0], ranks[1])  # every rank holds the same Z
    assert ranks[0].item() == pytest.approx(single.item(), rel=1e-6)
    half = nce_log_normaliser(v[:4], m_neg, 0.07, dataset_size=300)
    assert abs(half.item() - single.item()) > 0.1  # the halves really differ


def test_estimated_z_balances_the_nce_terms():
    """With Z = 1 the negatives' gradient dwarfs the positive's; with the estimate it does not."""
    g = torch.Generator().manual_seed(1)
    # features as alike as a random-init trunk's: a shared direction plus a little noise
    base = torch.randn(1, 32, generator=g, dtype=DT)
    f = (base + 0.3 * torch.randn(16, 32, generator=g, dtype=DT)).requires_grad_(True)
    m_pos = F.normalize(base + 0.3 * torch.randn(16, 32, generator=g, dtype=DT), dim=1)
    m_neg = F.normalize(base + 0.3 * torch.randn(64, 32, generator=g, dtype=DT), dim=1)
    log_z = nce_log_normaliser(f, m_neg, 0.07, dataset_size=1000).double()

    def grad_norms(log_norm_constant):
        # positive part alone: a bank of negatives far away contributes ~nothing
        far = -m_neg
        pos_only = pirl_nce(
            f, f, m_pos, far, dataset_size=1000, log_norm_constant=log_norm_constant
        )
        both = pirl_nce(f, f, m_pos, m_neg, dataset_size=1000, log_norm_constant=log_norm_constant)
        (g_pos,) = torch.autograd.grad(pos_only, f)
        (g_all,) = torch.autograd.grad(both, f)
        return g_pos.norm().item(), (g_all - g_pos).norm().item()

    pos1, neg1 = grad_norms(0.0)
    pos_z, neg_z = grad_norms(log_z)
    assert neg1 > 1e3 * pos1  # Z = 1: the negative terms swamp the positive one
    assert 0.05 < neg_z / pos_z < 20  # estimated Z: comparable


def _pirl_cfg(loss: str = "infonce", **train):
    return parse_config(
        {
            "method": "pirl",
            "seed": 0,
            "dataset": {"name": "digits", "image_size": 32, "max_per_class": 10},
            "backbone": {"name": "small_resnet"},
            "optim": {"name": "adamw", "lr": 2e-3, "lr_scaling": "none", "weight_decay": 1e-4},
            "train": {"batch_size": 20, "log_every": 1, "collapse_every": 1000, **train},
            "eval": {"knn": False},
            "pirl": {"n_negatives": 64, "proj_dim": 32, "loss": loss},
        }
    )


def test_z_is_estimated_once_kept_in_the_state_and_restored():
    cfg = _pirl_cfg("nce")
    torch.manual_seed(0)
    method = build_method(cfg, 50, (0.5,) * 3, (0.25,) * 3).train()
    assert not method.norm_constant_estimated
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    views = method.make_views(images, torch.Generator().manual_seed(0))
    method(views, torch.arange(4))
    first = method.log_norm_constant.clone()
    assert method.norm_constant_estimated and torch.isfinite(first)
    # about log(|D|): exp(s/tau) averages O(1)-O(1e3) for unit vectors at tau 0.07
    assert math.log(50) - 1 < first.item() < math.log(50) + 15
    method(method.make_views(images, torch.Generator().manual_seed(1)), torch.arange(4, 8))
    assert torch.equal(method.log_norm_constant, first)  # estimated once, then fixed

    state = method.state_dict()
    assert torch.equal(state["log_norm_constant"], first)
    torch.manual_seed(1)
    other = build_method(cfg, 50, (0.5,) * 3, (0.25,) * 3)
    other.load_state_dict(state)
    assert torch.equal(other.log_norm_constant, first) and other.norm_constant_estimated
    # a checkpoint from before the constant existed still loads; Z is estimated again
    del state["log_norm_constant"], state["norm_constant_estimated"]
    other.load_state_dict(state)
    assert not other.norm_constant_estimated


@pytest.mark.parametrize("loss", ["infonce", "nce"])
def test_eval_forward_does_not_store_z(loss):
    cfg = _pirl_cfg(loss)
    torch.manual_seed(0)
    method = build_method(cfg, 50, (0.5,) * 3, (0.25,) * 3).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = method(method.make_views(images, torch.Generator().manual_seed(0)), torch.arange(4))
    assert torch.isfinite(out.loss)
    assert not method.norm_constant_estimated and method.log_norm_constant.item() == 0.0


def test_pirl_loss_decreases_on_a_tiny_dataset(tmp_path, ssl_home):
    """The preset's loss (InfoNCE) trains: 100 digits, 5 steps an epoch, 25 steps.

    The first epoch scores against the random initial bank (the loss rises while the bank fills
    with features), so the comparison is between epoch 2 (bank filled once) and the last epoch.
    """
    rec = Recorder()
    pretrain(_pirl_cfg("infonce", epochs=5), tmp_path, reporter=rec)
    losses = [rec.rows[s]["loss"] for s in sorted(rec.rows) if "loss" in rec.rows[s]]
    assert len(losses) == 25 and all(math.isfinite(x) for x in losses)
    epoch2, last = sum(losses[5:10]) / 5, sum(losses[-5:]) / 5
    assert last < epoch2 - 1.0, losses  # measured: 6.6 -> 4.3
