"""Security defaults: JSON-only queue, weights-only checkpoints, owner checks, lost-run reaping."""

from __future__ import annotations

import os
import pickle
from datetime import UTC, datetime, timedelta

import pytest

from services_fixtures import tiny_simclr
from sslengine.store import Store
from sslengine.train.checkpoint import load_checkpoint
from sslengine.train.watchdog import reap_lost_runs
from tasks.celery_app import app
from tasks.submit import cancel, delete


def test_celery_accepts_json_only():
    assert app.conf.task_serializer == "json"
    assert list(app.conf.accept_content) == ["json"]
    assert list(app.conf.result_accept_content) == ["json"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ssl-pwned",))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "step_00000001.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    if os.path.exists("/tmp/ssl-pwned"):
        os.remove("/tmp/ssl-pwned")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/ssl-pwned")


def _run(store: Store, owner: str) -> str:
    return store.create_run(
        tiny_simclr(),
        name="owned",
        owner=owner,
        method="simclr",
        dataset="digits",
        backbone="small_resnet",
    )


def test_only_owner_or_admin_may_cancel_or_delete(ssl_home):
    store = Store.default()
    run_id = _run(store, "alice")
    with pytest.raises(PermissionError, match="belongs to alice"):
        cancel(run_id, store=store, user="bob")
    assert not store.cancel_requested(run_id)
    cancel(run_id, store=store, user="alice")
    assert store.get_run(run_id).status == "cancelled"
    with pytest.raises(PermissionError):
        delete(run_id, store=store, user="bob")
    delete(run_id, store=store, user="carol", is_admin=True)
    assert store.get_run(run_id) is None


def test_watchdog_marks_only_stale_supervised_runs_lost(ssl_home):
    store = Store.default()
    stale, fresh, terminal_run = _run(store, "a"), _run(store, "a"), _run(store, "a")
    for rid in (stale, fresh, terminal_run):
        store.set_status(rid, "running")
        assert store.acquire_lease(rid, "worker-1", 60)
        store.heartbeat(rid, "host-1")
    unsupervised = _run(store, "a")  # e.g. `sslengine pretrain` in a terminal: no lease
    store.set_status(unsupervised, "running")
    store.set_status(terminal_run, "succeeded")
    later = datetime.now(UTC) + timedelta(seconds=30)
    store.heartbeat(fresh, "host-1")
    lost = reap_lost_runs(store, timeout_s=20, now=later)
    assert stale in lost and fresh in lost  # both beat > 20 s before `later`
    assert unsupervised not in lost and terminal_run not in lost
    run = store.get_run(stale)
    assert run.status == "lost" and "no heartbeat from worker host-1" in run.error
    assert run.lease_owner is None
    assert reap_lost_runs(store, timeout_s=20, now=later) == []  # idempotent
    # a heartbeat within the timeout keeps a run alive
    alive = _run(store, "a")
    store.set_status(alive, "running")
    store.acquire_lease(alive, "worker-2", 60)
    store.heartbeat(alive, "host-2")
    assert reap_lost_runs(store, timeout_s=20) == []
