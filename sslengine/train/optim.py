"""Optimisers and the learning-rate schedule shared by every method."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer

from sslengine.config import OptimConfig


class LARS(Optimizer):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks"), as SimCLR uses it.

    Per layer, the update is scaled by the trust ratio eta * ||w|| / ||g + wd * w||. Parameters in
    groups flagged `lars_exclude` (biases and BatchNorm weights, as in SimCLR/BYOL) get neither
    weight decay nor adaptation: plain SGD with momentum.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    # torch.where keeps this on the device: no host sync per parameter.
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["eta"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    g = g.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Biases and norm weights (ndim <= 1) get no weight decay and no LARS adaptation."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """SimCLR's linear scaling rule: lr = base_lr * batch / 256."""
    return cfg.lr * batch_size / 256 if cfg.lr_scaling == "linear" else cfg.lr


def build_optimizer(cfg: OptimConfig, module: nn.Module, batch_size: int) -> Optimizer:
    lr = scaled_lr(cfg, batch_size)
    groups = param_groups(module, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for g in groups:
        g.pop("lars_exclude", None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def lr_at(step: int, total_steps: int, base_lr: float, cfg: OptimConfig) -> float:
    """Linear warmup for `warmup_fraction` of the steps, then cosine decay (or constant)."""
    warmup = int(cfg.warmup_fraction * total_steps)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    final = base_lr * cfg.final_lr_fraction
    return final + (base_lr - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
