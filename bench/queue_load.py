"""Load: 50 small runs queued on 2 real Celery workers, while 10 dashboard sessions load pages.

Checks that every run completes exactly once (no lost, no duplicated run: each run's metric
series has each step once; the two workers' logs count the tasks each ran) and reports
page-load latency while the queue drains: one real `streamlit run` server, and 10 browser
sessions (Debian's chromium through Playwright, one isolated context each, one thread each)
that load the Runs page and a run's detail page in turn, timing from navigation start until
the page's content is drawn (the runs table; the run's loss chart). p50 / p95 over all loads;
target p95 < 2 s.

    .venv/bin/python bench/queue_load.py [--runs 50] [--sessions 10]

Uses REDIS_URL (default redis://127.0.0.1:6379/0; an embedded Redis is started if none answers)
and a temporary SSL_HOME with a SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(port: int, home: Path) -> subprocess.Popen:
    """`streamlit run app/main.py` (local mode) on `port`, once its health check answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--logger.level", "error"],
        cwd=ROOT, env=os.environ.copy(), start_new_session=True,
        stdout=open(home / "streamlit.log", "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"streamlit did not start: {(home / 'streamlit.log').read_text()[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--sessions", type=int, default=10)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ssl-load-"))
    os.environ.update(
        SSL_HOME=str(home),
        SSL_DATABASE_URL=f"sqlite:///{home}/var/ssl.db",
        SSL_ARTIFACTS=str(home / "var" / "artifacts"),
        SSL_CACHE=str(ROOT / "var" / "test-cache"),
        SSL_QUEUE=f"load-{uuid.uuid4().hex[:6]}",
    )
    from services_fixtures import start_worker_process, stop_process_group
    from sslengine.services import ensure_redis
    from sslengine.store import Store, migrate
    from tasks.submit import submit

    ensure_redis()
    migrate()
    store = Store.default()
    workers = [
        start_worker_process(os.environ["SSL_QUEUE"], home / f"w{i}.log", f"w{i}") for i in range(2)
    ]
    cfg = {
        "method": "simclr",
        "dataset": {"name": "digits", "image_size": 16},
        "train": {"batch_size": 64, "max_steps": 3, "log_every": 1},
        "eval": {"knn": False},
    }
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()
    port = free_port()
    server = start_dashboard(port, home)
    base = f"http://127.0.0.1:{port}"

    async def sessions(run_id: str, n: int) -> None:
        """`n` browser sessions (isolated contexts of one chromium) loading pages in turn."""
        from playwright.async_api import async_playwright

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)

            async def one() -> None:
                context = await browser.new_context(viewport={"width": 1300, "height": 900})
                page = await context.new_page()
                pages = (
                    ("/runs", page.get_by_test_id("stDataFrame").first),
                    (f"/run?run={run_id}", page.locator(".js-plotly-plot").first),
                )
                while not stop.is_set():
                    for path, ready in pages:
                        t0 = time.perf_counter()
                        try:
                            await page.goto(base + path)
                            await ready.wait_for(timeout=60_000)
                        except Exception as err:  # noqa: BLE001 - counted and reported
                            failures.append(f"{path}: {err}"[:200])
                            continue
                        latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(one() for _ in range(n)))
            await browser.close()

    try:
        t0 = time.perf_counter()
        run_ids = [submit(cfg, name=f"load-{i}", store=store) for i in range(args.runs)]
        browsers = threading.Thread(
            target=lambda: asyncio.run(sessions(run_ids[0], args.sessions)), daemon=True
        )
        browsers.start()
        while True:
            runs = [store.get_run(r) for r in run_ids]
            done = [r for r in runs if r.status in ("succeeded", "failed", "cancelled")]
            if len(done) == len(runs):
                break
            time.sleep(1)
        wall = time.perf_counter() - t0
        stop.set()
        browsers.join(120)
        statuses = {r.status for r in runs}
        dup = [r.id for r in runs if store.metric_series(r.id, "loss")[0] != [1, 2, 3]]
        # tasks each worker finished (the run rows only know the host, shared by both here)
        per_worker = [
            (home / f"w{i}.log").read_text(errors="replace").count("succeeded in")
            for i in range(len(workers))
        ]
        lat = sorted(latencies)
        p95 = lat[int(0.95 * (len(lat) - 1))]
        print(
            f"runs: {len(runs)} on 2 workers in {wall:.1f} s; statuses {statuses}; "
            f"runs with missing/duplicated steps: {len(dup)}; tasks per worker {per_worker}"
        )
        print(
            f"page loads under load ({args.sessions} browser sessions, one streamlit server): "
            f"n={len(lat)} p50={statistics.median(lat):.2f} s p95={p95:.2f} s; failed loads "
            f"{len(failures)} (target p95 < 2 s: {'met' if p95 < 2 else 'NOT met'})"
        )
        for f in failures[:5]:
            print("  failed:", f)
    finally:
        stop.set()
        for w in workers:
            stop_process_group(w)
        stop_process_group(server)


if __name__ == "__main__":
    main()
