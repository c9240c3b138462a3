"""LARS against a hand-written update, and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from sslengine.config import OptimConfig
from sslengine.train.optim import LARS, lr_at, param_groups


def test_lars_matches_naive_update():
    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    module = torch.nn.Linear(3, 4).double()
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
    opt = LARS(param_groups(module, 1e-4), lr=0.5, momentum=0.9, weight_decay=1e-4, eta=0.001)
    w_ref, b_ref = w.detach().clone(), b.detach().clone()
    bw, bb = torch.zeros_like(w_ref), torch.zeros_like(b_ref)
    for _ in range(3):
        x = torch.randn(8, 3, dtype=torch.float64)
        loss = module(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        gw = module.weight.grad.clone()
        gb = module.bias.grad.clone()
        opt.step()
        # naive reference: weights get wd + trust ratio, biases plain momentum SGD
        g = gw + 1e-4 * w_ref
        trust = 0.001 * w_ref.norm() / g.norm()
        bw = 0.9 * bw + trust * g
        w_ref = w_ref - 0.5 * bw
        bb = 0.9 * bb + gb
        b_ref = b_ref - 0.5 * bb
        assert torch.allclose(module.weight, w_ref, atol=1e-12)
        assert torch.allclose(module.bias, b_ref, atol=1e-12)


def test_schedule_warmup_then_cosine():
    cfg = OptimConfig(warmup_fraction=0.1, schedule="cosine", final_lr_fraction=0.0)
    total, base = 100, 1.0
    assert lr_at(0, total, base, cfg) == pytest.approx(0.1)
    assert lr_at(9, total, base, cfg) == pytest.approx(1.0)
    mid = 10 + 45
    assert lr_at(mid, total, base, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, total, base, cfg) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, total, base, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
