"""Multi-process runs through the real worker: DDP on gloo, resume across world sizes, failures.

The maths of each method under DDP is checked in test_methods_distributed.py; here the whole
path is exercised: Celery task -> supervisor -> launcher -> torchrun -> 2 gloo ranks.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from test_queue_integration import training_processes

from services_fixtures import tiny_simclr, wait_for_status
from sslengine.config import parse_config
from sslengine.store import Store
from sslengine.train.checkpoint import load_checkpoint
from tasks.submit import resume, submit

pytestmark = [pytest.mark.integration, pytest.mark.distributed, pytest.mark.slow]


def _rank_pids(run_id: str) -> dict[int, int]:
    """{rank: pid} of the entry processes of a run (rank read from their environment)."""
    ranks = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "sslengine.train.entry" in cmd and run_id in cmd:
            try:
                env = p.environ()
            except psutil.Error:
                continue
            if "RANK" in env:
                ranks[int(env["RANK"])] = p.pid
    return ranks


def test_two_process_run_then_resume_in_one_process(celery_worker, queue_name):
    """2 ranks train to step 8 and stop; the same run resumes with 1 process to step 12."""
    store = Store.default()
    cfg = parse_config(tiny_simclr(devices=2, max_steps=8, checkpoint_every=4, log_every=2))
    run_id = submit(cfg, name="ddp-2", store=store, queue=queue_name)
    assert wait_for_status(store, run_id, {"succeeded", "failed"}, 300) == "succeeded", (
        store.get_run(run_id).error
    )
    steps, _ = store.metric_series(run_id, "loss")
    assert steps == sorted(set(steps)) and steps[-1] == 8  # one series, written by rank 0 only
    ckpt = store.latest_checkpoint(run_id)
    state = load_checkpoint(ckpt.path)
    assert state["world_size"] == 2 and state["step"] == 8

    # continue the same run in a 1-process world, for more steps
    config = dict(store.get_run(run_id).config)
    config["train"] = {**config["train"], "devices": 1, "max_steps": 12}
    store.update_run(run_id, config=config)
    resume(run_id, store=store, queue=queue_name)
    assert wait_for_status(store, run_id, {"succeeded", "failed"}, 300) == "succeeded", (
        store.get_run(run_id).error
    )
    steps, _ = store.metric_series(run_id, "loss")
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no step written twice
    assert load_checkpoint(store.latest_checkpoint(run_id).path)["world_size"] == 1


def test_one_process_checkpoint_resumes_in_two_processes(celery_worker, queue_name):
    store = Store.default()
    cfg = parse_config(tiny_simclr(devices=1, max_steps=4, checkpoint_every=4, log_every=2))
    run_id = submit(cfg, name="ddp-1-then-2", store=store, queue=queue_name)
    assert wait_for_status(store, run_id, {"succeeded", "failed"}, 300) == "succeeded"
    config = dict(store.get_run(run_id).config)
    config["train"] = {**config["train"], "devices": 2, "max_steps": 8}
    store.update_run(run_id, config=config)
    resume(run_id, store=store, queue=queue_name)
    assert wait_for_status(store, run_id, {"succeeded", "failed"}, 300) == "succeeded", (
        store.get_run(run_id).error
    )
    state = load_checkpoint(store.latest_checkpoint(run_id).path)
    assert state["world_size"] == 2 and state["step"] == 8


def test_killing_one_rank_fails_the_run_and_leaves_nothing(celery_worker, queue_name):
    store = Store.default()
    cfg = parse_config(tiny_simclr(devices=2, epochs=300, log_every=1))
    run_id = submit(cfg, name="ddp-kill", store=store, queue=queue_name)
    wait_for_status(store, run_id, {"running"}, 120)
    deadline = time.monotonic() + 120
    while store.last_metric(run_id, "loss") is None and time.monotonic() < deadline:
        time.sleep(0.3)
    ranks = _rank_pids(run_id)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed_at = time.monotonic()
    assert wait_for_status(store, run_id, {"failed", "succeeded", "cancelled"}, 120) == "failed"
    took = time.monotonic() - killed_at
    run = store.get_run(run_id)
    assert "rank" in (run.error or "").lower() or "signal" in (run.error or "").lower(), run.error
    assert training_processes(run_id) == []
    print(f"\nrun marked failed {took:.1f}s after SIGKILL of rank 1")


def test_more_devices_than_exist_is_refused_before_ranks_start(celery_worker, queue_name):
    store = Store.default()
    n = (os.cpu_count() or 1) + 1
    cfg = parse_config(tiny_simclr(devices=n, batch_size=64 * n))
    run_id = submit(cfg, name="too-many", store=store, queue=queue_name)
    assert wait_for_status(store, run_id, {"failed", "succeeded"}, 120) == "failed"
    assert f"asks for {n} processes" in store.get_run(run_id).error
    assert not store.metric_keys(run_id)
