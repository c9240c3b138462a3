"""Named starting points for the launch form and the CLI (`--set` still applies on top)."""

from __future__ import annotations

from typing import Any

CIFAR_ROOT = "cifar10/cifar10-jpg.tar.gz"  # relative to a configured data root (SSL_DATASET_ROOTS)

# ---- every method on a CIFAR-10 subset, sized for a 2-core CPU (tests/test_methods_learn.py) ----
# Each trains in well under a minute on an idle 2-core CPU and is checked to beat its own random
# initialisation on kNN top-1 (BENCHMARKS.md, "Methods on CIFAR-10 (CPU)"). Shared choices:
# 200 images per class (2,000 train, 2,000 held-out test), AdamW at a fixed lr (a short run has
# no room for LARS warm-up; Adam's step size also does not depend on each loss's scale, which
# ranges from ~1 for InfoNCE to ~10^2 for Barlow Twins), cosine schedule with 10% warm-up.
# Paper values are kept where they do not depend on scale (temperatures, lambda, Sinkhorn
# epsilon and iterations, bank momentum); sizes (queues, prototypes, projector widths,
# negatives) are scaled to the 2,000-image subset.


def _cpu_subset(
    method: str,
    image_size: int,
    batch_size: int,
    epochs: int,
    **sections: dict[str, Any],
) -> dict[str, Any]:
    """One method's preset: the shared choices above plus its own config section."""
    return {
        "method": method,
        "dataset": {
            "name": "cifar10",
            "root": CIFAR_ROOT,
            "image_size": image_size,
            "max_per_class": 200,
        },
        "backbone": {"name": "small_resnet", "cifar_stem": True},
        "optim": {
            "name": "adamw",
            "lr": 2e-3,
            "lr_scaling": "none",
            "weight_decay": 1e-4,
            "warmup_fraction": 0.1,
            "schedule": "cosine",
        },
        "train": {
            "batch_size": batch_size,
            "epochs": epochs,
            "log_every": 10,
            "collapse_every": 25,
            "checkpoint_every": 1000,
        },
        "eval": {"knn": True, "knn_k": [20, 200]},
        **sections,
    }


_CPU_SUBSET: dict[str, dict[str, Any]] = {
    # tau 0.5 as SimCLR on CIFAR; batch 64 (more, smaller steps learn faster in a short run).
    "SimCLR": _cpu_subset("simclr", 16, 64, 5, simclr={"temperature": 0.5}),
    # Queue 512 keys (paper: 65,536 of 1.28M images; here a quarter of the 2,000-image subset,
    # so it holds no stale keys of the same image); EMA 0.99 (0.999 is for ~10^5 steps). 10
    # epochs: at 5 the gain over random init was +3 to +7 points depending on the seed.
    "MoCo v2": _cpu_subset(
        "moco", 16, 64, 10, moco={"temperature": 0.2, "queue_size": 512, "momentum": 0.99}
    ),
    # 100 prototypes (paper 3,000 for 1,000 classes); 2 large crops + 2 small 8 px crops (paper:
    # 224/96 px, the same ratio). epsilon 0.03, not 0.05: at 0.05 this run collapses to uniform
    # codes (loss pinned at ln K, embeddings' std falling to 1/4 of 1/sqrt(d)), the failure the
    # SwAV README lists first under "Common issues", whose first workaround is epsilon 0.03. No
    # queue: in a run this short it would hold features from too many steps back. 20 epochs:
    # the gain over random init was +0 to +7 points at 5 epochs, +4 to +7 at 10, +7.5 to +8.4
    # at 20 (seeds 0, 1, 2).
    "SwAV": _cpu_subset(
        "swav",
        16,
        64,
        20,
        swav={
            "n_prototypes": 100,
            "temperature": 0.1,
            "epsilon": 0.03,
            "sinkhorn_iterations": 3,
            "n_large_crops": 2,
            "n_small_crops": 2,
            "small_crop_size": 8,
            "freeze_prototypes_steps": 10,
            "queue_size": 0,
        },
    ),
    # lambda 0.0051 as in the paper; a 256-wide projector (paper 8192). Barlow Twins gains more
    # slowly than the contrastive methods here, so it gets 20 epochs (300 steps of 128).
    "Barlow Twins": _cpu_subset(
        "barlow_twins", 16, 128, 20, barlow_twins={"lambd": 0.0051, "proj_dim": 256}
    ),
    "Rotation": _cpu_subset("rotation", 16, 64, 4),
    # 32 px so a 3x3 tile is 8 px; 24 permutations (paper 100: at this budget the 100-way
    # task does not leave chance level), 1 px minimum gap so 1 px of jitter remains.
    "Jigsaw": _cpu_subset("jigsaw", 32, 128, 4, jigsaw={"n_permutations": 24, "tile_gap": 1}),
    # Only two 7 px patches per image go through the trunk, so 10 epochs cost little.
    "Relative position": _cpu_subset(
        "relative_position", 32, 128, 10, relative_position={"patch_gap": 2, "color_drop": True}
    ),
    # PIRL's tau 0.07, bank momentum 0.5, 0.5/0.5 loss mix; 512 negatives (paper 32,000).
    "PIRL": _cpu_subset(
        "pirl",
        32,
        128,
        4,
        pirl={
            "temperature": 0.07,
            "n_negatives": 512,
            "bank_momentum": 0.5,
            "loss_weight": 0.5,
            "proj_dim": 128,
        },
    ),
}

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
    **{f"{title}, CIFAR-10 subset, small ResNet (CPU)": cfg for title, cfg in _CPU_SUBSET.items()},
}


def preset(name: str) -> dict[str, Any]:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}") from None
