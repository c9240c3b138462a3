"""The Celery application: Redis broker, JSON only, one task at a time per worker slot.

The store is the source of truth for a run's state; Celery is transport, so there is no
result backend. `acks_late` + `reject_on_worker_lost` let a run whose worker died be delivered
again; the run's lease in the store stops a redelivery from training it twice at once.
"""

from __future__ import annotations

import os

from celery import Celery

from sslengine.settings import redis_url

DEFAULT_QUEUE = os.environ.get("SSL_QUEUE", "ssl")

app = Celery("sslengine")
app.conf.update(
    broker_url=redis_url(),
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_accept_content=["json"],
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_default_queue=DEFAULT_QUEUE,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 7 * 24 * 3600},
    worker_hijack_root_logger=False,
    imports=["tasks.pretrain", "tasks.watchdog", "tasks.evaluate"],
)
