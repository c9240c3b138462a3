"""Store tests: every database test runs on a SQLite file and on a real PostgreSQL."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc, func, make_url, select, text

from sslengine.store import (
    RunNotFound,
    Store,
    artifacts_root,
    database_url,
    get_engine,
    migrate,
    minmax_downsample,
    remove_run_artifacts,
    run_artifact_dir,
)
from sslengine.store.db import PG_MIGRATION_LOCK_KEY, alembic_config
from sslengine.store.models import Base, Checkpoint, EvalResult, Metric

REPO = Path(__file__).resolve().parents[1]


def _new_run(store: Store, **overrides) -> str:
    fields = {"name": "run", "method": "simclr", "dataset": "cifar10", "backbone": "resnet18"}
    fields.update(overrides)
    config = fields.pop("config", {"method": fields["method"], "lr": 0.3})
    return store.create_run(config, **fields)


def _count(store: Store, model, run_id: str) -> int:
    with store.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(model).where(model.run_id == run_id)
        ).scalar_one()


# ------------------------------------------------------------------------- schema / engine


def _schema_diff(url: str) -> list:
    with get_engine(url).connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def _current_revision(url: str) -> str | None:
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_migrated_schema_equals_models(store_url: str) -> None:
    assert _schema_diff(store_url) == []
    head = ScriptDirectory.from_config(alembic_config(store_url)).get_current_head()
    assert _current_revision(store_url) == head


@contextmanager
def _hold_migration_lock(url: str) -> Iterator[None]:
    """Take the database-wide lock ``migrate`` takes, from outside, on its own connection."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(url).database, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
    else:
        with get_engine(url).connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK_KEY}
                )
                connection.commit()


def test_concurrent_migrate_downgrade_and_upgrade_again(empty_db_url: str) -> None:
    assert _schema_diff(empty_db_url) != []  # really empty: the models are missing
    # Worker and app starting at once on a fresh database, as separate processes. Holding
    # the lock lines both up behind it, so after the release they race for real; without
    # the lock they would either finish early or both find no tables and both create them.
    script = "import sys; from sslengine.store import migrate; migrate(sys.argv[1])"
    with _hold_migration_lock(empty_db_url):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, empty_db_url],
                cwd=REPO,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        time.sleep(2.0)
        assert [proc.poll() for proc in procs] == [None, None]
        assert _schema_diff(empty_db_url) != []
    results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
    assert [code for code, _ in results] == [0, 0], results
    assert _schema_diff(empty_db_url) == []

    command.downgrade(alembic_config(empty_db_url), "base")
    assert _current_revision(empty_db_url) is None
    with get_engine(empty_db_url).connect() as connection:
        assert not get_engine(empty_db_url).dialect.has_table(connection, "runs")
    migrate(empty_db_url)
    assert _schema_diff(empty_db_url) == []


def test_product_code_never_calls_create_all() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("sslengine", "tasks", "app")
        for path in (REPO / folder).rglob("*.py")
        if "create_all(" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_database_url_defaults_and_rewrites(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SSL_DATABASE_URL", raising=False)
    monkeypatch.setenv("SSL_HOME", str(tmp_path))
    url = database_url()
    assert url.drivername == "sqlite"
    assert Path(url.database) == tmp_path / "var" / "ssl.db"

    monkeypatch.setenv("SSL_DATABASE_URL", "postgresql://u:p%40ss@db:5432/ssl")
    url = database_url()
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "u",
        "p@ss",
        "db",
        5432,
        "ssl",
    )
    # An explicit URL wins over the environment.
    assert database_url("sqlite:///x.db").database == "x.db"


def test_sqlite_engine_pragmas_and_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'dir' / 'ssl.db'}"
    engine = get_engine(url)
    assert engine is get_engine(url)
    assert (tmp_path / "nested" / "dir").is_dir()
    with engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA busy_timeout").scalar() == 30000
        assert pragma("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


# ------------------------------------------------------------------------- runs


def test_run_roundtrip(store: Store) -> None:
    before = datetime.now(UTC)
    config = {"method": "swav", "optim": {"lr": 0.6, "betas": [0.9, 0.99]}, "crops": [2, 6]}
    run_id = store.create_run(
        config,
        name="swav r18",
        notes="first try",
        owner="ana",
        method="swav",
        dataset="stl10",
        backbone="resnet18",
        total_steps=1000,
    )
    assert len(run_id) == 12 and int(run_id, 16) >= 0
    run = store.get_run(run_id)
    assert run is not None
    assert (run.name, run.notes, run.owner, run.method, run.dataset, run.backbone) == (
        "swav r18",
        "first try",
        "ana",
        "swav",
        "stl10",
        "resnet18",
    )
    assert run.config == config
    assert (run.status, run.progress, run.step, run.total_steps) == ("queued", 0.0, 0, 1000)
    assert run.cancel_requested is False
    assert run.created_at.tzinfo is not None and before <= run.created_at <= datetime.now(UTC)
    assert run.started_at is None and run.finished_at is None
    assert store.get_run("000000000000") is None


def test_set_status_timestamps(store: Store) -> None:
    run_id = _new_run(store)
    store.set_status(run_id, "running")
    started = store.get_run(run_id).started_at
    assert started is not None
    store.set_status(run_id, "failed", error="CUDA OOM")
    run = store.get_run(run_id)
    assert (run.status, run.error) == ("failed", "CUDA OOM")
    assert run.finished_at >= started and run.is_terminal

    # Resubmitted and resumed: the first start is kept, the failure is forgotten.
    store.request_cancel(run_id)
    store.set_status(run_id, "queued")
    run = store.get_run(run_id)
    assert (run.finished_at, run.error, run.cancel_requested) == (None, None, False)
    store.set_status(run_id, "running")
    assert store.get_run(run_id).started_at == started
    store.set_status(run_id, "succeeded")
    run = store.get_run(run_id)
    assert (run.status, run.progress, run.error) == ("succeeded", 1.0, None)

    with pytest.raises(ValueError, match="unknown run status"):
        store.set_status(run_id, "done")
    with pytest.raises(RunNotFound):
        store.set_status("000000000000", "running")


def test_update_run_validates(store: Store) -> None:
    run_id = _new_run(store)
    now = datetime.now(UTC)
    store.update_run(run_id, progress=0.25, step=250, eta_seconds=12.5, heartbeat_at=now)
    run = store.get_run(run_id)
    assert (run.progress, run.step, run.eta_seconds, run.heartbeat_at) == (0.25, 250, 12.5, now)
    with pytest.raises(ValueError, match="cannot update"):
        store.update_run(run_id, id="x")
    with pytest.raises(ValueError, match="progress"):
        store.update_run(run_id, progress=1.5)
    with pytest.raises(ValueError, match="unknown run status"):
        store.update_run(run_id, status="paused")
    with pytest.raises(exc.StatementError, match="naive datetime"):
        store.update_run(run_id, heartbeat_at=datetime.now())
    with pytest.raises(RunNotFound):
        store.update_run("000000000000", step=1)


def test_cancel_flag_and_heartbeat(store: Store) -> None:
    run_id = _new_run(store)
    assert store.cancel_requested(run_id) is False
    store.request_cancel(run_id)
    assert store.cancel_requested(run_id) is True
    with pytest.raises(RunNotFound):
        store.cancel_requested("000000000000")

    before = datetime.now(UTC)
    store.heartbeat(run_id, "gpu-host-3")
    run = store.get_run(run_id)
    assert run.worker_host == "gpu-host-3"
    assert before <= run.heartbeat_at <= datetime.now(UTC)


def test_lease_two_owners_and_expiry(store: Store) -> None:
    run_id = _new_run(store)
    assert store.acquire_lease(run_id, "worker-a", ttl_s=60)
    assert not store.acquire_lease(run_id, "worker-b", ttl_s=60)
    assert store.acquire_lease(run_id, "worker-a", ttl_s=60)  # renewal by the holder
    assert not store.release_lease(run_id, "worker-b")
    assert store.release_lease(run_id, "worker-a")
    assert store.get_run(run_id).lease_owner is None
    assert store.acquire_lease(run_id, "worker-b", ttl_s=0.3)
    assert not store.acquire_lease(run_id, "worker-a", ttl_s=60)
    time.sleep(0.5)  # worker-b died without releasing: its lease runs out
    assert store.acquire_lease(run_id, "worker-a", ttl_s=60)
    assert not store.acquire_lease(run_id, "worker-b", ttl_s=60)
    assert store.get_run(run_id).lease_owner == "worker-a"
    assert not store.acquire_lease("000000000000", "worker-a", ttl_s=60)


def test_lease_race_has_one_winner(store: Store) -> None:
    run_id = _new_run(store)
    barrier = threading.Barrier(4)
    wins: dict[str, bool] = {}

    def contend(owner: str) -> None:
        barrier.wait()
        wins[owner] = store.acquire_lease(run_id, owner, ttl_s=60)

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [owner for owner, won in wins.items() if won]
    assert len(wins) == 4 and len(winners) == 1
    assert store.get_run(run_id).lease_owner == winners[0]


def test_list_runs_filters_and_order(store: Store) -> None:
    a = _new_run(store, name="SimCLR baseline", owner="ana")
    b = _new_run(store, name="moco v2", method="moco", owner="bo", notes="100% crops")
    c = _new_run(store, name="swav multi-crop", method="swav", owner="ana", dataset="stl10")
    store.set_status(b, "running")
    store.set_status(c, "failed", error="nan loss")

    assert [r.id for r in store.list_runs()] == [c, b, a]  # newest first
    assert [r.id for r in store.list_runs(limit=2)] == [c, b]
    assert [r.id for r in store.list_runs(owner="ana")] == [c, a]
    assert [r.id for r in store.list_runs(status="running")] == [b]
    assert [r.id for r in store.list_runs(status=["queued", "failed"])] == [c, a]
    assert [r.id for r in store.list_runs(search="simclr")] == [a]  # name, case-insensitive
    assert [r.id for r in store.list_runs(search="STL")] == [c]  # dataset
    assert [r.id for r in store.list_runs(search="0% c")] == [b]  # notes
    assert store.list_runs(search="%") == [store.get_run(b)]  # '%' is literal, not a wildcard
    assert [r.id for r in store.list_runs(search=a[:8])] == [a]  # id prefix
    assert [r.id for r in store.list_runs(owner="ana", status="failed", search="swav")] == [c]
    with pytest.raises(ValueError):
        store.list_runs(status="done")


# ------------------------------------------------------------------------- metrics


def test_metric_writes_are_idempotent(store: Store) -> None:
    run_id = _new_run(store)
    assert store.log_metrics(run_id, [(1, "loss", 2.0, 10.0), (2, "loss", 1.5, 11.0)]) == 2
    # A resumed run replays step 2 with a different value: one row, the last value.
    store.log_metrics(run_id, [(2, "loss", 1.25, 20.0), (3, "loss", 1.0, 21.0)])
    # Duplicates inside one batch: last one wins too.
    store.log_metrics(run_id, [(3, "loss", 9.0, 22.0), (3, "loss", 0.75, 23.0)])
    assert _count(store, Metric, run_id) == 3
    assert store.metric_series(run_id, "loss") == ([1, 2, 3], [2.0, 1.25, 0.75])
    with store.engine.connect() as connection:
        wall = connection.execute(
            select(Metric.wall_time).where(Metric.run_id == run_id, Metric.step == 3)
        ).scalar_one()
    assert wall == 23.0
    assert store.last_metric(run_id, "loss") == (3, 0.75)


def test_metric_series_keys_nan_and_start(store: Store) -> None:
    run_id = _new_run(store)
    other = _new_run(store)
    rows = [(s, "train/loss", 1.0 / (s + 1), float(s)) for s in range(10)]
    rows += [(s, "collapse/std", 0.1 * s, float(s)) for s in range(0, 10, 5)]
    rows.append((10, "train/loss", math.nan, 10.0))
    store.log_metrics(run_id, reversed(rows))
    store.log_metrics(other, [(0, "other/key", 1.0, 0.0)])

    assert store.metric_keys(run_id) == ["collapse/std", "train/loss"]
    steps, values = store.metric_series(run_id, "train/loss")
    assert steps == list(range(11))
    assert values[:10] == [1.0 / (s + 1) for s in range(10)]
    assert math.isnan(values[10])  # a diverged loss is still a point
    last = store.last_metric(run_id, "train/loss")
    assert last[0] == 10 and math.isnan(last[1])
    assert store.metric_series(run_id, "train/loss", start_step=7)[0] == [7, 8, 9, 10]
    assert store.metric_series(run_id, "missing") == ([], [])
    assert store.last_metric(run_id, "missing") is None
    with pytest.raises(exc.IntegrityError):  # points of a run that does not exist
        store.log_metrics("000000000000", [(0, "loss", 1.0, 0.0)])


def test_concurrent_writers(store: Store) -> None:
    """Rank 0 logging metrics, the task heartbeating, the app reading and cancelling."""
    run_a, run_b = _new_run(store), _new_run(store)
    errors: list[BaseException] = []
    n_batches, batch = 40, 50

    def guarded(fn):
        def wrapper() -> None:
            try:
                fn()
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                errors.append(error)

        return wrapper

    def writer(run_id: str) -> None:
        for b in range(n_batches):
            store.log_metrics(
                run_id, [(b * batch + i, "loss", float(i), time.time()) for i in range(batch)]
            )

    def status_updates() -> None:
        for i in range(n_batches):
            store.heartbeat(run_a, "host")
            store.update_run(run_b, step=i, progress=i / n_batches)
            store.acquire_lease(run_a, "w", ttl_s=5)

    def reader() -> None:
        for _ in range(n_batches):
            store.metric_series(run_a, "loss", max_points=100)
            store.list_runs()

    threads = [threading.Thread(target=guarded(lambda r=r: writer(r))) for r in (run_a, run_b)] + [
        threading.Thread(target=guarded(status_updates)),
        threading.Thread(target=guarded(reader)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _count(store, Metric, run_a) == _count(store, Metric, run_b) == n_batches * batch
    assert store.get_run(run_b).step == n_batches - 1


def test_series_100k_points_downsampled(store: Store) -> None:
    run_id = _new_run(store)
    rng = np.random.default_rng(0)
    n = 100_000
    values = np.cumsum(rng.normal(size=n))
    values[54_321] = 1e6  # a spike the chart must show
    t0 = time.perf_counter()
    store.log_metrics(run_id, ((s, "loss", float(v), 0.0) for s, v in enumerate(values)))
    t1 = time.perf_counter()
    steps, points = store.metric_series(run_id, "loss", max_points=2000)
    t2 = time.perf_counter()
    dialect = store.engine.dialect.name
    print(f"\n[{dialect}] write 100k: {t1 - t0:.2f}s, fetch+downsample to 2k: {t2 - t1:.3f}s")
    assert len(steps) <= 2000
    assert steps[0] == 0 and steps[-1] == n - 1
    assert 54_321 in steps and max(points) == 1e6
    assert min(points) == values.min()
    ref_steps, ref_values = minmax_downsample(np.arange(n), values, 2000)
    assert steps == ref_steps.tolist() and points == ref_values.tolist()


# ------------------------------------------------------------------------- checkpoints, evals


def test_checkpoints(store: Store) -> None:
    run_id = _new_run(store)
    assert store.latest_checkpoint(run_id) is None and store.list_checkpoints(run_id) == []
    for step in (10, 5, 20):
        store.add_checkpoint(run_id, step, f"/ckpt/{step}.pt")
    store.add_checkpoint(run_id, 10, "/ckpt/10-resumed.pt")  # re-saved after a resume
    listed = store.list_checkpoints(run_id)
    assert [(c.step, c.path) for c in listed] == [
        (5, "/ckpt/5.pt"),
        (10, "/ckpt/10-resumed.pt"),
        (20, "/ckpt/20.pt"),
    ]
    latest = store.latest_checkpoint(run_id)
    assert (latest.run_id, latest.step) == (run_id, 20) and latest.created_at.tzinfo is not None


def test_eval_results(store: Store) -> None:
    a, b = _new_run(store), _new_run(store)
    i1 = store.add_eval_result(a, "probe", {"top1": np.float32(0.5)}, layer="layer4")
    i2 = store.add_eval_result(
        a, "knn", {"k": 20, "top1": 0.7, "per_class": np.array([0.5, 1.0])}, checkpoint_step=100
    )
    i3 = store.add_eval_result(b, "probe", {"top1": 0.3}, layer="conv1", artifact_path="/a/x.npy")
    assert i1 < i2 < i3
    assert [r.id for r in store.list_eval_results()] == [i1, i2, i3]
    assert [r.id for r in store.list_eval_results(run_id=a)] == [i1, i2]
    assert [r.id for r in store.list_eval_results(kind="probe")] == [i1, i3]
    knn = store.list_eval_results(run_id=a, kind="knn")[0]
    assert knn.metrics == {"k": 20, "top1": 0.7, "per_class": [0.5, 1.0]}
    assert (knn.checkpoint_step, knn.layer, knn.artifact_path) == (100, None, None)
    probe = store.list_eval_results(run_id=b)[0]
    assert (probe.layer, probe.artifact_path, probe.metrics) == ("conv1", "/a/x.npy", {"top1": 0.3})


def test_delete_run_cascades(store: Store) -> None:
    doomed, kept = _new_run(store), _new_run(store)
    for run_id in (doomed, kept):
        store.log_metrics(run_id, [(s, "loss", 1.0, 0.0) for s in range(5)])
        store.add_checkpoint(run_id, 5, "/c.pt")
        store.add_eval_result(run_id, "knn", {"top1": 0.1})
    assert store.delete_run(doomed)
    assert store.get_run(doomed) is None
    for model in (Metric, Checkpoint, EvalResult):
        assert _count(store, model, doomed) == 0
    assert (_count(store, Metric, kept), _count(store, Checkpoint, kept)) == (5, 1)
    assert _count(store, EvalResult, kept) == 1
    assert not store.delete_run(doomed)


def test_store_default_reads_environment(ssl_env: Path) -> None:
    store = Store.default()
    assert Path(store.engine.url.database) == ssl_env / "var" / "ssl.db"
    run_id = _new_run(store)
    assert Store(f"sqlite:///{ssl_env / 'var' / 'ssl.db'}").get_run(run_id).id == run_id


# ------------------------------------------------------------------------- downsampling


def _naive_minmax(values: list[float], max_points: int) -> list[int]:
    """The documented rule, one bucket at a time in plain Python: kept indices."""
    n = len(values)
    if n <= max_points:
        return list(range(n))
    has_nan = any(math.isnan(v) for v in values[1:-1])
    n_buckets = (max_points - 2) // (3 if has_nan else 2)
    if n_buckets == 0:
        return [0, n - 1]
    length = math.ceil((n - 2) / n_buckets)
    keep = {0, n - 1}
    for start in range(1, n - 1, length):
        bucket = list(range(start, min(start + length, n - 1)))
        real = [i for i in bucket if not math.isnan(values[i])]
        if real:
            low, high = min(values[i] for i in real), max(values[i] for i in real)
            keep.add(next(i for i in real if values[i] == low))
            keep.add(next(i for i in real if values[i] == high))
        else:
            keep.add(bucket[0])
        nans = [i for i in bucket if math.isnan(values[i])]
        if nans:
            keep.add(nans[0])
    return sorted(keep)


@pytest.mark.parametrize("seed", range(6))
def test_minmax_downsample_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(25):
        n = int(rng.integers(1, 400))
        max_points = int(rng.integers(2, 60))
        # Few distinct values force ties; some NaN / inf runs in half of the cases.
        values = rng.integers(-3, 4, size=n).astype(float)
        if seed % 2:
            values[rng.random(n) < 0.2] = np.nan
            values[rng.random(n) < 0.05] = np.inf
            values[rng.random(n) < 0.05] = -np.inf
            if n > 10:
                values[3:9] = np.nan  # an all-NaN bucket for small bucket lengths
        steps = np.arange(n) * 3 + 7
        out_steps, out_values = minmax_downsample(steps, values, max_points)
        expected = _naive_minmax(values.tolist(), max_points)
        assert out_steps.tolist() == steps[expected].tolist()
        np.testing.assert_array_equal(out_values, values[expected])
        assert len(out_steps) <= max_points


def test_minmax_downsample_keeps_extremes_endpoints_and_nans() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    steps = np.arange(n) * 10
    values = np.sin(np.arange(n) / 500.0) + 0.1 * rng.normal(size=n)
    values[[17, 70_000, 70_001]] = np.nan
    t0 = time.perf_counter()
    out_steps, out_values = minmax_downsample(steps, values, 2000)
    print(
        f"\nminmax_downsample 100k -> {len(out_steps)}: {1e3 * (time.perf_counter() - t0):.2f} ms"
    )
    assert len(out_steps) <= 2000
    assert (out_steps[0], out_steps[-1]) == (0, steps[-1])
    assert np.all(np.diff(out_steps) > 0)
    assert np.nanmax(out_values) == np.nanmax(values)
    assert np.nanmin(out_values) == np.nanmin(values)
    kept_nan_steps = set(out_steps[np.isnan(out_values)].tolist())
    assert {170, 700_000} <= kept_nan_steps
    # Every output point is an input point.
    index = out_steps // 10
    np.testing.assert_array_equal(values[index], out_values)


def test_minmax_downsample_short_and_invalid() -> None:
    steps, values = minmax_downsample([1, 2, 3], [3.0, 1.0, 2.0], 3)
    assert steps.tolist() == [1, 2, 3] and values.tolist() == [3.0, 1.0, 2.0]
    assert minmax_downsample(range(10), np.arange(10.0), 3)[0].tolist() == [0, 9]
    with pytest.raises(ValueError):
        minmax_downsample([1, 2, 3], [1.0, 2.0, 3.0], 1)
    with pytest.raises(ValueError):
        minmax_downsample([1, 2, 3], [1.0, 2.0], 10)


# ------------------------------------------------------------------------- artifacts


def test_artifact_dirs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SSL_ARTIFACTS", raising=False)
    monkeypatch.setenv("SSL_HOME", str(tmp_path / "home"))
    assert artifacts_root() == tmp_path / "home" / "var" / "artifacts"

    monkeypatch.setenv("SSL_ARTIFACTS", f"file://{tmp_path / 'art'}")
    run_dir = run_artifact_dir("abc123def456")
    assert run_dir == tmp_path / "art" / "abc123def456" and run_dir.is_dir()
    (run_dir / "ckpt").mkdir()
    (run_dir / "ckpt" / "10.pt").write_bytes(b"x")
    assert remove_run_artifacts("abc123def456")
    assert not run_dir.exists() and (tmp_path / "art").is_dir()
    assert not remove_run_artifacts("abc123def456")

    for bad in ("..", "../etc", "a/b", ""):
        with pytest.raises(ValueError):
            remove_run_artifacts(bad)
    # a remote tree (tests/test_artifacts_remote.py) is worked on through a local mirror
    monkeypatch.setenv("SSL_ARTIFACTS", "s3://bucket/prefix")
    assert artifacts_root() == tmp_path / "home" / "var" / "artifacts-cache"
