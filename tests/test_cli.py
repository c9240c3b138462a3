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


# ------------------------------------------------------------------------- submit


def _write_config(path, cfg: dict):
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_submit_prints_run_id_and_queues_it(ssl_home, idle_queue, tmp_path):
    from services_fixtures import tiny_simclr
    from sslengine.store import Store

    queue, client = idle_queue
    cfg = _write_config(tmp_path / "ok.yaml", tiny_simclr())
    r = _cli("submit", str(cfg), "--queue", queue, "--name", "cli-submitted")
    assert r.returncode == 0, r.stderr[-2000:]
    run_id = r.stdout.strip()
    assert run_id and len(run_id.split()) == 1
    store = Store.default()
    try:
        run = store.get_run(run_id)
        assert run is not None and run.status == "queued" and run.name == "cli-submitted"
        assert run.config["train"]["batch_size"] == 64
        messages = client.lrange(queue, 0, -1)
        assert len(messages) == 1
        headers = json.loads(messages[0])["headers"]
        assert headers["task"] == "sslengine.pretrain" and run_id in headers["argsrepr"]
    finally:
        store.delete_run(run_id)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"train": {"batch_sise": 64}}, "train.batch_sise"),
        ({"train": {"batch_size": -8}}, "train.batch_size"),
    ],
    ids=["unknown-key", "negative-batch-size"],
)
def test_submit_invalid_config_names_field_and_queues_nothing(
    ssl_home, idle_queue, tmp_path, bad, field
):
    from services_fixtures import tiny_simclr
    from sslengine.store import Store

    queue, client = idle_queue
    cfg = tiny_simclr()
    for section, values in bad.items():
        cfg[section] = {**cfg[section], **values}
    path = _write_config(tmp_path / "bad.yaml", cfg)
    store = Store.default()
    before = {r.id for r in store.list_runs(limit=100_000)}
    default_queue = os.environ.get("SSL_QUEUE", "ssl")
    default_before = client.llen(default_queue)
    r = _cli("submit", str(path), "--queue", queue)
    assert r.returncode != 0
    assert field in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.strip() == ""
    assert {r.id for r in store.list_runs(limit=100_000)} == before
    assert client.llen(queue) == 0 and not client.exists(queue)
    assert client.llen(default_queue) <= default_before  # (a worker may only take from it)
