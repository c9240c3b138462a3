"""Redis restarted mid-run: the worker reconnects, the running run finishes, and a run queued
before the restart is not lost (append-only persistence on, as in docker-compose.yml)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from celery import Celery

from services_fixtures import start_worker_process, stop_process_group, tiny_simclr, wait_for_status
from sslengine.config import parse_config
from sslengine.services import redis_server_binary, start_redis_server
from sslengine.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int, data) -> subprocess.Popen:
    # every write fsync'd to the AOF, so a restart finds exactly what was queued
    return start_redis_server(redis_server_binary(), port, data, "--appendfsync", "always")


def test_worker_survives_redis_restart_and_queued_run_is_kept(ssl_home, tmp_path, monkeypatch):
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = _start_redis(port, tmp_path)
    monkeypatch.setenv("REDIS_URL", url)
    queue = f"restart-{os.getpid()}"
    worker = start_worker_process(queue, tmp_path / "worker.log", "wr")
    client = Celery(broker=url)
    client.conf.update(task_serializer="json", accept_content=["json"])
    store = Store.default()
    try:
        cfg = parse_config(tiny_simclr(max_steps=10, log_every=1))
        runs = []
        for name in ("first", "queued-behind"):
            rid = store.create_run(
                cfg.model_dump(mode="json"),
                name=name,
                method="simclr",
                dataset="digits",
                backbone="small_resnet",
            )
            client.send_task("sslengine.pretrain", args=[rid], queue=queue)
            runs.append(rid)
        wait_for_status(store, runs[0], {"running"}, 120)
        while store.last_metric(runs[0], "loss") is None:
            time.sleep(0.2)
        redis_proc.terminate()
        redis_proc.wait(10)
        time.sleep(2)
        redis_proc = _start_redis(port, tmp_path)  # same dir: the AOF brings the queue back
        for rid in runs:
            status = wait_for_status(store, rid, {"succeeded", "failed"}, 300)
            assert status == "succeeded", store.get_run(rid).error
        steps, _ = store.metric_series(runs[0], "loss")
        assert steps == sorted(set(steps))
    finally:
        stop_process_group(worker)
        redis_proc.terminate()
        redis_proc.wait(10)
