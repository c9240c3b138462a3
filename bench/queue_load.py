"""Load: 50 small runs queued on 2 real Celery workers, while 10 dashboard sessions load pages.

Checks that every run completes exactly once (no lost, no duplicated run: each run's metric
series has each step once and one supervisor took its lease) and reports page-load latency
(p50/p95 over the 10 concurrent sessions, rendering the Runs and Run-detail pages with
streamlit's AppTest in threads, as many sessions would).

    .venv/bin/python bench/queue_load.py [--runs 50] [--sessions 10]

Uses REDIS_URL (default redis://127.0.0.1:6379/0; an embedded Redis is started if none answers)
and a temporary SSL_HOME with a SQLite store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--sessions", type=int, default=10)
    args = p.parse_args()
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    os.environ["STREAMLIT_LOGGER_LEVEL"] = "error"
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
    stop = threading.Event()

    def session(run_ids: list[str]) -> None:
        from streamlit.testing.v1 import AppTest

        while not stop.is_set():
            for page, params in (("runs", {}), ("run", {"run": run_ids[0]})):
                at = AppTest.from_file(
                    str(ROOT / "app" / "views" / f"{page}.py"), default_timeout=60
                )
                for k, v in params.items():
                    at.query_params[k] = v
                t0 = time.perf_counter()
                at.run()
                latencies.append(time.perf_counter() - t0)

    try:
        t0 = time.perf_counter()
        run_ids = [submit(cfg, name=f"load-{i}", store=store) for i in range(args.runs)]
        threads = [
            threading.Thread(target=session, args=(run_ids,), daemon=True)
            for _ in range(args.sessions)
        ]
        for t in threads:
            t.start()
        while True:
            runs = [store.get_run(r) for r in run_ids]
            done = [r for r in runs if r.status in ("succeeded", "failed", "cancelled")]
            if len(done) == len(runs):
                break
            time.sleep(1)
        wall = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join(60)
        statuses = {r.status for r in runs}
        dup = [r.id for r in runs if store.metric_series(r.id, "loss")[0] != [1, 2, 3]]
        hosts = {r.worker_host for r in runs}
        lat = sorted(latencies)
        p95 = lat[int(0.95 * (len(lat) - 1))]
        print(
            f"runs: {len(runs)} on 2 workers in {wall:.1f} s; statuses {statuses}; "
            f"runs with missing/duplicated steps: {len(dup)}; hosts {hosts}"
        )
        print(
            f"page loads under load: n={len(lat)} p50={statistics.median(lat):.2f} s "
            f"p95={p95:.2f} s (target p95 < 2 s)"
        )
    finally:
        stop.set()
        for w in workers:
            stop_process_group(w)


if __name__ == "__main__":
    main()
