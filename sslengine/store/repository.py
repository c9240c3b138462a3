"""The store's API: every read and write of runs, metrics, checkpoints and evaluations.

Methods take and return plain values (frozen dataclasses, tuples, lists), never ORM objects,
so callers in other threads and processes never touch a detached session. Every method is
one short transaction: nothing is held open between calls, which keeps SQLite writers from
blocking each other for longer than one statement.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL

from sslengine.store.db import get_engine
from sslengine.store.downsample import minmax_downsample
from sslengine.store.models import (
    EVAL_JOB_STATUSES,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    EvalJob,
    EvalResult,
    Metric,
    Run,
)

_RUNS = Run.__table__
_METRICS = Metric.__table__
_CHECKPOINTS = Checkpoint.__table__
_EVALS = EvalResult.__table__
_EVAL_JOBS = EvalJob.__table__

# Rows per executemany call: the drivers fold rows into multi-row statements, and this keeps
# each one far below SQLite's 32766 bound-parameter limit (5 per row).
_METRIC_CHUNK = 2000
# Run ids per `last_metric_many` statement: far below SQLite's 32766 and PostgreSQL's 65535
# bound parameters. Keys per `last_metrics` statement: one UNION ALL branch per key, below
# SQLite's 500 compound SELECT terms.
_RUN_ID_CHUNK = 10_000
_KEY_CHUNK = 200

# Loose index scan (PostgreSQL wiki, "Loose indexscan"): walk the distinct keys of one run
# through the (run_id, key, step) primary key, one index seek per key, instead of reading
# every point of the run as SELECT DISTINCT does. Portable to SQLite and PostgreSQL.
_METRIC_KEYS_SQL = text(
    """
    WITH RECURSIVE run_keys(key) AS (
        SELECT (SELECT key FROM metrics WHERE run_id = :run_id ORDER BY key LIMIT 1)
        UNION ALL
        SELECT (
            SELECT m.key FROM metrics AS m
            WHERE m.run_id = :run_id AND m.key > run_keys.key
            ORDER BY m.key LIMIT 1
        )
        FROM run_keys WHERE run_keys.key IS NOT NULL
    )
    SELECT key FROM run_keys WHERE key IS NOT NULL
    """
)


class RunNotFound(KeyError):
    """No run with this id (it was never created, or it was deleted)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """12 hex characters of a uuid4: short enough for paths and URLs, 48 random bits."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class RunRecord:
    id: str
    name: str
    notes: str
    owner: str
    method: str
    dataset: str
    backbone: str
    status: str
    config: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_host: str | None
    heartbeat_at: datetime | None
    progress: float
    step: int
    total_steps: int
    eta_seconds: float | None
    error: str | None
    cancel_requested: bool
    task_id: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    log_path: str | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class CheckpointRecord:
    run_id: str
    step: int
    path: str
    created_at: datetime


@dataclass(frozen=True)
class EvalResultRecord:
    id: int
    run_id: str
    checkpoint_step: int | None
    kind: str
    layer: str | None
    metrics: dict[str, Any]
    artifact_path: str | None
    created_at: datetime


@dataclass(frozen=True)
class EvalJobRecord:
    """An evaluation requested through the queue (see ``models.EvalJob``)."""

    id: int
    run_id: str
    kind: str
    checkpoint_step: int | None
    layer: str | None
    params: dict[str, Any]
    all_checkpoints: bool
    status: str
    error: str | None
    task_id: str | None
    worker_host: str | None
    log_path: str | None
    result_ids: list[int] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))
# ``id`` names the row and ``created_at`` orders the run list: neither is rewritten.
_UPDATABLE_RUN_FIELDS = frozenset(_RUN_FIELDS) - {"id", "created_at"}


def nan_to_none(value: float) -> float | None:
    """SQLite turns NaN into NULL; do it on every backend so both read back the same way."""
    return None if math.isnan(value) else value


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")


def _row_to(cls: type, row: Any) -> Any:
    mapping = row._mapping
    return cls(**{f.name: mapping[f.name] for f in fields(cls)})


def _driver_rows(connection: Connection, query: Select) -> list[tuple[Any, ...]]:
    """The rows of ``query`` as the DBAPI driver returns them (plain tuples).

    For long metric series: SQLAlchemy builds a ``Row`` per point, which costs about twice
    the database's own time for a 100,000-point series (bench/dashboard_data.py). The
    statement is still built and compiled by SQLAlchemy for the connection's dialect; only
    the bind and result processing is skipped, so use it only where neither parameters nor
    columns need a type conversion (strings, integers, floats).
    """
    compiled = query.compile(dialect=connection.dialect)
    params: Any = compiled.construct_params()
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup or ())
    cursor = connection.connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


_POINT = np.dtype([("step", np.int64), ("value", np.float64)])


def _point(step: Any, value: Any) -> tuple[int, float]:
    return int(step), math.nan if value is None else float(value)


class Store:
    """Repository over one database (SQLite file or PostgreSQL).

    ``Store(url)`` or ``Store(engine)``; ``Store.default()`` uses ``SSL_DATABASE_URL``.
    The schema must exist: call :func:`sslengine.store.migrate` first.
    """

    def __init__(self, url_or_engine: str | URL | Engine | None = None) -> None:
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
        else:
            self.engine = get_engine(url_or_engine)

    @classmethod
    def default(cls) -> Store:
        return cls(None)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    def _insert(self, table: Any) -> Any:
        # Upserts are dialect-specific (INSERT ... ON CONFLICT DO UPDATE on both backends).
        name = self.engine.dialect.name
        if name == "sqlite":
            return sqlite.insert(table)
        if name == "postgresql":
            return postgresql.insert(table)
        raise NotImplementedError(f"upsert not implemented for dialect {name!r}")

    # ----------------------------------------------------------------- runs

    def create_run(
        self,
        config: dict[str, Any],
        *,
        name: str,
        notes: str = "",
        owner: str = "local",
        method: str,
        dataset: str,
        backbone: str,
        total_steps: int = 0,
    ) -> str:
        """Insert a ``queued`` run and return its id."""
        run_id = new_run_id()
        with self._tx() as connection:
            connection.execute(
                _RUNS.insert().values(
                    id=run_id,
                    name=name,
                    notes=notes,
                    owner=owner,
                    method=method,
                    dataset=dataset,
                    backbone=backbone,
                    status="queued",
                    config=config,
                    created_at=utcnow(),
                    progress=0.0,
                    step=0,
                    total_steps=total_steps,
                    cancel_requested=False,
                )
            )
        return run_id

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._tx() as connection:
            row = connection.execute(select(_RUNS).where(_RUNS.c.id == run_id)).first()
        return None if row is None else _row_to(RunRecord, row)

    def list_runs(
        self,
        status: str | Iterable[str] | None = None,
        owner: str | None = None,
        search: str | None = None,
        limit: int = 500,
        method: str | None = None,
    ) -> list[RunRecord]:
        """Runs newest first. ``search`` is a case-insensitive substring of the id, name,
        notes, method, dataset or backbone; ``method`` an exact method name."""
        query = select(_RUNS)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for value in statuses:
                _check_status(value)
            query = query.where(_RUNS.c.status.in_(statuses))
        if owner is not None:
            query = query.where(_RUNS.c.owner == owner)
        if method is not None:
            query = query.where(_RUNS.c.method == method)
        if search:
            needle = search.lower()
            columns = ("id", "name", "notes", "method", "dataset", "backbone")
            query = query.where(
                or_(*(func.lower(_RUNS.c[c]).contains(needle, autoescape=True) for c in columns))
            )
        query = query.order_by(_RUNS.c.created_at.desc(), _RUNS.c.id.desc()).limit(limit)
        with self._tx() as connection:
            return [_row_to(RunRecord, row) for row in connection.execute(query)]

    def update_run(self, run_id: str, **values: Any) -> None:
        """Set any run fields except ``id`` and ``created_at``."""
        unknown = set(values) - _UPDATABLE_RUN_FIELDS
        if unknown:
            raise ValueError(f"cannot update run fields {sorted(unknown)}")
        if "status" in values:
            _check_status(values["status"])
        if "progress" in values and not 0.0 <= values["progress"] <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {values['progress']}")
        if values:
            self._update(run_id, values)

    def _update(self, run_id: str, values: dict[str, Any]) -> None:
        with self._tx() as connection:
            result = connection.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(**values))
        if result.rowcount == 0:
            raise RunNotFound(run_id)

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Move a run to ``status`` and keep its timestamps consistent.

        ``queued`` clears the previous attempt's end, error and cancel flag (a resubmit);
        ``running`` sets ``started_at`` once (a resumed run keeps its first start);
        terminal statuses set ``finished_at`` and ``error``; ``succeeded`` sets progress 1.
        """
        _check_status(status)
        now = utcnow()
        values: dict[str, Any] = {"status": status}
        if status == "queued":
            values.update(finished_at=None, error=None, cancel_requested=False)
        elif status == "running":
            values.update(
                started_at=func.coalesce(
                    _RUNS.c.started_at, bindparam("now", now, type_=_RUNS.c.started_at.type)
                ),
                finished_at=None,
                error=None,
            )
        else:
            values.update(finished_at=now, error=error)
            if status == "succeeded":
                values.update(progress=1.0, eta_seconds=0.0)
        self._update(run_id, values)

    def request_cancel(self, run_id: str) -> None:
        """Raise the cancel flag; rank 0 polls it between steps and stops cleanly."""
        self._update(run_id, {"cancel_requested": True})

    def cancel_requested(self, run_id: str) -> bool:
        with self._tx() as connection:
            flag = connection.execute(
                select(_RUNS.c.cancel_requested).where(_RUNS.c.id == run_id)
            ).scalar_one_or_none()
        if flag is None:
            raise RunNotFound(run_id)
        return bool(flag)

    def heartbeat(self, run_id: str, host: str) -> None:
        self._update(run_id, {"worker_host": host, "heartbeat_at": utcnow()})

    def acquire_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew) the run's lease for ``ttl_s`` seconds; False if another owner
        holds an unexpired one.

        One conditional UPDATE, so two workers racing for the same run cannot both win:
        PostgreSQL re-checks the WHERE clause on the row it locked, SQLite serialises
        writers. Expiry uses the caller's clock, so hosts need synchronised clocks (NTP)
        and ``ttl_s`` should be far above their skew.
        """
        now = utcnow()
        with self._tx() as connection:
            result = connection.execute(
                update(_RUNS)
                .where(
                    _RUNS.c.id == run_id,
                    or_(
                        _RUNS.c.lease_owner.is_(None),
                        _RUNS.c.lease_owner == owner,
                        _RUNS.c.lease_expires_at.is_(None),
                        _RUNS.c.lease_expires_at < now,
                    ),
                )
                .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s))
            )
        return result.rowcount == 1

    def release_lease(self, run_id: str, owner: str) -> bool:
        """Drop the lease if ``owner`` holds it; returns whether it did."""
        with self._tx() as connection:
            result = connection.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id, _RUNS.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
        return result.rowcount == 1

    def delete_run(self, run_id: str) -> bool:
        """Delete the run; its metrics, checkpoints and evaluations go with it (ON DELETE
        CASCADE). Artifacts on disk are the caller's: see ``remove_run_artifacts``."""
        with self._tx() as connection:
            result = connection.execute(delete(_RUNS).where(_RUNS.c.id == run_id))
        return result.rowcount == 1

    # ----------------------------------------------------------------- metrics

    def log_metrics(self, run_id: str, rows: Iterable[tuple[int, str, float, float]]) -> int:
        """Write ``(step, key, value, wall_time)`` points; returns how many distinct points.

        Idempotent on ``(run, key, step)``: a point written again (a resumed run replaying
        steps) replaces the stored one, last value wins, also within one call.
        """
        latest: dict[tuple[int, str], dict[str, Any]] = {}
        for step, key, value, wall_time in rows:
            # PostgreSQL refuses an upsert batch that touches one row twice: dedupe here.
            latest[(int(step), str(key))] = {
                "run_id": run_id,
                "key": str(key),
                "step": int(step),
                "value": nan_to_none(float(value)),
                "wall_time": float(wall_time),
            }
        if not latest:
            return 0
        insert = self._insert(_METRICS)
        upsert = insert.on_conflict_do_update(
            index_elements=["run_id", "key", "step"],
            set_={"value": insert.excluded.value, "wall_time": insert.excluded.wall_time},
        )
        params = list(latest.values())
        with self._tx() as connection:
            for start in range(0, len(params), _METRIC_CHUNK):
                connection.execute(upsert, params[start : start + _METRIC_CHUNK])
        return len(params)

    def metric_keys(self, run_id: str) -> list[str]:
        """The run's series names, sorted; one index seek per key, whatever their length."""
        with self._tx() as connection:
            keys = connection.execute(_METRIC_KEYS_SQL, {"run_id": run_id}).scalars()
            return sorted(keys)

    def metric_series(
        self,
        run_id: str,
        key: str,
        max_points: int | None = None,
        start_step: int | None = None,
    ) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one series in step order, NaN where NaN was logged.

        Longer than ``max_points`` -> min/max downsampled here, before it is sent anywhere.
        """
        query = select(_METRICS.c.step, _METRICS.c.value).where(
            _METRICS.c.run_id == run_id, _METRICS.c.key == key
        )
        if start_step is not None:
            query = query.where(_METRICS.c.step >= start_step)
        with self._tx() as connection:
            rows = _driver_rows(connection, query.order_by(_METRICS.c.step))
        if not rows:
            return [], []
        # A float field turns the NULLs that stand for NaN back into NaN.
        data = np.fromiter(rows, dtype=_POINT, count=len(rows))
        steps, values = data["step"], data["value"]
        if max_points is not None and len(rows) > max_points:
            steps, values = minmax_downsample(steps, values, max_points)
        return steps.tolist(), values.tolist()

    def last_metric(self, run_id: str, key: str) -> tuple[int, float] | None:
        with self._tx() as connection:
            row = connection.execute(
                select(_METRICS.c.step, _METRICS.c.value)
                .where(_METRICS.c.run_id == run_id, _METRICS.c.key == key)
                .order_by(_METRICS.c.step.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return _point(row[0], row[1])

    def last_metrics(self, run_id: str, keys: Iterable[str]) -> dict[str, tuple[int, float]]:
        """``{key: (step, value)}`` of the last point of each of ``keys`` the run has logged
        (keys it has not logged are absent), in one statement: per key, an index seek for its
        last step, then the point at that step."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, tuple[int, float]] = {}
        with self._tx() as connection:
            for start in range(0, len(wanted), _KEY_CHUNK):
                branches = []
                for key in wanted[start : start + _KEY_CHUNK]:
                    last_step = (
                        select(func.max(_METRICS.c.step))
                        .where(_METRICS.c.run_id == run_id, _METRICS.c.key == key)
                        .scalar_subquery()
                    )
                    branches.append(
                        select(
                            literal(key, _METRICS.c.key.type).label("key"),
                            _METRICS.c.step,
                            _METRICS.c.value,
                        ).where(
                            _METRICS.c.run_id == run_id,
                            _METRICS.c.key == key,
                            _METRICS.c.step == last_step,
                        )
                    )
                query = branches[0] if len(branches) == 1 else union_all(*branches)
                for key, step, value in connection.execute(query):
                    found[key] = _point(step, value)
        return found

    def last_metric_many(self, run_ids: Iterable[str], key: str) -> dict[str, tuple[int, float]]:
        """``{run_id: (step, value)}``: the last point of series ``key`` of each run, in one
        statement (a list page's column); runs without that series are absent.

        Per run an index seek finds the last step (MAX over the primary key's prefix), then
        the point at that step is joined: no series is scanned, however long.
        """
        ids = list(dict.fromkeys(run_ids))
        found: dict[str, tuple[int, float]] = {}
        with self._tx() as connection:
            for start in range(0, len(ids), _RUN_ID_CHUNK):
                last_step = (
                    select(func.max(_METRICS.c.step))
                    .where(_METRICS.c.run_id == _RUNS.c.id, _METRICS.c.key == key)
                    .scalar_subquery()
                )
                latest = (
                    select(_RUNS.c.id.label("run_id"), last_step.label("step"))
                    .where(_RUNS.c.id.in_(ids[start : start + _RUN_ID_CHUNK]))
                    .subquery("latest")
                )
                query = select(_METRICS.c.run_id, _METRICS.c.step, _METRICS.c.value).join_from(
                    latest,
                    _METRICS,
                    (_METRICS.c.run_id == latest.c.run_id)
                    & (_METRICS.c.key == key)
                    & (_METRICS.c.step == latest.c.step),
                )
                for run_id, step, value in connection.execute(query):
                    found[run_id] = _point(step, value)
        return found

    # ----------------------------------------------------------------- checkpoints

    def add_checkpoint(self, run_id: str, step: int, path: str) -> None:
        """Record a checkpoint; saving the same step again (after a resume) replaces it."""
        insert = self._insert(_CHECKPOINTS)
        upsert = insert.on_conflict_do_update(
            index_elements=["run_id", "step"],
            set_={"path": insert.excluded.path, "created_at": insert.excluded.created_at},
        )
        with self._tx() as connection:
            connection.execute(
                upsert, {"run_id": run_id, "step": step, "path": str(path), "created_at": utcnow()}
            )

    def list_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        with self._tx() as connection:
            rows = connection.execute(
                select(_CHECKPOINTS)
                .where(_CHECKPOINTS.c.run_id == run_id)
                .order_by(_CHECKPOINTS.c.step)
            )
            return [_row_to(CheckpointRecord, row) for row in rows]

    def latest_checkpoint(self, run_id: str) -> CheckpointRecord | None:
        with self._tx() as connection:
            row = connection.execute(
                select(_CHECKPOINTS)
                .where(_CHECKPOINTS.c.run_id == run_id)
                .order_by(_CHECKPOINTS.c.step.desc())
                .limit(1)
            ).first()
        return None if row is None else _row_to(CheckpointRecord, row)

    # ----------------------------------------------------------------- evaluations

    def add_eval_result(
        self,
        run_id: str,
        kind: str,
        metrics: dict[str, Any],
        *,
        checkpoint_step: int | None = None,
        layer: str | None = None,
        artifact_path: str | None = None,
    ) -> int:
        """Record one evaluation (``kind`` e.g. knn, probe, finetune, retrieval, clusters);
        returns its id."""
        with self._tx() as connection:
            result = connection.execute(
                _EVALS.insert()
                .values(
                    run_id=run_id,
                    checkpoint_step=checkpoint_step,
                    kind=kind,
                    layer=layer,
                    metrics=metrics,
                    artifact_path=None if artifact_path is None else str(artifact_path),
                    created_at=utcnow(),
                )
                .returning(_EVALS.c.id)
            )
            return int(result.scalar_one())

    def list_eval_results(
        self, run_id: str | None = None, kind: str | None = None
    ) -> list[EvalResultRecord]:
        """Evaluations in the order they were recorded, optionally of one run / kind."""
        return self._list_by_id(_EVALS, EvalResultRecord, run_id=run_id, kind=kind)

    def _list_by_id(self, table: Any, record: type, **equal: Any) -> list[Any]:
        """Rows of `table` in id order as `record`s, where each non-None column filter holds."""
        query = select(table)
        for column, value in equal.items():
            if value is not None:
                query = query.where(table.c[column] == value)
        with self._tx() as connection:
            return [_row_to(record, row) for row in connection.execute(query.order_by(table.c.id))]

    # ----------------------------------------------------------------- evaluation jobs

    def create_eval_job(
        self,
        run_id: str,
        kind: str,
        *,
        checkpoint_step: int | None = None,
        layer: str | None = None,
        params: dict[str, Any] | None = None,
        all_checkpoints: bool = False,
        task_id: str | None = None,
    ) -> int:
        """Record a ``queued`` evaluation request; returns its id."""
        with self._tx() as connection:
            result = connection.execute(
                _EVAL_JOBS.insert()
                .values(
                    run_id=run_id,
                    kind=kind,
                    checkpoint_step=checkpoint_step,
                    layer=layer,
                    params=dict(params or {}),
                    all_checkpoints=bool(all_checkpoints),
                    status="queued",
                    task_id=task_id,
                    created_at=utcnow(),
                )
                .returning(_EVAL_JOBS.c.id)
            )
            return int(result.scalar_one())

    def set_eval_job_status(
        self,
        job_id: int,
        status: str,
        *,
        error: str | None = None,
        result_ids: Iterable[int] | None = None,
        worker_host: str | None = None,
        log_path: str | None = None,
    ) -> None:
        """Move an evaluation job to ``status``: ``running`` sets ``started_at`` (and the
        worker's host and log), the end states set ``finished_at``, ``error`` / ``result_ids``.
        Raises KeyError for an unknown id (its run was deleted, say)."""
        if status not in EVAL_JOB_STATUSES:
            raise ValueError(f"unknown evaluation job status {status!r}; expected one of "
                             f"{EVAL_JOB_STATUSES}")  # fmt: skip
        now = utcnow()
        values: dict[str, Any] = {"status": status}
        if status == "running":
            values.update(started_at=now, finished_at=None, error=None)
        elif status in ("succeeded", "failed"):
            values.update(finished_at=now, error=error)
        if result_ids is not None:
            values["result_ids"] = [int(i) for i in result_ids]
        if worker_host is not None:
            values["worker_host"] = worker_host
        if log_path is not None:
            values["log_path"] = str(log_path)
        with self._tx() as connection:
            result = connection.execute(
                update(_EVAL_JOBS).where(_EVAL_JOBS.c.id == job_id).values(**values)
            )
        if result.rowcount == 0:
            raise KeyError(f"evaluation job {job_id} does not exist")

    def get_eval_job(self, job_id: int) -> EvalJobRecord | None:
        with self._tx() as connection:
            row = connection.execute(select(_EVAL_JOBS).where(_EVAL_JOBS.c.id == job_id)).first()
        return None if row is None else _row_to(EvalJobRecord, row)

    def list_eval_jobs(
        self, run_id: str | None = None, status: str | None = None
    ) -> list[EvalJobRecord]:
        """Evaluation jobs in the order they were submitted, optionally of one run / status."""
        return self._list_by_id(_EVAL_JOBS, EvalJobRecord, run_id=run_id, status=status)
