"""The walking skeleton through real parts: Redis, a Celery worker process, SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from services_fixtures import tiny_simclr, wait_for_status
from sslengine.config import parse_config
from sslengine.store import Store
from tasks.submit import BrokerUnavailable, cancel, submit

pytestmark = pytest.mark.integration


def test_simclr_run_through_queue_succeeds_and_learns(celery_worker, queue_name, redis_url):
    store = Store.default()
    cfg = parse_config(tiny_simclr(epochs=6))
    run_id = submit(cfg, name="skeleton", store=store, queue=queue_name)
    assert store.get_run(run_id).status in {"queued", "running", "succeeded"}
    status = wait_for_status(store, run_id, {"succeeded", "failed", "cancelled"}, 600)
    run = store.get_run(run_id)
    assert status == "succeeded", run.error
    steps, losses = store.metric_series(run_id, "loss")
    assert len(steps) >= 5 and steps == sorted(steps)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first, f"loss did not decrease on average: {first:.3f} -> {last:.3f}"
    knn = store.last_metric(run_id, "knn_top1_k20")
    assert knn is not None and knn[1] > 0.3, knn  # 10 digit classes: chance is 0.1
    assert store.list_checkpoints(run_id)
    assert run.progress == pytest.approx(1.0)
    assert {"lr", "throughput", "embed_std", "effective_rank"} <= set(store.metric_keys(run_id))


def test_cancel_running_run_kills_process_group(celery_worker, queue_name):
    store = Store.default()
    cfg = parse_config(tiny_simclr(epochs=200, log_every=1))
    run_id = submit(cfg, name="to-cancel", store=store, queue=queue_name)
    wait_for_status(store, run_id, {"running"}, 120)
    deadline = time.monotonic() + 120
    while store.last_metric(run_id, "loss") is None and time.monotonic() < deadline:
        time.sleep(0.3)
    cancel(run_id, store=store)
    assert wait_for_status(store, run_id, {"cancelled", "failed", "succeeded"}, 120) == "cancelled"
    # every process that ran the training (launcher and ranks) is gone
    assert training_processes(run_id) == [], "processes left behind"


def training_processes(run_id: str) -> list[str]:
    """Command lines of live processes that train `run_id` (launcher, torchrun, ranks)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "sslengine.train" in cmd and run_id in cmd and p.info["status"] != "zombie":
            found.append(cmd)
    return found


def training_pids(run_id: str) -> list[int]:
    """Pids of the live processes that train `run_id`."""
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "status"])
        if "sslengine.train" in " ".join(p.info["cmdline"] or [])
        and run_id in " ".join(p.info["cmdline"] or [])
        and p.info["status"] != "zombie"
    ]


def test_a_submit_goes_to_the_broker_redis_url_names_now(ssl_home, idle_queue, redis_url):
    """The Celery app reads REDIS_URL once, when it is imported; a submit must reach the broker
    `check_broker` just reached, not the URL of import time (nothing listens on port 1)."""
    name, client = idle_queue
    script = f"""
import os
os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"
import tasks.celery_app  # configured with a broker that is not there
os.environ["REDIS_URL"] = {redis_url!r}
from tasks.submit import submit
print(submit({tiny_simclr()!r}, queue={name!r}))
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert client.llen(name) == 1
    assert Store.default().get_run(r.stdout.strip().splitlines()[-1]).status == "queued"


def test_unreachable_broker_names_url_and_queues_nothing(ssl_home, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    store = Store.default()
    before = len(store.list_runs())
    with pytest.raises(BrokerUnavailable, match=r"redis://127.0.0.1:1/0"):
        submit(parse_config(tiny_simclr()), store=store)
    assert len(store.list_runs()) == before
