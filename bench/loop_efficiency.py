"""Loop efficiency: a full SimCLR step through the product's loop vs the bare backbone.

    .venv/bin/python bench/loop_efficiency.py [--rounds 7] [--log-every 4] [--windows 2]
                                              [--threads 2] [--profile] [--no-compiled]

Contender A is `sslengine.train.loop.pretrain` itself (SimCLR, small_resnet, CIFAR-10 at 32 px,
batch 256): indexing the uint8 memory-mapped cache, two batched augmented views, backbone,
projector, NT-Xent, the online probe, LARS, metric bookkeeping. Its images/s is the loop's own
`throughput` metric, read from a recording reporter, over the windows after the first step
(the first window holds one-off allocation and the step-1 collapse metrics).

Contender B is the bare backbone: forward + backward of the same small_resnet on a ready float
tensor of the same shape (2 x 256, 3, 32, 32) plus the same LARS step, nothing else.

The contenders alternate (order rotated) for `--rounds` rounds; the ratio A/B is printed per
round and as the median. The target is >= 0.85: the loop should cost at most ~15% on top of
the network's own work. A per-phase breakdown of a faithful copy of the loop body (same
functions, same order) shows where the remainder goes; `--profile` adds torch.profiler's top
operators of one step.

Contender C (unless `--no-compiled`) is the same `pretrain` with the product option
`train.compile_augment: true` (`torch.compile` of the batched augmentation). The augmentation
is ~100 small elementwise ops per view; inductor fuses them into a few C++ loops. Its compile
time (once per process, in a warm-up run) is left out of the timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CIFAR_TGZ,
    DEFAULT_CACHE,
    cifar_train,
    load_average,
    machine_report,
    median,
    scratch_home,
    spread,
)

BATCH = 256
TARGET = 0.85


class Recorder:
    """A reporter that keeps the logged metrics in memory (the loop's throughput among them)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.setdefault(step, {}).update(metrics)

    def progress(self, step, total_steps, eta_s) -> None:
        pass

    def checkpoint(self, step, path) -> None:
        pass

    def eval_result(self, kind, metrics, layer=None, step=None, artifact_path=None) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        pass


def simclr_config(max_per_class: int, log_every: int, windows: int):
    """The product's SimCLR defaults on CIFAR-10; only length, logging and kNN are changed."""
    from sslengine.config import parse_config

    return parse_config(
        {
            "method": "simclr",
            "dataset": {
                "name": "cifar10",
                "root": str(CIFAR_TGZ),
                "image_size": 32,
                "max_per_class": max_per_class,
            },
            "backbone": {"name": "small_resnet", "cifar_stem": True},
            "train": {
                "batch_size": BATCH,
                "epochs": 10_000,
                "max_steps": 1 + windows * log_every,
                "log_every": log_every,
                "checkpoint_every": 10**9,  # only the final checkpoint, after the timed steps
            },
            "eval": {"knn": False},
        }
    )


def with_compiled_augment(cfg):
    """The same config with the product option `train.compile_augment` on."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile_augment": True})})


def loop_images_per_s(cfg, workdir: Path) -> float:
    """Images/s of `pretrain` over its full logging windows after step 1."""
    from sslengine.train.loop import pretrain

    rec = Recorder()
    pretrain(cfg, workdir, reporter=rec)
    steps = sorted(s for s, m in rec.rows.items() if "throughput" in m)
    images, seconds = 0.0, 0.0
    for prev, cur in zip(steps, steps[1:], strict=False):
        n = (cur - prev) * BATCH
        images += n
        seconds += n / rec.rows[cur]["throughput"]
    return images / seconds


class BareBackbone:
    """small_resnet forward + backward + LARS on a fixed float batch: the network's own cost."""

    def __init__(self, cfg) -> None:
        from sslengine.models.backbones import build_backbone
        from sslengine.train.optim import build_optimizer

        torch.manual_seed(0)
        self.backbone = build_backbone("small_resnet", cifar_stem=True).train()
        self.opt = build_optimizer(cfg.optim, self.backbone, BATCH)
        self.x = torch.randn(2 * BATCH, 3, 32, 32)

    def step(self) -> None:
        out = self.backbone(self.x)
        out.sum().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def images_per_s(self, steps: int) -> float:
        self.step()  # warm-up: allocator and oneDNN primitive caches
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * BATCH / (time.perf_counter() - t0)


def phase_breakdown(cfg, steps: int, profile: bool) -> dict[str, float]:
    """Milliseconds per step of each phase of the loop body, replicated with the loop's own
    functions in the loop's order (see `sslengine.train.loop.pretrain`)."""
    from sslengine.eval.collapse import collapse_metrics
    from sslengine.methods import build_method
    from sslengine.train.data import dataset_mean_std, load_splits
    from sslengine.train.loop import Trainee, _batch_to_device, _epoch_permutation
    from sslengine.train.loop import _step_generator as step_generator
    from sslengine.train.optim import build_optimizer

    train, _ = load_splits(cfg)
    mean, std = dataset_mean_std(train)
    method = build_method(cfg, dataset_size=len(train), mean=mean, std=std)
    trainee = Trainee(method, len(train.classes)).train()
    opt = build_optimizer(cfg.optim, method, BATCH)
    probe_opt = torch.optim.SGD(trainee.probe.parameters(), lr=0.1, momentum=0.9)
    labels_all = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    perm = _epoch_permutation(cfg.seed, 0, len(train))
    per_epoch = len(train) // BATCH
    times: dict[str, list[float]] = {}
    out = None

    def tick(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        times.setdefault(name, []).append(1e3 * (t1 - t0))
        return t1

    sums: dict[str, torch.Tensor] = {}
    for step in range(steps + 1):
        t = time.perf_counter()
        pos = step % per_epoch
        idx = perm[pos * BATCH : (pos + 1) * BATCH]
        images = _batch_to_device(train.images, idx.numpy(), torch.device("cpu"))
        labels = labels_all[idx]
        t = tick("index uint8 cache -> NCHW", t)
        views = method.make_views(images, step_generator(cfg.seed, step, 0))
        t = tick("augment 2 views", t)
        out = trainee(views, idx, labels)
        t = tick("forward (backbone+projector+NT-Xent+probe)", t)
        out.loss.backward()
        t = tick("backward", t)
        opt.step()
        probe_opt.step()
        opt.zero_grad(set_to_none=True)
        probe_opt.zero_grad(set_to_none=True)
        t = tick("LARS + probe SGD step", t)
        ssl_loss = out.loss.detach() - out.metrics.get("online_probe_loss", 0.0)
        for k, v in {"loss": ssl_loss, **out.metrics}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        tick("metric sums", t)
        if step == 0:
            times.clear()  # warm-up step
    result = {k: median(v) for k, v in times.items()}
    t = time.perf_counter()
    for _ in range(3):
        collapse_metrics(*out.embeddings)
    per_call = 1e3 * (time.perf_counter() - t) / 3
    result[f"collapse metrics (every {cfg.train.collapse_every} steps, amortised)"] = (
        per_call / cfg.train.collapse_every
    )
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            images = _batch_to_device(train.images, perm[:BATCH].numpy(), torch.device("cpu"))
            views = method.make_views(images, step_generator(cfg.seed, 0, 0))
            out = trainee(views, perm[:BATCH], labels_all[perm[:BATCH]])
            out.loss.backward()
            opt.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--log-every", type=int, default=4, help="loop logging window (steps)")
    parser.add_argument("--windows", type=int, default=2, help="timed windows per round")
    parser.add_argument("--max-per-class", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--breakdown-steps", type=int, default=6)
    parser.add_argument("--profile", action="store_true", help="torch.profiler top operators")
    parser.add_argument(
        "--no-compiled", action="store_true", help="skip the train.compile_augment contender"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    ds = cifar_train(args.max_per_class, args.cache_dir)
    # pretrain reads the dataset through the product's settings: point them at the same cache.
    os.environ["SSL_CACHE"] = str(args.cache_dir)
    os.environ["SSL_DATASET_ROOTS"] = str(CIFAR_TGZ.parent)
    home = scratch_home("bench-loop-")
    os.environ["SSL_HOME"] = str(home)
    cfg = simclr_config(args.max_per_class, args.log_every, args.windows)
    timed_steps = args.windows * args.log_every
    print(machine_report())
    print(
        f"CIFAR-10 train, {len(ds)} images cached uint8 {ds.images.shape[1:]}; small_resnet, "
        f"batch {BATCH} (2 views = {2 * BATCH} x 3 x 32 x 32), {timed_steps} timed steps per "
        f"contender per round, {args.rounds} rounds"
    )

    bare = BareBackbone(cfg)
    contenders = ["loop", "bare"]
    compiled = with_compiled_augment(cfg)
    if not args.no_compiled:
        contenders.append("loop+compiled augment")
        t0 = time.perf_counter()
        warm = with_compiled_augment(simclr_config(args.max_per_class, 1, 1))
        loop_images_per_s(warm, home / "warm")
        print(f"(compiling the augmentation took {time.perf_counter() - t0:.0f} s)")
    ips: dict[str, list[float]] = {c: [] for c in contenders}
    ratios: dict[str, list[float]] = {c: [] for c in contenders if c != "bare"}
    for r in range(args.rounds):
        # rotate the order so a change of load hits every contender alike
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        got = {}
        for who in order:
            if who == "bare":
                got[who] = bare.images_per_s(timed_steps)
            elif who == "loop":
                got[who] = loop_images_per_s(cfg, home / f"ckpt{r}")
            else:
                got[who] = loop_images_per_s(compiled, home / f"ckpt{r}c")
        for c in contenders:
            ips[c].append(got[c])
        for c in ratios:
            ratios[c].append(got[c] / got["bare"])
        print(
            f"round {r + 1}: "
            + ", ".join(f"{c} {got[c]:.1f} img/s" for c in contenders)
            + f"; loop/bare {ratios['loop'][-1]:.3f} (load {load_average():.1f})"
        )
    for c in contenders:
        print(f"{c:<24s} images/s: {spread(ips[c])}")
    for c, values in ratios.items():
        ratio = median(values)
        verdict = "met" if ratio >= TARGET else "NOT met"
        label = "RATIO loop / bare" if c == "loop" else f"ratio {c} / bare (train.compile_augment)"
        print(
            f"{label} (median of {args.rounds} rounds): {ratio:.3f}  "
            f"[range {min(values):.3f}-{max(values):.3f}; target >= {TARGET}: {verdict}]"
        )

    phases = phase_breakdown(cfg, args.breakdown_steps, args.profile)
    total = sum(v for k, v in phases.items())
    print(f"phase breakdown (median ms per step over {args.breakdown_steps} steps):")
    for k, v in phases.items():
        print(f"  {k:<62s} {v:8.1f} ms  {100 * v / total:5.1f}%")
    print(machine_report())


if __name__ == "__main__":
    main()
