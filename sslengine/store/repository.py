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
from sqlalchemy import Connection, Engine, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL

from sslengine.store.db import get_engine
from sslengine.store.downsample import minmax_downsample
from sslengine.store.models import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    EvalResult,
    Metric,
    Run,
)

_RUNS = Run.__table__
_METRICS = Metric.__table__
_CHECKPOINTS = Checkpoint.__table__
_EVALS = EvalResult.__table__

# Rows per executemany call: the drivers fold rows into multi-row statements, and this keeps
# each one far below SQLite's 32766 bound-parameter limit (5 per row).
_METRIC_CHUNK = 2000


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
    ) -> list[RunRecord]:
        """Runs newest first. ``search`` is a case-insensitive substring of the id, name,
        notes, method, dataset or backbone."""
        query = select(_RUNS)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for value in statuses:
                _check_status(value)
            query = query.where(_RUNS.c.status.in_(statuses))
        if owner is not None:
            query = query.where(_RUNS.c.owner == owner)
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
        with self._tx() as connection:
            keys = connection.execute(
                select(_METRICS.c.key).where(_METRICS.c.run_id == run_id).distinct()
            ).scalars()
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
            rows = connection.execute(query.order_by(_METRICS.c.step)).all()
        if not rows:
            return [], []
        steps = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        # dtype=float turns the NULLs that stand for NaN back into NaN.
        values = np.array([r[1] for r in rows], dtype=np.float64)
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
        return int(row[0]), math.nan if row[1] is None else float(row[1])

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
        query = select(_EVALS)
        if run_id is not None:
            query = query.where(_EVALS.c.run_id == run_id)
        if kind is not None:
            query = query.where(_EVALS.c.kind == kind)
        with self._tx() as connection:
            rows = connection.execute(query.order_by(_EVALS.c.id))
            return [_row_to(EvalResultRecord, row) for row in rows]
