"""Named starting points for the launch form and the CLI (`--set` still applies on top)."""

from __future__ import annotations

from typing import Any

CIFAR_ROOT = "cifar10/cifar10-jpg.tar.gz"  # relative to a configured data root (SSL_DATASET_ROOTS)

# ---- every method on a CIFAR-10 subset, sized for a 2-core CPU (tests/test_methods_learn.py) ----
# Each trains in about a minute or less on an idle 2-core CPU and is checked to beat its own
# random initialisation on kNN top-1 (BENCHMARKS.md, "Methods on CIFAR-10 (CPU)"). Shared choices:
# 200 images per class to train on (2,000), the whole CIFAR-10 test split held out (10,000: one
# standard error of a kNN accuracy is ~0.45 point; with 2,000 held-out images it was ~1 point,
# as large as the differences measured), AdamW at a fixed lr (a short run has
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
            "test_max_per_class": 1000,
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
    # 48 px (CIFAR upsampled) so a 3x3 tile is ~15 px; the paper's 100 permutations, 1 px
    # minimum gap so 1 px of jitter remains. Tiles are NOT standardised one by one (tile_norm
    # "none"; the paper's code does it per channel): per-channel standardisation strips each
    # tile's colour, the trunk learns to ignore colour, and kNN on full images, which relies on
    # it at this scale, ends 1-3 points BELOW random init (+1.0/+0.5/-3.2 at 60 steps, 24
    # permutations); per-tile (all channels at once) +1.6/+1.2; none +5.0/+3.6 (seeds 0/1, 300
    # steps, in-process). Low-level continuity across tile borders is still cut by the gap and
    # jitter. kNN reads layer2, not the pooled output: a pretext trunk's last stage specialises
    # to its puzzle (the seed lecture's layer-wise picture; Goyal et al. 2019 find jigsaw's best
    # ResNet-50 layer at res4, before the last stage). Per-layer kNN gain over random init,
    # seeds 0/1/2 (in-process, 2 threads; the queue gives the same to the digit): at 48 px
    # layer2 +4.6/+4.4/+6.4, layer3 +3.7/+1.6/+5.0, pooled +3.7/+1.1/+2.1; at 32 px every
    # layer +1.4..+3.7 (pooled through the queue +3.8/+3.8/+0.8); at 64 px (seed 2) layer2
    # +5.3, pooled -0.8 (all these on 2,000 held-out images). Seeds 3/4 then read +2.2/+2.9,
    # short of the +3 margin of tests/test_methods_learn.py; on the whole 10,000-image test
    # split the same trained trunks gain +6.6/+5.6/+6.0/+5.4/+4.4 at layer2 (seeds 0-4,
    # in-process): the shortfall was the smaller held-out set's noise (~1 point per SE).
    "Jigsaw": _cpu_subset(
        "jigsaw",
        48,
        128,
        20,
        jigsaw={"n_permutations": 100, "tile_gap": 1, "tile_norm": "none"},
        eval={"knn": True, "knn_k": [20, 200], "knn_tap": "layer2"},
    ),
    # 7 px patches at 32 px, gap 3 (the paper's half a patch), no colour dropping: it is the
    # paper's defence against chromatic aberration, which 32 px downsampled images do not have,
    # and it teaches the trunk to ignore the colour that kNN relies on here (+1.1/+1.2 with it
    # at 150 steps). All 8 neighbours of every centre (relative_position.neighbours): 8 pairs
    # for 9 trunk passes per image, pretext accuracy 0.33-0.36 after 20 epochs against
    # 0.19-0.22 with the paper's one pair. kNN reads the trunk the way Kolesnikov et al. 2019
    # evaluate patch-trained trunks, as the mean of an image's cells' pooled features, with cells
    # the size of the training patches (eval.knn_patch_grid 4: 8 px cells for 7 px patches).
    # kNN gain over random init on the 10,000 test images (in-process, 2 threads, seeds 0-4;
    # BENCHMARKS.md): 4 x 4 cells +5.7/+4.6/+5.6/+5.1/+4.0; 3 x 3 cells (10 px, larger than
    # the patches) +4.8/+5.2/+2.9/+3.8/+2.7; whole images with one pair per image
    # +4.4/+2.4/+0.5/+3.8/+0.4.
    "Relative position": _cpu_subset(
        "relative_position",
        32,
        128,
        20,
        relative_position={"patch_gap": 3, "color_drop": False, "neighbours": 8},
        eval={"knn": True, "knn_k": [20, 200], "knn_patch_grid": 4},
    ),
    # PIRL's tau 0.07, bank momentum 0.5, 0.5/0.5 loss mix; 512 negatives (paper 32,000).
    # InfoNCE against the bank (pirl.loss): the paper's NCE, even with Wu et al.'s estimated Z,
    # diverges in a run this short (loss 7.9 -> 465, kNN -3.1 at 300 steps). 30 epochs: the
    # bank holds each image's feature from its last visit, so it needs several passes (10
    # epochs gained +1.6/-1.3, 20 epochs +6.4/+5.2/+2.1 through the queue, 30 epochs
    # +9.4/+6.3/+6.9 in-process with 2 threads, seeds 0/1/2; ~100 s on an idle 2-core CPU).
    "PIRL": _cpu_subset(
        "pirl",
        32,
        128,
        30,
        pirl={
            "temperature": 0.07,
            "n_negatives": 512,
            "bank_momentum": 0.5,
            "loss_weight": 0.5,
            "proj_dim": 128,
            "loss": "infonce",
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
