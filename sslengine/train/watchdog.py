"""Heartbeat watchdog: a `running` run whose worker stopped heart-beating is `lost`.

The supervisor heart-beats every poll while its worker lives, so a stale heartbeat means the
worker (or its host) died. A lost run's lease is cleared so any worker may take it; the caller
(tasks.watchdog) re-queues it, and the new worker resumes from the last checkpoint. Metric
writes are idempotent on (run, step, key), so the steps replayed after that checkpoint
overwrite, never duplicate, what the dead worker had written.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sslengine.store import Store

log = logging.getLogger(__name__)


def reap_lost_runs(store: Store, timeout_s: float, now: datetime | None = None) -> list[str]:
    """Mark `lost` every running run without a heartbeat for `timeout_s`; return their ids."""
    now = now or datetime.now(UTC)
    lost = []
    for run in store.list_runs(status="running"):
        if run.lease_owner is None:
            continue  # not supervised by a worker (e.g. `sslengine pretrain` in a terminal)
        beat = run.heartbeat_at or run.started_at
        if beat is None:
            continue
        age = (now - beat).total_seconds()
        if age > timeout_s:
            store.set_status(
                run.id,
                "lost",
                error=f"no heartbeat from worker {run.worker_host or '?'} for {age:.0f} s",
            )
            store.update_run(run.id, lease_owner=None, lease_expires_at=None)
            log.warning("run %s lost (no heartbeat for %.0f s)", run.id, age)
            lost.append(run.id)
    return lost
