"""The `sslengine` CLI as a user runs it (subprocesses, real store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _cli(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "sslengine.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_invalid_config_names_field_and_exits_nonzero(ssl_home, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: -1\n  epocs: 3\n")
    r = _cli("validate", str(bad))
    assert r.returncode == 2
    assert "train.batch_size" in r.stderr and "train.epocs" in r.stderr
    assert "Traceback" not in r.stderr


def test_submit_with_unreachable_redis_gives_url_not_traceback(ssl_home):
    r = _cli("submit", "--set", "train.epochs=1", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert r.returncode == 2
    assert "redis://127.0.0.1:1/0" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_pretrain_in_process_then_runs_show(ssl_home):
    r = _cli(
        "pretrain",
        "--set",
        "dataset.image_size=16",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.log_every=2",
        "--name",
        "cli-run",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run_id = r.stdout.split()[1]
    shown = json.loads(_cli("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "succeeded" and shown["name"] == "cli-run"
    assert "loss" in shown["metrics"]
    listed = json.loads(_cli("runs", "list", "--json").stdout)
    assert run_id in [x["id"] for x in listed]
