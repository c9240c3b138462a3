"""The training loop in one process: learning signal, exact resume, clear refusals."""

from __future__ import annotations

import pytest
import torch

from services_fixtures import tiny_simclr
from sslengine.config import parse_config
from sslengine.train.checkpoint import latest_checkpoint, load_checkpoint
from sslengine.train.loop import pretrain


class Recorder:
    """A reporter that keeps every logged metric in memory (no store)."""

    def __init__(self):
        self.rows: dict[int, dict[str, float]] = {}
        self.checkpoints: list[int] = []
        self.evals: list[tuple[str, dict]] = []

    def log(self, step, metrics):
        self.rows.setdefault(step, {}).update(metrics)

    def progress(self, step, total_steps, eta_s):
        pass

    def checkpoint(self, step, path):
        self.checkpoints.append(step)

    def eval_result(self, kind, metrics, layer=None, step=None, artifact_path=None):
        self.evals.append((kind, metrics))

    def should_stop(self):
        return False

    def close(self):
        pass


def _cfg(**train):
    base = tiny_simclr(**train)
    base["train"]["online_probe"] = True
    return parse_config(base)


def test_resume_from_checkpoint_continues_exactly(tmp_path, ssl_home):
    """Stop at step 10 (a checkpoint), resume: same losses and weights as one straight run."""
    straight = Recorder()
    cfg = _cfg(max_steps=14, log_every=1, checkpoint_every=10)
    cfg.eval.knn = False
    pretrain(cfg, tmp_path / "a", reporter=straight)

    part = Recorder()
    cfg_short = _cfg(max_steps=10, log_every=1, checkpoint_every=10)
    cfg_short.eval.knn = False
    # same schedule length as the straight run: only the stopping point differs
    cfg_short.train.max_steps = 14
    cfg_short.train.checkpoint_every = 10
    pretrain_until(cfg_short, tmp_path / "b", part, stop_after=10)
    resumed = Recorder()
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt.name == "step_00000010.pt"
    pretrain(cfg_short, tmp_path / "b", reporter=resumed, resume_from=ckpt)
    assert min(resumed.rows) == 11  # no step is logged twice
    for step in range(11, 15):
        assert resumed.rows[step]["loss"] == pytest.approx(straight.rows[step]["loss"], abs=1e-6)
    a = load_checkpoint(tmp_path / "a" / "step_00000014.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "step_00000014.pt")["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def pretrain_until(cfg, directory, reporter, stop_after: int):
    """Run the loop but stop (like a killed worker) right after the checkpoint at `stop_after`."""

    class Stop(Exception):
        pass

    def on_ckpt(step, path):
        if step >= stop_after:
            raise Stop

    with pytest.raises(Stop):
        pretrain(cfg, directory, reporter=reporter, on_checkpoint=on_ckpt)


def test_logs_expected_metrics_and_knn(tmp_path, ssl_home):
    rec = Recorder()
    out = pretrain(_cfg(epochs=2), tmp_path, reporter=rec)
    keys = set().union(*rec.rows.values())
    assert {
        "loss",
        "lr",
        "throughput",
        "epoch",
        "online_probe_acc",
        "embed_std",
        "effective_rank",
        "knn_top1_k20",
    } <= keys
    assert rec.evals and rec.evals[0][0] == "knn"
    assert 0.0 <= out["knn_top1_k20"] <= 1.0


def test_batch_larger_than_dataset_is_refused(tmp_path, ssl_home):
    cfg = parse_config(
        {"dataset": {"name": "digits", "max_per_class": 2}, "train": {"batch_size": 64}}
    )
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        pretrain(cfg, tmp_path)


def test_missing_dataset_path_names_the_path(tmp_path, ssl_home):
    missing = ssl_home / "data" / "no-such-folder"
    cfg = parse_config({"dataset": {"name": "imagefolder", "root": str(missing)}})
    with pytest.raises(ValueError, match="no-such-folder"):
        pretrain(cfg, tmp_path)
