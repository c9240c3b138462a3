"""The one training loop every method runs in (a method never owns the loop).

Conventions that make runs reproducible and world-size independent:
- The sampler draws one permutation of the dataset per epoch from (seed, epoch) and cuts it into
  global batches of `train.batch_size` (drop_last); rank r takes the r-th contiguous slice. So the
  global batch at a step is the same for 1 or N processes, and a checkpoint resumes in any world
  size at exactly the next step (the sampler position is the step itself).
- Augmentation randomness comes from a generator seeded by (seed, step, rank): a resumed run
  draws the same views it would have drawn.
- No host-device sync in the hot loop: losses and probe accuracy are summed on the device and
  read back every `log_every` steps (one all-reduce per flush when distributed).
- Gradient accumulation (`train.accumulate_grad_batches` = A) cuts each rank's share of the
  global batch into A micro-batches, backpropagates loss / A for each (DDP syncs only on the
  last) and steps once; the logged metrics are the means over the micro-batches. Given the same
  views, a per-sample-mean loss on a model without batch coupling gets exactly the update of
  one step on the whole batch (tests/test_train_options.py). It is not a larger batch in
  general: each micro-batch draws its own views from the step's generator (different draws,
  same distribution), and contrastive negatives and BN statistics are per micro-batch.
- The online probe (`train.online_probe`) and the end-of-run kNN are the only places labels
  are used. In a distributed run every rank takes part in the kNN (features extracted shard by
  shard and gathered back in dataset order); rank 0 reports.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sslengine.config import ExperimentConfig
from sslengine.data.datasets import ImageArrayDataset
from sslengine.methods import Method, StepOutput, build_method
from sslengine.models.sync_bn import convert_sync_bn
from sslengine.train.checkpoint import load_checkpoint, save_checkpoint
from sslengine.train.data import dataset_mean_std, load_splits
from sslengine.train.optim import build_optimizer, lr_at, scaled_lr, set_lr
from sslengine.train.reporter import NullReporter, Reporter

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised out of the loop when the run's cancel flag was seen (after a checkpoint)."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistContext:
    """Join the process group torchrun (or the test harness) described in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


class Trainee(nn.Module):
    """The method plus an online linear probe on detached features (solo-learn style).

    The probe sees `features.detach()`, so it never changes the representation; it only makes
    accuracy visible while the run is going.
    """

    def __init__(self, method: Method, num_classes: int, online_probe: bool = True):
        super().__init__()
        self.method = method
        self.probe = (
            nn.Linear(method.backbone.out_dim, num_classes)
            if online_probe and num_classes > 1
            else None
        )

    def forward(self, views: list[Tensor], indices: Tensor, labels: Tensor) -> StepOutput:
        out = self.method(views, indices)
        if self.probe is not None and out.features is not None:
            logits = self.probe(out.features.detach().float())
            probe_loss = F.cross_entropy(logits, labels)
            out.metrics["online_probe_loss"] = probe_loss.detach()
            out.metrics["online_probe_acc"] = (logits.argmax(1) == labels).float().mean()
            out.loss = out.loss + probe_loss
        return out


def _autocast(cfg: ExperimentConfig, device: torch.device):
    use_bf16 = cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and device.type == "cuda"
    )
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _epoch_permutation(seed: int, epoch: int, n: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def _batch_to_device(images: np.ndarray, idx: np.ndarray, device: torch.device) -> Tensor:
    """uint8 NHWC rows of the cached array -> uint8 NCHW on the device (pinned, non-blocking)."""
    x = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2).contiguous()
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x


def plan_steps(cfg: ExperimentConfig, n_images: int) -> tuple[int, int]:
    """(steps per epoch, total steps), refusing a dataset smaller than one global batch."""
    steps_per_epoch = n_images // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training split has {n_images} images, fewer than train.batch_size "
            f"{cfg.train.batch_size}; lower the batch size or use more images"
        )
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    return steps_per_epoch, total


def pretrain(
    cfg: ExperimentConfig,
    checkpoint_dir: Path,
    reporter: Reporter | None = None,
    ctx: DistContext | None = None,
    resume_from: Path | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
) -> dict[str, Any]:
    """Pretrain `cfg.method`, checkpointing into `checkpoint_dir`; returns the final metrics.

    Raises `Cancelled` (after writing a checkpoint) when the reporter says the run should stop.
    """
    ctx = ctx or DistContext()
    reporter = reporter if (reporter is not None and ctx.is_main) else NullReporter()
    torch.manual_seed(cfg.seed)
    train, test = load_splits(cfg)
    mean, std = dataset_mean_std(train)
    num_classes = len(train.classes) if (train.labels >= 0).all() else 0
    steps_per_epoch, total_steps = plan_steps(cfg, len(train))
    world, rank = ctx.world_size, ctx.rank
    global_batch = cfg.train.batch_size
    local_batch = global_batch // world
    accum = cfg.train.accumulate_grad_batches
    if local_batch % accum:
        raise ValueError(
            f"per-device batch {local_batch} is not divisible by "
            f"train.accumulate_grad_batches {accum}"
        )
    micro = local_batch // accum

    method = build_method(cfg, dataset_size=len(train), mean=mean, std=std)
    trainee = Trainee(method, num_classes, cfg.train.online_probe).to(ctx.device)
    if world > 1 and method.uses_sync_bn():
        # before the optimiser is built: conversion creates new parameter objects
        convert_sync_bn(trainee, ctx.device)
    if ctx.device.type == "cuda" and cfg.train.channels_last:
        trainee = trainee.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, method, global_batch)
    probe_opt = (
        torch.optim.SGD(trainee.probe.parameters(), lr=0.1, momentum=0.9)
        if trainee.probe is not None
        else None
    )
    base_lr = scaled_lr(cfg.optim, global_batch)

    start_step = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        had_probe = _load_trainee_state(trainee, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if probe_opt is not None and had_probe and state.get("probe_optimizer"):
            probe_opt.load_state_dict(state["probe_optimizer"])
        torch.set_rng_state(state["rng_torch"])
        start_step = int(state["step"])
        log.info("resumed from %s at step %d", resume_from, start_step)

    model: nn.Module = trainee
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    if cfg.train.compile:
        model = torch.compile(model)

    def save(step: int) -> Path:
        path = save_checkpoint(
            {
                "format": 1,
                "step": step,
                "model": trainee.state_dict(),
                "optimizer": optimizer.state_dict(),
                "probe_optimizer": probe_opt.state_dict() if probe_opt else {},
                "rng_torch": torch.get_rng_state(),
                "config": cfg.model_dump_json(),
                "mean": list(mean),
                "std": list(std),
                "world_size": world,
            },
            checkpoint_dir,
            step,
        )
        reporter.checkpoint(step, str(path))
        if on_checkpoint:
            on_checkpoint(step, path)
        return path

    labels_all = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    sums: dict[str, Tensor] = {}
    n_summed = 0
    window_start, window_steps = time.perf_counter(), 0
    run_start, run_start_step = time.perf_counter(), start_step
    perm, perm_epoch = None, -1
    last: dict[str, float] = {}
    model.train()
    reporter.progress(start_step, total_steps, None)

    for step in range(start_step, total_steps):
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = _epoch_permutation(cfg.seed, epoch, len(train)), epoch
        lo = pos * global_batch + rank * local_batch
        idx = perm[lo : lo + local_batch]
        lr = lr_at(step, total_steps, base_lr, cfg.optim)
        set_lr(optimizer, lr)
        gen = _step_generator(cfg.seed, step, rank)
        step_metrics: dict[str, Tensor] = {}
        for m in range(accum):
            mi = idx[m * micro : (m + 1) * micro]
            images = _batch_to_device(train.images, mi.numpy(), ctx.device)
            labels = labels_all[mi].to(ctx.device, non_blocking=True)
            views = method.make_views(images, gen)
            if ctx.device.type == "cuda" and cfg.train.channels_last:
                views = [
                    v.contiguous(memory_format=torch.channels_last)
                    if v.is_floating_point() and v.dim() == 4
                    else v
                    for v in views
                ]
            sync_ctx = model.no_sync() if (world > 1 and m < accum - 1) else nullcontext()
            with sync_ctx, _autocast(cfg, ctx.device):
                out = model(views, mi.to(ctx.device), labels)
            with sync_ctx:
                (out.loss / accum).backward()
            # the step's metrics are the means over its micro-batches (equal sizes)
            probe_loss = out.metrics.get("online_probe_loss")
            ssl_loss = out.loss.detach() - (probe_loss if probe_loss is not None else 0.0)
            for k, v in {"loss": ssl_loss, **out.metrics}.items():
                v = v.detach().float() / accum
                step_metrics[k] = step_metrics[k] + v if k in step_metrics else v
        method.on_before_optimizer_step(step)
        optimizer.step()
        if probe_opt is not None:
            probe_opt.step()
        optimizer.zero_grad(set_to_none=True)
        if probe_opt is not None:
            probe_opt.zero_grad(set_to_none=True)
        method.on_after_optimizer_step(step)

        for k, v in step_metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        n_summed += 1
        window_steps += 1
        done = step + 1

        collapse: dict[str, float] = {}
        if out.embeddings is not None and (done % cfg.train.collapse_every == 0 or done == 1):
            from sslengine.eval.collapse import collapse_metrics

            collapse = collapse_metrics(*out.embeddings)

        if done % cfg.train.log_every == 0 or done == total_steps or collapse:
            metrics = _reduce_means(sums, n_summed, world) if sums else {}
            sums, n_summed = {}, 0
            elapsed = time.perf_counter() - window_start
            metrics["throughput"] = window_steps * global_batch / max(elapsed, 1e-9)
            metrics["lr"] = lr
            metrics["epoch"] = done / steps_per_epoch
            metrics.update(collapse)
            window_start, window_steps = time.perf_counter(), 0
            if not all(math.isfinite(v) for k, v in metrics.items() if k == "loss"):
                raise FloatingPointError(f"loss became {metrics['loss']} at step {done}")
            reporter.log(done, metrics)
            last.update(metrics)
            rate = (done - run_start_step) / max(time.perf_counter() - run_start, 1e-9)
            reporter.progress(done, total_steps, (total_steps - done) / max(rate, 1e-9))
            if _broadcast_flag(reporter.should_stop() if ctx.is_main else False, world, ctx):
                if ctx.is_main:
                    save(done)
                raise Cancelled(f"cancelled at step {done}")

        if done % cfg.train.checkpoint_every == 0 and done != total_steps and ctx.is_main:
            save(done)

    if ctx.is_main and start_step < total_steps:
        save(total_steps)
    elif ctx.is_main and start_step >= total_steps:
        log.info("nothing to train: checkpoint is already at step %d", start_step)

    if cfg.eval.knn and num_classes > 1:
        from sslengine.eval.runner import knn_eval

        # every rank (the same condition everywhere): with world > 1 knn_eval splits the
        # feature extraction and the test points over the ranks; all get the same result
        knn = knn_eval(method.backbone, train, test, cfg, mean, std, ctx.device)
        if ctx.is_main:
            reporter.log(total_steps, knn)
            reporter.eval_result("knn", knn, layer=cfg.eval.knn_tap, step=total_steps)
        last.update(knn)
    if world > 1:
        dist.barrier()
    last["step"] = total_steps
    return last


def _load_trainee_state(trainee: Trainee, state: dict[str, Tensor]) -> bool:
    """Load a checkpoint's model state; True if it held online-probe weights.

    Strict for the method; the probe may differ because `train.online_probe` changed between
    the run that saved the checkpoint and this one: a probe the checkpoint lacks starts fresh,
    one this run does not want is dropped.
    """
    probe_keys = {k for k in state if k.startswith("probe.")}
    if trainee.probe is None:
        trainee.load_state_dict({k: v for k, v in state.items() if k not in probe_keys})
        return bool(probe_keys)
    if not probe_keys:
        result = trainee.load_state_dict(state, strict=False)
        wrong = list(result.unexpected_keys) + [
            k for k in result.missing_keys if not k.startswith("probe.")
        ]
        if wrong:
            raise RuntimeError(f"checkpoint does not match the model: {wrong}")
        return False
    trainee.load_state_dict(state)
    return True


def _reduce_means(sums: dict[str, Tensor], n: int, world: int) -> dict[str, float]:
    keys = sorted(sums)
    stacked = torch.stack([torch.as_tensor(sums[k]).float().reshape(()) for k in keys]) / n
    if world > 1:
        stacked = stacked.cpu() if dist.get_backend() == "gloo" else stacked
        dist.all_reduce(stacked)
        stacked /= world
    return dict(zip(keys, stacked.tolist(), strict=True))


def _broadcast_flag(flag: bool, world: int, ctx: DistContext) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


__all__ = [
    "Cancelled",
    "DistContext",
    "ImageArrayDataset",
    "init_distributed",
    "plan_steps",
    "pretrain",
]
