"""Session fixtures for the real services: an isolated SSL_HOME, Redis, a Celery worker.

Imported by conftest.py. Each test session gets its own SSL_HOME (SQLite store, artifacts) and
its own Celery queue name, so it never collides with a developer's `make up` on the same Redis.
The decoded-dataset cache is shared across sessions (var/test-cache) so CIFAR-10 is decoded once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CIFAR_TGZ = ROOT.parent / "shared" / "datasets" / "cifar10" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session")
def ssl_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ssl_home")
    (home / "data").mkdir()
    os.environ["SSL_HOME"] = str(home)
    os.environ["SSL_DATABASE_URL"] = f"sqlite:///{home / 'var' / 'ssl.db'}"
    os.environ["SSL_ARTIFACTS"] = str(home / "var" / "artifacts")
    os.environ["SSL_CACHE"] = str(ROOT / "var" / "test-cache")
    roots = [str(home / "data")]
    if CIFAR_TGZ.parent.is_dir():
        roots.append(str(CIFAR_TGZ.parent.parent))
    os.environ["SSL_DATASET_ROOTS"] = os.pathsep.join(roots)
    # fast fault detection for the watchdog tests (workers inherit these)
    os.environ["SSL_HEARTBEAT_TIMEOUT"] = "8"
    os.environ["SSL_WATCHDOG_INTERVAL"] = "1"
    from sslengine.store import migrate

    migrate()
    return home


@pytest.fixture(scope="session")
def redis_url(ssl_home):
    """The Redis the tests use: the one at REDIS_URL, or an embedded one started here."""
    from sslengine.services import ensure_redis, redis_reachable

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    embedded = None
    if not redis_reachable(url):
        embedded = ensure_redis(url)
    os.environ["REDIS_URL"] = url
    yield url
    if embedded is not None:
        embedded.terminate()
        embedded.wait(10)


@pytest.fixture(scope="session")
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def start_worker_process(queue: str, log_path: Path, name: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.celery_app",
        "worker",
        "-Q",
        queue,
        "-c",
        "1",
        "--prefetch-multiplier",
        "1",
        "-n",
        f"{name}@%h",
        "-l",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited: {log_path.read_text()[-2000:]}")
        if "ready." in log_path.read_text(errors="replace"):
            return proc
        time.sleep(0.3)
    raise RuntimeError(f"celery worker not ready: {log_path.read_text()[-2000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


@pytest.fixture(scope="session")
def celery_worker(redis_url, ssl_home, queue_name, celery_queue_env):
    """A real Celery worker process consuming this session's queue."""
    proc = start_worker_process(queue_name, ssl_home / "worker.log", "w1")
    yield proc
    stop_process_group(proc)


def wait_for_status(store, run_id: str, statuses: set[str], timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = store.get_run(run_id)
        if run is not None and run.status in statuses:
            return run.status
        time.sleep(0.5)
    run = store.get_run(run_id)
    raise AssertionError(f"run {run_id} still {run.status if run else None} after {timeout_s}s")


def tiny_simclr(**train) -> dict:
    """A SimCLR config that finishes in seconds on 2 cores (built-in digits, small ResNet)."""
    return {
        "method": "simclr",
        "dataset": {"name": "digits", "image_size": 16},
        "backbone": {"name": "small_resnet", "cifar_stem": True},
        "optim": {"name": "lars", "lr": 1.0},
        "train": {
            "batch_size": 64,
            "epochs": 1,
            "log_every": 2,
            "collapse_every": 4,
            "checkpoint_every": 10,
            **train,
        },
        "eval": {"knn_k": [20]},
    }


@pytest.fixture(scope="session")
def celery_queue_env(queue_name):
    """Route default submissions (the app's Launch button) to this session's queue."""
    os.environ["SSL_QUEUE"] = queue_name
    import tasks.celery_app as capp

    capp.app.conf.task_default_queue = queue_name
    return queue_name


@pytest.fixture(scope="session")
def finished_run(ssl_home):
    """A real, tiny SimCLR run trained in this process and recorded in the store."""
    from sslengine.config import parse_config
    from sslengine.store import Store
    from sslengine.store.artifacts import run_artifact_dir
    from sslengine.train.loop import pretrain
    from sslengine.train.reporter import StoreReporter

    store = Store.default()
    cfg = parse_config(tiny_simclr(epochs=2))
    run_id = store.create_run(
        cfg.model_dump(mode="json"),
        name="finished",
        method="simclr",
        dataset="digits",
        backbone="small_resnet",
    )
    store.set_status(run_id, "running")
    reporter = StoreReporter(store, run_id)
    pretrain(cfg, run_artifact_dir(run_id) / "checkpoints", reporter=reporter)
    reporter.close()
    store.set_status(run_id, "succeeded")
    return run_id


@pytest.fixture(scope="session")
def failed_run(ssl_home):
    from sslengine.store import Store

    store = Store.default()
    run_id = store.create_run(
        tiny_simclr(), name="broken", method="simclr", dataset="digits", backbone="small_resnet"
    )
    store.set_status(run_id, "running")
    store.set_status(run_id, "failed", error="ValueError: dataset path /nope does not exist")
    return run_id


@pytest.fixture
def idle_queue(redis_url):
    """(name, Redis client) of a queue no worker consumes: whatever is sent to it stays there to
    be counted (a submitted run stays queued); deleted afterwards."""
    import redis

    name = f"idle-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    yield name, client
    client.delete(name)
