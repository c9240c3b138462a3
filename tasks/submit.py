"""Submitting a run: validate, record it as `queued`, then enqueue its id.

The broker is checked before anything is written, so an unreachable Redis gives a message with
its URL and leaves no orphan `queued` row behind.
"""

from __future__ import annotations

from sslengine.config import ExperimentConfig, parse_config
from sslengine.settings import redis_url
from sslengine.store import Store


class BrokerUnavailable(RuntimeError):
    pass


def check_broker(url: str | None = None, timeout_s: float = 2.0) -> None:
    import redis

    url = url or redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
    except Exception as err:  # noqa: BLE001 - any failure means: cannot queue
        raise BrokerUnavailable(
            f"cannot reach Redis at {url} ({err.__class__.__name__}: {err}); is the broker running?"
        ) from None


def submit(
    config: ExperimentConfig | dict,
    name: str = "",
    notes: str = "",
    owner: str = "local",
    store: Store | None = None,
    queue: str | None = None,
) -> str:
    cfg = config if isinstance(config, ExperimentConfig) else parse_config(config)
    check_broker()
    store = store or Store.default()
    run_id = store.create_run(
        cfg.model_dump(mode="json"),
        name=name or cfg.name or f"{cfg.method}-{cfg.dataset.name}",
        notes=notes,
        owner=owner,
        method=cfg.method,
        dataset=cfg.dataset.name,
        backbone=cfg.backbone.name,
    )
    enqueue(run_id, queue=queue)
    return run_id


def send(task, **options) -> str:
    """`task.apply_async(**options)` on a connection to the broker at REDIS_URL as it is now
    (what `check_broker` just reached), not the URL the Celery app read when it was imported;
    returns the task id."""
    from tasks.celery_app import app

    with app.connection_for_write(redis_url()) as connection:
        return task.apply_async(connection=connection, **options).id


def enqueue(run_id: str, queue: str | None = None) -> str:
    from tasks.pretrain import pretrain_run

    return send(pretrain_run, args=[run_id], queue=queue)


def check_permission(run, user: str | None, is_admin: bool, action: str) -> None:
    """Only a run's owner or an admin may cancel, resume or delete it (user None: local mode)."""
    if user is not None and not is_admin and run.owner != user:
        raise PermissionError(f"{user} may not {action} run {run.id}: it belongs to {run.owner}")


def _get(store: Store, run_id: str):
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"run {run_id} does not exist")
    return run


def cancel(
    run_id: str, store: Store | None = None, user: str | None = None, is_admin: bool = False
) -> None:
    """Set the cancel flag; a queued run is cancelled at once, a running one between steps."""
    store = store or Store.default()
    run = _get(store, run_id)
    check_permission(run, user, is_admin, "cancel")
    store.request_cancel(run_id)
    if run.status == "queued":
        store.set_status(run_id, "cancelled")


def resume(
    run_id: str,
    store: Store | None = None,
    queue: str | None = None,
    user: str | None = None,
    is_admin: bool = False,
) -> None:
    """Queue a stopped run again; the worker resumes it from its latest checkpoint."""
    store = store or Store.default()
    run = _get(store, run_id)
    check_permission(run, user, is_admin, "resume")
    if run.status in ("queued", "running"):
        raise ValueError(f"run {run_id} is {run.status}; only a stopped run can be resumed")
    check_broker()
    store.set_status(run_id, "queued")
    enqueue(run_id, queue=queue)


def delete(
    run_id: str, store: Store | None = None, user: str | None = None, is_admin: bool = False
) -> None:
    """Delete a run's rows and its artifact folder (a live run must be cancelled first)."""
    from sslengine.store import remove_run_artifacts

    store = store or Store.default()
    run = _get(store, run_id)
    check_permission(run, user, is_admin, "delete")
    if run.status in ("queued", "running"):
        raise ValueError(f"run {run_id} is {run.status}; cancel it before deleting it")
    store.delete_run(run_id)
    remove_run_artifacts(run_id)
