"""Methods build their BatchAugment once and reuse it: the same views as a fresh one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sslengine.config import parse_config
from sslengine.data.augment import BatchAugment
from sslengine.methods import build_method

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def method(name: str, **section):
    cfg = parse_config(
        {
            "method": name,
            "dataset": {"name": "digits", "image_size": 16},
            "backbone": {"name": "small_resnet"},
            **({name: section} if section else {}),
        }
    )
    return build_method(cfg, 8, MEAN, STD)


def images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)


def test_two_views_reuse_one_augmenter_and_match_a_fresh_one():
    m = method("simclr")
    first = m.make_views(images(), torch.Generator().manual_seed(1))
    aug = m.augmenter()
    assert m.augmenter() is aug and len(m._augmenters) == 1
    again = m.make_views(images(), torch.Generator().manual_seed(1))
    fresh = BatchAugment(m.view_config())
    g = torch.Generator().manual_seed(1)
    expected = [fresh(images(), g), fresh(images(), g)]
    for a, b, c in zip(first, again, expected, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert m.augmenter() is aug  # still the one built at the first step


def test_pretext_light_view_and_swav_crops_are_cached_and_unchanged():
    rot = method("rotation")
    g = torch.Generator().manual_seed(2)
    view = rot.light_view(images(), g)
    light = dataclasses.replace(
        rot.view_config(scale_min=0.5), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0
    )
    assert torch.equal(view, BatchAugment(light)(images(), torch.Generator().manual_seed(2)))
    rot.light_view(images(), g)
    assert len(rot._augmenters) == 1

    swav = method("swav", n_small_crops=2, small_crop_size=8, queue_size=0)
    views = swav.make_views(images(), torch.Generator().manual_seed(3))
    swav.make_views(images(), torch.Generator().manual_seed(3))
    assert len(swav._augmenters) == 2  # large and small crops, built once
    c = swav.cfg.swav
    large = BatchAugment(swav.view_config(scale_min=c.large_crop_scale_min))
    small = BatchAugment(
        swav.view_config(
            size=c.small_crop_size,
            scale_min=min(0.05, c.small_crop_scale_max),
            scale_max=c.small_crop_scale_max,
        )
    )
    g = torch.Generator().manual_seed(3)
    expected = [large(images(), g) for _ in range(c.n_large_crops)]
    expected += [small(images(), g) for _ in range(c.n_small_crops)]
    assert len(views) == len(expected)
    for a, b in zip(views, expected, strict=True):
        assert torch.equal(a, b)


def test_batch_augment_normalisation_follows_a_changed_config():
    """The cached mean/std tensors are keyed by their values (ViewConfig is mutable)."""
    from sslengine.data.augment import ViewConfig

    aug = BatchAugment(ViewConfig(size=8, mean=MEAN, std=STD))
    a = aug(images(), torch.Generator().manual_seed(0))
    aug.cfg.mean = (0.0, 0.0, 0.0)
    b = aug(images(), torch.Generator().manual_seed(0))
    c = BatchAugment(ViewConfig(size=8, mean=(0.0, 0.0, 0.0), std=STD))(
        images(), torch.Generator().manual_seed(0)
    )
    assert not torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.slow
def test_compiled_augmentation_gives_the_eager_views():
    """train.compile_augment: the same views through torch.compile (inductor) as eager."""
    cfg = parse_config(
        {
            "method": "simclr",
            "dataset": {"name": "digits", "image_size": 16},
            "backbone": {"name": "small_resnet"},
            "train": {"compile_augment": True},
        }
    )
    compiled = build_method(cfg, 8, MEAN, STD)
    assert compiled.augmenter().compile
    eager = method("simclr")
    assert not eager.augmenter().compile
    for seed in (1, 2):  # a second call reuses the compiled graph
        a = compiled.make_views(images(seed), torch.Generator().manual_seed(seed))
        b = eager.make_views(images(seed), torch.Generator().manual_seed(seed))
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
