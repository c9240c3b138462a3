"""Queue and worker status for the Runs page, from Celery's remote-control inspect.

A broadcast waits its whole timeout for replies, so the questions (active_queues, active,
reserved) are asked in parallel with one short timeout, after a sub-second broker check: an
unreachable Redis answers at once instead of stalling the page on connection retries. The
result is kept fresh by a background `QueueStatusPoller`, which pages read without waiting.

Broadcasts reach every worker on the broker, including ones serving other queues (another
deployment, a test session); only workers consuming this app's queue are counted, the others
are listed apart.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class QueueStatus:
    broker_error: str | None = None
    workers: list[str] = field(default_factory=list)  # consuming `queue`
    other_workers: list[str] = field(default_factory=list)  # answering, other queues only
    active: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reserved: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    waiting: int | None = None  # messages in the default queue no worker has taken yet
    queue: str = ""
    checked_at: float = 0.0
    elapsed_s: float = 0.0

    def task_rows(self) -> list[dict[str, Any]]:
        """One row per task a worker holds: worker, state, run id, task id, started."""
        rows = []
        for state, by_worker in (("running", self.active), ("reserved", self.reserved)):
            for worker, tasks in sorted(by_worker.items()):
                for t in tasks or []:
                    args = t.get("args") or []
                    started = t.get("time_start")
                    rows.append(
                        {
                            "worker": worker,
                            "state": state,
                            "run": str(args[0]) if args else "",
                            "task": t.get("name", ""),
                            "task id": t.get("id", ""),
                            "started": time.strftime("%H:%M:%S", time.localtime(started))
                            if started
                            else "",
                        }
                    )
        return rows


def fetch_queue_status(timeout_s: float = 0.7, broker_timeout_s: float = 0.3) -> QueueStatus:
    """Ask the broker and the workers; never takes much more than the two timeouts."""
    from tasks.celery_app import DEFAULT_QUEUE, app
    from tasks.submit import BrokerUnavailable, check_broker

    t0 = time.monotonic()
    queue = str(app.conf.task_default_queue or DEFAULT_QUEUE)
    status = QueueStatus(queue=queue, checked_at=time.time())
    try:
        check_broker(timeout_s=broker_timeout_s)
    except BrokerUnavailable as err:
        status.broker_error = str(err)
        status.elapsed_s = time.monotonic() - t0
        return status
    try:
        import redis

        from sslengine.settings import redis_url

        client = redis.Redis.from_url(
            redis_url(), socket_connect_timeout=broker_timeout_s, socket_timeout=broker_timeout_s
        )
        status.waiting = int(client.llen(queue))
    except Exception:  # noqa: BLE001 - the count is a nicety; the rest still answers
        status.waiting = None

    def ask(what: str) -> dict[str, Any]:
        inspector = app.control.inspect(timeout=timeout_s)
        return getattr(inspector, what)() or {}

    with ThreadPoolExecutor(3) as pool:
        futures = {w: pool.submit(ask, w) for w in ("active_queues", "active", "reserved")}
        answers: dict[str, dict[str, Any]] = {}
        for what, fut in futures.items():
            try:
                answers[what] = fut.result(timeout=timeout_s + 2.0)
            except Exception as err:  # noqa: BLE001 - report, do not raise into the page
                answers[what] = {}
                status.broker_error = status.broker_error or f"inspect {what} failed: {err}"
    ours = {
        worker
        for worker, queues in answers["active_queues"].items()
        if any(q.get("name") == queue for q in queues or [])
    }
    status.workers = sorted(ours)
    status.other_workers = sorted(set(answers["active_queues"]) - ours)
    status.active = {w: t for w, t in answers["active"].items() if w in ours}
    status.reserved = {w: t for w, t in answers["reserved"].items() if w in ours}
    status.elapsed_s = time.monotonic() - t0
    return status


class QueueStatusPoller:
    """Keeps a recent `QueueStatus` for every page view to read without waiting: a daemon
    thread asks every `interval_s` seconds, so ten sessions loading the Runs page cost the
    broker one broadcast per interval and none of them waits for a broadcast's timeout
    (stale-while-revalidate). Only the first read of a new poller waits, for its first answer.
    """

    def __init__(self, interval_s: float = 5.0, timeout_s: float = 0.7):
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._latest: QueueStatus | None = None
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="queue-status", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self._latest = fetch_queue_status(timeout_s=self.timeout_s)
            except Exception as err:  # noqa: BLE001 - shown on the page, retried next interval
                self._latest = QueueStatus(broker_error=str(err), checked_at=time.time())
            self._first.set()
            time.sleep(self.interval_s)

    def latest(self) -> QueueStatus:
        self._first.wait(self.timeout_s + 5.0)
        return self._latest or QueueStatus(broker_error="no answer yet", checked_at=time.time())
