"""Named starting points for the launch form and the CLI (`--set` still applies on top)."""

from __future__ import annotations

from typing import Any

CIFAR_ROOT = "cifar10/cifar10-jpg.tar.gz"  # relative to a configured data root (SSL_DATASET_ROOTS)

PRESETS: dict[str, dict[str, Any]] = {
    "SimCLR, digits (built in), small ResNet: 1-minute demo": {
        "method": "simclr",
        "dataset": {"name": "digits", "image_size": 32},
        "backbone": {"name": "small_resnet", "cifar_stem": True},
        "train": {"batch_size": 128, "epochs": 5, "log_every": 5, "checkpoint_every": 50},
    },
    "SimCLR, CIFAR-10, small ResNet (CPU)": {
        "method": "simclr",
        "dataset": {"name": "cifar10", "root": CIFAR_ROOT, "image_size": 32},
        "backbone": {"name": "small_resnet", "cifar_stem": True},
        "train": {"batch_size": 256, "epochs": 1},
    },
    "SimCLR, CIFAR-10, ResNet-18": {
        "method": "simclr",
        "dataset": {"name": "cifar10", "root": CIFAR_ROOT, "image_size": 32},
        "backbone": {"name": "resnet18", "cifar_stem": True},
        "optim": {"name": "lars", "lr": 1.0, "weight_decay": 1e-6},
        "train": {"batch_size": 512, "epochs": 200, "devices": "auto"},
    },
}


def preset(name: str) -> dict[str, Any]:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}") from None
