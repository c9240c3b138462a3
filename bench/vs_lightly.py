"""SimCLR training speed: sslengine's loop vs lightly's usual loop, same model, same data.

    .venv/bin/python bench/vs_lightly.py [--rounds 5] [--steps 8] [--workers 0 2]

Both sides train SimCLR on the same CIFAR-10 images (the uint8 cache, 32 px), batch 256, with
the same network: sslengine's small_resnet backbone (CIFAR stem) + a 128-512-128 projection
head (Linear-BN-ReLU-Linear on both sides), NT-Xent with temperature 0.5, and the same
augmentation parameters: RandomResizedCrop(32, scale (0.08, 1)), horizontal flip 0.5, colour
jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, no blur (SimCLR drops it on CIFAR).

- sslengine: `sslengine.train.loop.pretrain` as a user runs it (batched augmentation of the
  uint8 batch, online probe, LARS); images/s is the loop's own `throughput` metric over its
  logging windows after step 1. Two contenders: the default `simclr.views_forward: joint`
  (both views as one 2N batch, as SimCLR's code does) and `per_view` (one forward per view,
  the same network work as lightly's loop).
- lightly (the pattern of its SimCLR examples): `SimCLRTransform(input_size=32, cj_strength=0.5,
  gaussian_blur=0.0, ...)` applied per image to PIL images (a Dataset that turns each cached
  array into a PIL image, as torchvision's CIFAR10 does) in a torch `DataLoader` (shuffle,
  drop_last) with `num_workers` in `--workers`, `SimCLRProjectionHead`, `NTXentLoss`, plain
  `torch.optim.SGD`, one forward per view as in lightly's examples. Each round starts a fresh
  iterator and skips the batches its workers prefetched (1 + 2 * workers) before timing, so
  neither worker start-up nor batches made while the other contender ran are counted.

Contenders alternate for `--rounds` rounds; the ratios sslengine / lightly are medians over
rounds (target >= 1.3). Skips with a message when lightly is not installed.
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
from loop_efficiency import BATCH, loop_images_per_s, simclr_config  # noqa: E402

TARGET = 1.3


class PILImages(torch.utils.data.Dataset):
    """Cached uint8 images handed out as PIL images, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(np.asarray(self.images[i]))), int(self.labels[i])


class LightlySimCLR:
    """lightly's SimCLR example loop around sslengine's small_resnet."""

    def __init__(self, ds, mean: tuple, std: tuple, views_cfg, temperature: float) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform

        from sslengine.models.backbones import build_backbone

        v = views_cfg
        # cj_strength 0.5 x lightly's defaults (0.8, 0.8, 0.8, 0.2) = (0.4, 0.4, 0.4, 0.1): ours.
        self.transform = SimCLRTransform(
            input_size=32,
            cj_prob=v.jitter_p,
            cj_strength=0.5,
            cj_bright=2 * v.brightness,
            cj_contrast=2 * v.contrast,
            cj_sat=2 * v.saturation,
            cj_hue=2 * v.hue,
            min_scale=v.crop_scale_min,
            random_gray_scale=v.grayscale_p,
            gaussian_blur=v.blur_p_for(32),
            hf_prob=v.hflip_p,
            normalize={"mean": list(mean), "std": list(std)},
        )
        self.dataset = PILImages(ds.images, ds.labels, self.transform)
        torch.manual_seed(0)
        self.backbone = build_backbone("small_resnet", cifar_stem=True)
        self.head = SimCLRProjectionHead(self.backbone.out_dim, 512, 128)
        self.model = torch.nn.Sequential(self.backbone, self.head).train()
        self.criterion = NTXentLoss(temperature=temperature)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.06, momentum=0.9)

    def images_per_s(self, steps: int, workers: int) -> float:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers
        )
        skip = 1 + 2 * workers  # the workers' prefetched batches (prefetch_factor 2)
        it = iter(loader)
        t0 = 0.0
        for i in range(skip + steps):
            if i == skip:
                t0 = time.perf_counter()
            (x0, x1), _ = next(it)
            z0 = self.model(x0)
            z1 = self.model(x1)
            loss = self.criterion(z0, z1)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
        elapsed = time.perf_counter() - t0
        del it  # shuts the workers down before the next contender runs
        return steps * BATCH / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per contender/round")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--max-per-class", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()

    try:
        import lightly
    except ImportError:
        print(
            "SKIPPED: lightly is not installed. `.venv/bin/pip install lightly` (it keeps "
            "torch 2.14.1; check with `pip install --dry-run lightly`) and run again."
        )
        return

    torch.set_num_threads(args.threads)
    ds = cifar_train(args.max_per_class, args.cache_dir)
    os.environ["SSL_CACHE"] = str(args.cache_dir)
    os.environ["SSL_DATASET_ROOTS"] = str(CIFAR_TGZ.parent)
    home = scratch_home("bench-lightly-")
    os.environ["SSL_HOME"] = str(home)
    # windows of `steps` steps after the first: the same number of timed steps as lightly's
    cfg = simclr_config(args.max_per_class, log_every=args.steps, windows=1)

    from sslengine.train.data import dataset_mean_std

    mean, std = dataset_mean_std(ds)
    lightly_side = LightlySimCLR(ds, mean, std, cfg.views, cfg.simclr.temperature)
    print(machine_report())
    print(
        f"lightly {lightly.__version__}; CIFAR-10 train, {len(ds)} images, batch {BATCH}, "
        f"small_resnet + 128-512-128 head, {args.steps} timed steps per contender per round, "
        f"{args.rounds} rounds, lightly DataLoader num_workers in {args.workers}"
    )

    per_view = cfg.model_copy(
        update={"simclr": cfg.simclr.model_copy(update={"views_forward": "per_view"})}
    )
    ours = {"sslengine": cfg, "sslengine per-view": per_view}
    contenders = [*ours, *(f"lightly w{w}" for w in args.workers)]
    ips: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(args.rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        got: dict[str, float] = {}
        for who in order:
            if who in ours:
                got[who] = loop_images_per_s(ours[who], home / f"ckpt{r}-{who.replace(' ', '-')}")
            else:
                got[who] = lightly_side.images_per_s(args.steps, int(who.removeprefix("lightly w")))
        for c in contenders:
            ips[c].append(got[c])
        print(
            f"round {r + 1}: "
            + ", ".join(f"{c} {got[c]:.1f} img/s" for c in contenders)
            + f" (load {load_average():.1f})"
        )
    for c in contenders:
        print(f"{c:<18s} images/s: {spread(ips[c])}")
    for mine, c in ((m, c) for m in ours for c in contenders[len(ours) :]):
        per_round = [a / b for a, b in zip(ips[mine], ips[c], strict=True)]
        ratio = median(per_round)
        print(
            f"RATIO {mine} / {c} (median of {args.rounds} rounds): {ratio:.2f}x  "
            f"[range {min(per_round):.2f}-{max(per_round):.2f}; target >= {TARGET}: "
            f"{'met' if ratio >= TARGET else 'NOT met'}]"
        )
    print(machine_report())


if __name__ == "__main__":
    main()
