"""A watchdog thread in every worker: marks runs of dead workers `lost` and re-queues them.

Settings: SSL_HEARTBEAT_TIMEOUT (s, default 60), SSL_WATCHDOG_INTERVAL (s, default 15),
SSL_AUTO_RESUME (default 1; 0 leaves lost runs for a one-click resume in the dashboard).
"""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_ready, worker_shutdown

log = logging.getLogger(__name__)
_stop = threading.Event()


def watchdog_pass() -> list[str]:
    from sslengine.store import Store
    from sslengine.train.supervisor import heartbeat_timeout_s
    from sslengine.train.watchdog import reap_lost_runs
    from tasks.submit import enqueue

    store = Store.default()
    lost = reap_lost_runs(store, heartbeat_timeout_s())
    if os.environ.get("SSL_AUTO_RESUME", "1") != "0":
        for run_id in lost:
            store.set_status(run_id, "queued")
            enqueue(run_id)
            log.warning("re-queued lost run %s; it resumes from its last checkpoint", run_id)
    return lost


def _loop(interval_s: float) -> None:
    while not _stop.wait(interval_s):
        try:
            watchdog_pass()
        except Exception as err:  # noqa: BLE001 - the watchdog must outlive store blips
            log.warning("watchdog pass failed: %s", err)


@worker_ready.connect
def _start(**_kwargs) -> None:
    interval = float(os.environ.get("SSL_WATCHDOG_INTERVAL", "15"))
    threading.Thread(target=_loop, args=(interval,), name="ssl-watchdog", daemon=True).start()


@worker_shutdown.connect
def _stop_thread(**_kwargs) -> None:
    _stop.set()
