"""Faults that happen every week on a cluster, each with real parts: a SIGKILLed worker, a full
disk, a database that goes away for a few seconds."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from test_queue_integration import training_pids, training_processes

from services_fixtures import start_worker_process, stop_process_group, tiny_simclr, wait_for_status
from sslengine.config import parse_config
from sslengine.store import Store, run_artifact_dir
from sslengine.train.checkpoint import load_checkpoint
from sslengine.train.loop import pretrain
from sslengine.train.reporter import StoreReporter
from tasks.submit import enqueue

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _create(store: Store, cfg) -> str:
    return store.create_run(
        cfg.model_dump(mode="json"),
        name=cfg.name or "fault",
        method=cfg.method,
        dataset=cfg.dataset.name,
        backbone=cfg.backbone.name,
    )


def test_sigkilled_worker_run_is_lost_resumed_and_equals_uninterrupted(celery_worker, ssl_home):
    """Kill worker 2 (SIGKILL, whole process group) after a checkpoint: the training group dies
    with it, worker 1's watchdog marks the run lost and re-queues it, worker 1 resumes from the
    checkpoint; every step is logged exactly once and the final weights equal a straight run's."""
    store = Store.default()
    cfg = parse_config(tiny_simclr(max_steps=16, checkpoint_every=4, log_every=1))
    kill_queue = f"kill-{os.getpid()}"
    w2 = start_worker_process(kill_queue, ssl_home / "worker2.log", "w2")
    try:
        run_id = _create(store, cfg)
        enqueue(run_id, queue=kill_queue)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ck = store.latest_checkpoint(run_id)
            if ck is not None and ck.step >= 4:
                break
            time.sleep(0.2)
        assert store.get_run(run_id).status == "running"
        # training runs below the worker's priority (SSL_TRAIN_NICE, default 10)
        pids = training_pids(run_id)
        assert pids and all(os.getpriority(os.PRIO_PROCESS, p) >= 10 for p in pids)
        os.killpg(w2.pid, signal.SIGKILL)
    finally:
        stop_process_group(w2)
    time.sleep(3)
    assert training_processes(run_id) == [], "training outlived its SIGKILLed worker"
    assert wait_for_status(store, run_id, {"succeeded", "failed"}, 240) == "succeeded", (
        store.get_run(run_id).error
    )
    # lost -> queued -> running can pass between two polls: worker 1's watchdog log says it
    assert f"re-queued lost run {run_id}" in (ssl_home / "worker.log").read_text()
    steps, _ = store.metric_series(run_id, "loss")
    assert steps == list(range(1, 17))  # nothing lost, nothing duplicated

    # The uninterrupted reference trains the same way (a worker's training process, same thread
    # count): a run in this pytest process would differ by float reduction order alone.
    straight_id = _create(store, cfg)
    enqueue(straight_id)
    assert wait_for_status(store, straight_id, {"succeeded", "failed"}, 240) == "succeeded"
    a = load_checkpoint(store.latest_checkpoint(straight_id).path)["model"]
    b = load_checkpoint(store.latest_checkpoint(run_id).path)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_full_disk_fails_run_with_message_and_keeps_earlier_checkpoints(celery_worker, ssl_home):
    store = Store.default()
    cfg = parse_config(tiny_simclr(max_steps=8, checkpoint_every=4, log_every=2))
    run_id = _create(store, cfg)
    ckpts = run_artifact_dir(run_id) / "checkpoints"
    ckpts.mkdir(parents=True)
    # the step-8 checkpoint is written through /dev/full: a real ENOSPC from the kernel
    (ckpts / "step_00000008.pt.tmp").symlink_to("/dev/full")
    enqueue(run_id)
    assert wait_for_status(store, run_id, {"failed", "succeeded"}, 180) == "failed"
    assert "No space left on device" in store.get_run(run_id).error
    earlier = load_checkpoint(ckpts / "step_00000004.pt")
    assert earlier["step"] == 4
    assert not (ckpts / "step_00000008.pt").exists()


def test_database_outage_is_buffered_and_training_continues(
    pg_database_factory, pg_admin, ssl_home, tmp_path
):
    from sqlalchemy import text

    from sslengine.store import migrate

    url = pg_database_factory()
    migrate(url)
    store = Store(url)
    cfg = parse_config(tiny_simclr(epochs=2, max_steps=30, log_every=1, checkpoint_every=100))
    run_id = _create(store, cfg)
    dbname = url.rsplit("/", 1)[-1]
    blocked = threading.Event()

    def outage():
        while store.last_metric(run_id, "loss") is None:
            time.sleep(0.1)
        with pg_admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false'))
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
                )
            )
        blocked.set()
        time.sleep(4)
        with pg_admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true'))

    t = threading.Thread(target=outage)
    t.start()
    reporter = StoreReporter(store, run_id)
    pretrain(cfg, tmp_path / "ck", reporter=reporter)
    reporter.close()
    t.join()
    assert blocked.is_set()
    steps, _ = store.metric_series(run_id, "loss")
    assert steps == list(range(1, 31))


def test_unwritable_artifact_folder_fails_with_message(tmp_path, ssl_home):
    """A checkpoint folder that cannot be created (a file is in the way): the OSError text."""
    blocker = tmp_path / "ck"
    blocker.write_text("not a folder")
    cfg = parse_config(tiny_simclr(max_steps=2, checkpoint_every=1))
    with pytest.raises(OSError, match="ck"):
        pretrain(cfg, Path(blocker) / "checkpoints")


def test_redelivered_task_never_trains_a_run_twice(celery_worker, ssl_home, queue_name):
    """The same run id delivered again while it trains (a broker redelivery) goes to a second
    worker, which finds the run's lease held and returns without starting anything."""
    store = Store.default()
    w2 = start_worker_process(queue_name, ssl_home / "worker-dup.log", f"dup{os.getpid()}")
    try:
        cfg = parse_config(tiny_simclr(max_steps=20, log_every=1))
        run_id = _create(store, cfg)
        enqueue(run_id)
        wait_for_status(store, run_id, {"running"}, 120)
        enqueue(run_id)  # the duplicate delivery
        deadline = time.monotonic() + 60
        logs = ""
        while "'duplicate'" not in logs and time.monotonic() < deadline:
            time.sleep(0.5)
            logs = (ssl_home / "worker-dup.log").read_text() + (ssl_home / "worker.log").read_text()
        assert "'duplicate'" in logs
        assert wait_for_status(store, run_id, {"succeeded", "failed"}, 180) == "succeeded"
        steps, _ = store.metric_series(run_id, "loss")
        assert steps == list(range(1, 21))
    finally:
        stop_process_group(w2)
