"""Training-loop options: gradient accumulation and the online probe switch.

Gradient accumulation (``train.accumulate_grad_batches``). What the loop promises, and what it
does not:

- Promised: the mechanics are exact. A step with A micro-batches backpropagates loss / A for
  each and steps once, so for a loss that is a per-sample mean, on a model whose forward does
  not couple the samples of a batch, the parameter update equals one step on the whole batch.
  Checked on the rotation pretext task (per-sample cross-entropy over the 4 rotations, plus the
  online probe's per-sample cross-entropy) with every BatchNorm held in eval mode (running
  statistics, i.e. a fixed affine map: no batch coupling) and deterministic views.
- Not promised: equivalence with a larger batch for the real methods. Views are drawn per
  micro-batch (same distribution, different draws), BatchNorm normalises over the micro-batch,
  and contrastive methods see only the micro-batch's negatives. The negative control below
  shows that with train-mode BN alone the update already differs, so the test can fail.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import Tensor, nn

from services_fixtures import tiny_simclr
from sslengine.config import parse_config
from sslengine.data.pretext import rotate_batch
from sslengine.methods import build_method
from sslengine.train import loop
from sslengine.train.checkpoint import latest_checkpoint, load_checkpoint
from sslengine.train.loop import pretrain

pytestmark = pytest.mark.slow

BATCH = 16  # global batch; accumulation cuts it into micro-batches of BATCH / A
STEPS = 2  # two steps: the second uses the momentum buffer the first left


class Recorder:
    """A reporter that keeps every logged metric in memory (no store)."""

    def __init__(self):
        self.rows: dict[int, dict[str, float]] = {}

    def log(self, step, metrics):
        self.rows.setdefault(step, {}).update(metrics)

    def progress(self, step, total_steps, eta_s):
        pass

    def checkpoint(self, step, path):
        pass

    def eval_result(self, kind, metrics, layer=None, step=None, artifact_path=None):
        pass

    def should_stop(self):
        return False

    def close(self):
        pass


def rotation_cfg(accumulate: int, **train):
    return parse_config(
        {
            "method": "rotation",
            "seed": 0,
            "dataset": {"name": "digits", "image_size": 16},
            "backbone": {"name": "small_resnet", "cifar_stem": True},
            "optim": {
                "name": "sgd",
                "lr": 0.5,
                "lr_scaling": "none",
                "weight_decay": 1e-4,
                "momentum": 0.9,
                "warmup_fraction": 0.0,
                "schedule": "constant",
            },
            "train": {
                "batch_size": BATCH,
                "max_steps": STEPS,
                "accumulate_grad_batches": accumulate,
                "precision": "fp32",
                "log_every": 1,
                "collapse_every": 1000,
                "online_probe": True,
                **train,
            },
            "eval": {"knn": False},
        }
    )


def _frozen_bn_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def patched_build_method(freeze_bn: bool):
    """`build_method` for the loop: the real method, with deterministic per-sample views (the
    normalised image, in its 4 rotations) and, if `freeze_bn`, every BN kept in eval mode."""

    def build(cfg, dataset_size, mean, std):
        method = build_method(cfg, dataset_size, mean, std)
        if freeze_bn:
            for m in method.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train = types.MethodType(_frozen_bn_train, m)
                    m.train(False)
        mean_t = torch.tensor(mean).view(1, -1, 1, 1)
        std_t = torch.tensor(std).view(1, -1, 1, 1)

        def make_views(images: Tensor, generator: torch.Generator) -> list[Tensor]:
            x = (images.float() / 255.0 - mean_t.to(images.device)) / std_t.to(images.device)
            return list(rotate_batch(x))

        method.make_views = make_views
        return method

    return build


def run(tmp_path, monkeypatch, accumulate: int, freeze_bn: bool):
    monkeypatch.setattr(loop, "build_method", patched_build_method(freeze_bn))
    rec = Recorder()
    directory = tmp_path / f"a{accumulate}-bn{'frozen' if freeze_bn else 'train'}"
    pretrain(rotation_cfg(accumulate), directory, reporter=rec)
    state = load_checkpoint(latest_checkpoint(directory))
    assert state["step"] == STEPS
    return rec, state["model"]


def initial_model() -> dict[str, Tensor]:
    """The weights every run starts from (the loop seeds with cfg.seed, then builds)."""
    torch.manual_seed(0)
    cfg = rotation_cfg(1)
    method = build_method(cfg, 10, (0.5,) * 3, (0.25,) * 3)
    return {f"method.{k}": v.clone() for k, v in method.state_dict().items()}


def test_accumulating_two_micro_batches_equals_one_step_on_the_whole_batch(
    tmp_path, monkeypatch, ssl_home
):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rec1, whole = run(tmp_path, monkeypatch, accumulate=1, freeze_bn=True)
        rec2, accumulated = run(tmp_path, monkeypatch, accumulate=2, freeze_bn=True)
    finally:
        torch.set_num_threads(threads)
    assert whole.keys() == accumulated.keys()
    assert any(k.startswith("probe.") for k in whole)  # the probe's update is checked too
    for key, value in whole.items():
        torch.testing.assert_close(
            accumulated[key], value, atol=1e-5, rtol=0, msg=lambda m, key=key: f"{key}: {m}"
        )
    # not a comparison of untouched weights: the two steps moved the trunk and the heads
    init = initial_model()
    moved = {
        k: float((whole[k].float() - init[k].float()).abs().max())
        for k in init
        if k.startswith(("method.backbone.conv1", "method.head"))
    }
    assert moved and min(moved.values()) > 1e-3, moved
    # the logged step metrics are means over the micro-batches: the same numbers
    for step in range(1, STEPS + 1):
        for key in ("loss", "pretext_acc", "online_probe_loss", "online_probe_acc"):
            assert rec2.rows[step][key] == pytest.approx(rec1.rows[step][key], abs=1e-5), key


def test_negative_control_train_mode_batch_norm_couples_the_micro_batches(
    tmp_path, monkeypatch, ssl_home
):
    """Same deterministic views, BN in train mode: each micro-batch is normalised with its own
    statistics, so accumulation is not one step on the whole batch (the caveat the config's
    description states)."""
    _, whole = run(tmp_path, monkeypatch, accumulate=1, freeze_bn=False)
    _, accumulated = run(tmp_path, monkeypatch, accumulate=2, freeze_bn=False)
    diff = max(
        float((accumulated[k].float() - v.float()).abs().max())
        for k, v in whole.items()
        if not k.endswith("num_batches_tracked")
    )
    assert diff > 1e-3


# ---- train.online_probe


def probe_cfg(online_probe: bool, **train):
    base = tiny_simclr(
        max_steps=4, log_every=2, checkpoint_every=2, online_probe=online_probe, **train
    )
    base["eval"]["knn"] = False
    return parse_config(base)


def test_online_probe_off_builds_no_probe_and_logs_no_probe_metrics(tmp_path, ssl_home):
    rec = Recorder()
    out = pretrain(probe_cfg(False), tmp_path, reporter=rec)
    keys = set().union(*rec.rows.values())
    assert "loss" in keys and "embed_std" in keys  # the run did log
    assert not any(k.startswith("online_probe") for k in keys | set(out)), keys
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert not any(k.startswith("probe.") for k in state["model"])
    assert state["probe_optimizer"] == {}


def test_online_probe_on_logs_probe_metrics(tmp_path, ssl_home):
    rec = Recorder()
    pretrain(probe_cfg(True), tmp_path, reporter=rec)
    keys = set().union(*rec.rows.values())
    assert {"online_probe_acc", "online_probe_loss"} <= keys
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert any(k.startswith("probe.") for k in state["model"])


@pytest.mark.parametrize("first, then", [(True, False), (False, True)])
def test_resume_after_switching_the_online_probe(tmp_path, ssl_home, first, then):
    """A checkpoint written with the probe resumes without it (the probe is dropped) and
    vice versa (a fresh probe); the method's weights load strictly either way."""
    cfg = probe_cfg(first)
    cfg.train.max_steps = 2
    pretrain(cfg, tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    rec = Recorder()
    pretrain(probe_cfg(then), tmp_path, reporter=rec, resume_from=ckpt)
    keys = set().union(*rec.rows.values())
    assert min(rec.rows) > 2
    assert ("online_probe_acc" in keys) == then
