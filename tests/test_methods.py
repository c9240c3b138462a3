"""Every registered method: builds from its config section, trains, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from sslengine.config import ConfigError, parse_config
from sslengine.methods import METHODS
from sslengine.train.checkpoint import latest_checkpoint, load_checkpoint
from sslengine.train.loop import pretrain
from test_train_loop import Recorder, pretrain_until

ALL = ["simclr", "moco", "swav", "barlow_twins", "rotation", "jigsaw", "relative_position", "pirl"]
SMALL = {  # sizes that keep every method to a second or two on 2 CPU cores
    "moco": {"queue_size": 64},
    "swav": {
        "n_prototypes": 16,
        "n_small_crops": 2,
        "small_crop_size": 12,
        "freeze_prototypes_steps": 2,
        "queue_size": 64,
    },
    "barlow_twins": {"proj_dim": 64},
    "jigsaw": {"n_permutations": 10},
    "pirl": {"n_negatives": 64},
}


def tiny(method: str, **train) -> dict:
    size = 32 if method in ("jigsaw", "pirl", "relative_position") else 16
    return {
        "method": method,
        "dataset": {"name": "digits", "image_size": size, "max_per_class": 20},
        "backbone": {"name": "small_resnet"},
        "train": {"batch_size": 32, "epochs": 1, "log_every": 1, "collapse_every": 2, **train},
        "eval": {"knn": False},
        method: SMALL.get(method, {}),
    }


def test_every_lecture_method_is_registered():
    assert set(ALL) <= set(METHODS)


@pytest.mark.parametrize("method", ALL)
def test_resume_gives_identical_next_steps(method, tmp_path, ssl_home):
    cfg = parse_config(tiny(method, max_steps=5, checkpoint_every=3))
    straight = Recorder()
    pretrain(cfg, tmp_path / "a", reporter=straight)
    part = Recorder()
    pretrain_until(cfg, tmp_path / "b", part, stop_after=3)
    resumed = Recorder()
    pretrain(cfg, tmp_path / "b", reporter=resumed, resume_from=latest_checkpoint(tmp_path / "b"))
    assert sorted(resumed.rows) == [4, 5]
    for step in (4, 5):
        assert resumed.rows[step]["loss"] == pytest.approx(
            straight.rows[step]["loss"], rel=1e-5, abs=1e-6
        )
    a = load_checkpoint(tmp_path / "a" / "step_00000005.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "step_00000005.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_method_state_lives_in_the_checkpoint(tmp_path, ssl_home):
    """Queues, memory banks, prototypes and momentum encoders are in state_dict()."""
    expect = {
        "moco": ["method.queue", "method.queue_ptr", "method.momentum_backbone."],
        "swav": ["method.prototypes.weight", "method.queue"],
        "pirl": ["method.memory.bank"],
    }
    for method, keys in expect.items():
        cfg = parse_config(tiny(method, max_steps=1))
        pretrain(cfg, tmp_path / method)
        state = load_checkpoint(latest_checkpoint(tmp_path / method))["model"]
        for key in keys:
            assert any(k.startswith(key) for k in state), (method, key)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (
            {"method": "moco", "moco": {"queue_size": 1000}, "train": {"batch_size": 64}},
            "moco.queue_size",
        ),
        ({"method": "jigsaw", "jigsaw": {"n_permutations": 362881}}, "jigsaw.n_permutations"),
        ({"method": "swav", "swav": {"n_large_crops": 0}}, "swav.n_large_crops"),
        ({"method": "nope"}, "method"),
    ],
)
def test_bad_method_settings_are_refused(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(overrides)


def test_simclr_per_view_forward_is_batchnorm_per_view():
    """simclr.views_forward: "per_view" runs each view as its own batch. With BatchNorm using
    running statistics (eval) it is the joint forward exactly; in training it equals scoring
    z1, z2 computed view by view by hand, and differs from the joint forward (BN statistics of
    one view, not of both)."""
    from sslengine.losses import nt_xent
    from sslengine.methods import build_method

    torch.manual_seed(0)
    joint = build_method(parse_config(tiny("simclr")), 100, (0.5,) * 3, (0.25,) * 3)
    per_view = build_method(
        parse_config({**tiny("simclr"), "simclr": {"views_forward": "per_view"}}),
        100,
        (0.5,) * 3,
        (0.25,) * 3,
    )
    per_view.load_state_dict(joint.state_dict())
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g) + 1]
    idx = torch.arange(8)

    joint.eval(), per_view.eval()
    with torch.no_grad():
        assert torch.allclose(per_view(views, idx).loss, joint(views, idx).loss, atol=1e-6)

    joint.train(), per_view.train()
    with torch.no_grad():
        got = per_view(views, idx).loss
        z1, z2 = (per_view.projector(per_view.backbone(v)) for v in views)
        by_hand = nt_xent(z1, z2, temperature=0.5)
        assert torch.allclose(got, by_hand, atol=1e-6)
        assert abs(got.item() - joint(views, idx).loss.item()) > 1e-3


def test_relative_position_pairs_every_neighbour_with_its_own_centre():
    """relative_position.neighbours k: the loss over B*k pairs equals the pairs classified one
    by one (centre i with its neighbours i*k..i*k+k-1), BN in eval mode so batches agree."""
    import torch.nn.functional as F

    from sslengine.methods import build_method

    cfg = parse_config(
        {
            "method": "relative_position",
            "dataset": {"name": "digits", "image_size": 32},
            "relative_position": {"neighbours": 3, "color_drop": False},
        }
    )
    torch.manual_seed(0)
    method = build_method(cfg, 100, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    images = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    centre, neighbour, labels = method.make_views(images, torch.Generator().manual_seed(1))
    assert neighbour.shape[0] == labels.shape[0] == 12
    with torch.no_grad():
        got = method(method.make_views(images, torch.Generator().manual_seed(1)), None).loss
        losses = []
        for i in range(4):
            pc = method.per_patch(method.backbone(centre[i : i + 1]))
            for j in range(3):
                pn = method.per_patch(method.backbone(neighbour[i * 3 + j : i * 3 + j + 1]))
                logits = method.head(torch.cat([pc, pn], dim=1))
                losses.append(F.cross_entropy(logits, labels[i * 3 + j : i * 3 + j + 1]))
    assert got.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
