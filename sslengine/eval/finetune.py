"""End-to-end fine-tuning of a pretrained backbone with a linear classifier on labelled data
(the "semi-supervised / transfer" protocol of SimCLR, Chen et al. 2020, sec. B.5, scaled down).

The backbone gets its own, smaller learning rate (a separate SGD param group): a large step
on pretrained weights would erase what pretraining learned before the fresh head has caught
up. SGD with momentum 0.9, cosine decay per step, light augmentation (random-resized crop with
scale (0.5, 1) and horizontal flip, no colour), BN in training mode. Evaluated on the centred
full image, BN in eval mode.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sslengine.data.augment import BatchAugment, ViewConfig
from sslengine.data.datasets import ImageArrayDataset

__all__ = ["finetune"]


def _labels(ds: ImageArrayDataset, what: str) -> np.ndarray:
    y = np.asarray(ds.labels, dtype=np.int64)
    if len(y) == 0 or (y < 0).any():
        raise ValueError(f"fine-tuning needs labels: the {what} split has unlabelled images")
    return y


def finetune(
    backbone: nn.Module,
    train_ds: ImageArrayDataset,
    test_ds: ImageArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    backbone_lr: float = 0.01,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float | int]:
    """Fine-tune a COPY of `backbone` plus a linear head; top-1/top-5 on `test_ds`.

    Runs where the backbone's parameters are. Returns {"top1", "top5" (fractions;
    top-min(5, C)), "epochs", "lr", "backbone_lr"}.
    """
    y_train, y_test = _labels(train_ds, "training"), _labels(test_ds, "test")
    num_classes = max(len(train_ds.classes), int(y_train.max()) + 1, int(y_test.max()) + 1)
    if num_classes < 2:
        raise ValueError("fine-tuning needs labels of at least 2 classes")
    n = len(y_train)
    if n < 2 or epochs < 1 or batch_size < 2 or lr <= 0 or backbone_lr < 0:
        raise ValueError(f"need >= 2 images, epochs >= 1, batch_size >= 2, lr > 0; got {n}, "
                         f"{epochs}, {batch_size}, {lr}")  # fmt: skip
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone)
    param = next(model.parameters())
    device = param.device
    head = nn.Linear(model.out_dim, num_classes).to(device)
    opt = torch.optim.SGD(
        [
            {"params": model.parameters(), "lr": backbone_lr, "base_lr": backbone_lr},
            {"params": head.parameters(), "lr": lr, "base_lr": lr},
        ],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    size = int(train_ds.images.shape[1])
    aug = BatchAugment(
        ViewConfig(
            size=size,
            scale=crop_scale,
            hflip_p=0.5,
            jitter_p=0.0,
            grayscale_p=0.0,
            blur_p=0.0,
            solarize_p=0.0,
            mean=tuple(mean),
            std=tuple(std),
        )
    )
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    bs = min(batch_size, n)
    steps_per_epoch = n // bs  # drop_last: a batch of one cannot be batch-normalised
    total = epochs * steps_per_epoch
    step = 0
    model.train()
    head.train()
    for _ in tqdm(range(epochs), desc="fine-tune", disable=not progress):
        perm = rng.permutation(n)
        for b in range(steps_per_epoch):
            idx = np.sort(perm[b * bs : (b + 1) * bs])
            x = torch.from_numpy(np.ascontiguousarray(train_ds.images[idx])).to(device)
            views = aug(x.permute(0, 3, 1, 2), gen)
            y = torch.from_numpy(y_train[idx]).to(device)
            scale = 0.5 * (1.0 + math.cos(math.pi * step / total))  # cosine decay to 0
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
            loss = F.cross_entropy(head(model(views)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1

    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    model.eval()
    head.eval()
    k5 = min(5, num_classes)
    top1 = top5 = 0
    with torch.inference_mode():
        for start in range(0, len(y_test), 256):
            # a copy: a memmap slice is read-only, which torch.from_numpy warns about
            x = torch.from_numpy(np.array(test_ds.images[start : start + 256], order="C"))
            x = (x.to(device).permute(0, 3, 1, 2).float() / 255.0 - mean_t) / std_t
            y = torch.from_numpy(y_test[start : start + 256]).to(device)
            top = head(model(x)).topk(k5, dim=1).indices
            hit = top == y[:, None]
            top1 += int(hit[:, 0].sum())
            top5 += int(hit.any(dim=1).sum())
    m = len(y_test)
    return {
        "top1": top1 / m,
        "top5": top5 / m,
        "epochs": epochs,
        "lr": lr,
        "backbone_lr": backbone_lr,
    }
