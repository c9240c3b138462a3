"""Load: 50 small runs queued on 2 real Celery workers, while 10 dashboard sessions load pages.

Checks that every run completes exactly once (no lost, no duplicated run: each run's metric
series has each step once; the two workers' logs count the tasks each ran) and reports
page-load latency while the queue drains, on one real `streamlit run` server:

- 10 dashboard sessions that speak Streamlit's websocket protocol (bench/st_session.py: each a
  separate server session, re-running its pages' live fragments as a browser tab does) load
  the Runs, Run (a random run of the batch), Launch and Compare pages in turn, 1 s apart;
  timed from the rerun request to the server's ``script_finished``. A browser per session
  would measure mostly 10 renderers competing for this machine's 2 cores.
- 1 real chromium tab (Debian's, through Playwright): full loads of /runs and /run?run=...
  (navigation start until the content is drawn: the runs table; the run's status) and, in
  between, in-app navigation to Launch, Compare and Runs through the sidebar (click until the
  new page's title is drawn), which is how a user moves between pages once the app is open.
  Timed by the page's own clock (`performance.now()`: a MutationObserver notes the element,
  two animation frames later it is painted); Playwright's waits poll at up to 500 ms and are
  reported beside it. `--browser-cpus 1` runs chromium on CPU 1 and the rest on the others,
  as when the browser runs on the user's own machine.

p50 / p95 over all loads of each kind; target p95 < 2 s.

    .venv/bin/python bench/queue_load.py [--runs 50] [--sessions 10] [--browsers 1]
        [--browser-cpus 1]

Uses REDIS_URL (default redis://127.0.0.1:6379/0; an embedded Redis is started if none answers)
and a temporary SSL_HOME with a SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
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
sys.path.insert(0, str(ROOT / "bench"))

from st_session import PageLoadError, Session  # noqa: E402

# The pages a session visits in turn (url paths); "run" gets a random run of the batch.
PAGES = ("runs", "run", "launch", "compare")


# In-app navigation targets (sidebar labels) and the title each page draws.
TITLES = {"Launch": "Launch a pretraining run", "Compare": "Compare runs", "Runs": "Runs"}
# Installed in every document of the browser tab: records (performance.now(), ms since the
# navigation started) when the content a load waits for is painted, and when the user clicked.
# Playwright's own waits poll the page at growing intervals (up to 500 ms), which would add up
# to half a second to a load that is already drawn; the page's clock does not.
BROWSER_CLOCK = """
window.__seen = {};
document.addEventListener('click', () => { window.__clickAt = performance.now(); }, true);
const __mark = (key) => {
  if (key in window.__seen) return;
  window.__seen[key] = -1;  // added to the DOM; painted two frames later
  requestAnimationFrame(() => requestAnimationFrame(() => {
    window.__seen[key] = performance.now();
  }));
};
new MutationObserver(() => {
  for (const id of ['stDataFrame', 'stMetric']) {
    if (document.querySelector(`[data-testid="${id}"]`)) __mark('id:' + id);
  }
  for (const h of document.querySelectorAll('h1, h2, h3')) __mark('h:' + h.textContent.trim());
}).observe(document, {subtree: true, childList: true, characterData: true});
"""

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
    p.add_argument("--sessions", type=int, default=10, help="protocol sessions (no browser)")
    p.add_argument("--browsers", type=int, default=1, help="chromium tabs, besides the sessions")
    p.add_argument("--think", type=float, default=1.0, help="seconds between a session's loads")
    p.add_argument(
        "--browser-cpus",
        default="",
        help=(
            "e.g. '1': run the chromium tab on these CPUs and everything else (server, workers, "
            "training, the protocol sessions) on the others, as when the browser is on a "
            "user's own machine; default: all share every CPU"
        ),
    )
    args = p.parse_args()
    browser_cpus = {int(c) for c in args.browser_cpus.split(",") if c.strip()}
    chromium = CHROMIUM
    if browser_cpus:
        rest = os.sched_getaffinity(0) - browser_cpus
        if not rest or not browser_cpus <= os.sched_getaffinity(0):
            p.error(f"--browser-cpus {args.browser_cpus}: must leave CPUs for the server side")
        os.sched_setaffinity(0, rest)  # inherited by the server, the workers and training
        wrapper = Path(tempfile.mkdtemp(prefix="ssl-load-browser-")) / "chromium"
        cpus = ",".join(map(str, sorted(browser_cpus)))
        wrapper.write_text(f'#!/bin/sh\nexec taskset -c {cpus} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        chromium = str(wrapper)
        print(f"chromium on CPU(s) {cpus}; server, workers and sessions on {sorted(rest)}")
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
    browser_latencies: dict[str, list[float]] = {"full": [], "in-app": []}
    playwright_latencies: dict[str, list[float]] = {"full": [], "in-app": []}
    failures: list[str] = []
    stop = threading.Event()
    port = free_port()
    server = start_dashboard(port, home)
    base = f"http://127.0.0.1:{port}"

    rng = random.Random(0)

    async def protocol_session(run_ids: list[str]) -> None:
        """One dashboard session over Streamlit's websocket protocol (bench/st_session.py)."""
        async with Session(base) as session:
            while not stop.is_set():
                for page in PAGES:
                    query = f"run={rng.choice(run_ids)}" if page == "run" else ""
                    try:
                        latencies.append(await session.load(page, query))
                    except PageLoadError as err:
                        failures.append(str(err)[:200])
                    await asyncio.sleep(args.think)

    async def browser_session(run_ids: list[str]) -> None:
        """A real chromium tab: full page loads (navigation start until the content is drawn)
        and in-app navigation (a click in the sidebar until the new page's title is drawn)."""
        from playwright.async_api import async_playwright

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            context = await browser.new_context(viewport={"width": 1300, "height": 900})
            await context.add_init_script(BROWSER_CLOCK)
            page = await context.new_page()
            nav = page.get_by_test_id("stSidebarNav")

            def title(text: str):
                return page.get_by_role("heading", name=text, exact=True).first

            while not stop.is_set():
                run_page = f"/run?run={rng.choice(run_ids)}"
                steps = (
                    ("full", "/runs", page.get_by_test_id("stDataFrame").first),
                    ("in-app", "Launch", title("Launch a pretraining run")),
                    ("in-app", "Compare", title("Compare runs")),
                    ("in-app", "Runs", title("Runs")),
                    ("full", run_page, page.get_by_test_id("stMetric").first),
                )
                for kind, target, ready in steps:
                    key = "id:" + ("stDataFrame" if target == "/runs" else "stMetric")
                    if kind == "in-app":
                        key = "h:" + TITLES[target]
                        await page.evaluate("() => { window.__seen = {}; }")
                    t0 = time.perf_counter()
                    try:
                        if kind == "full":
                            await page.goto(base + target, wait_until="commit")
                        else:
                            await nav.get_by_text(target, exact=True).click(timeout=60_000)
                        await ready.wait_for(timeout=60_000)
                        wall = time.perf_counter() - t0
                        # the browser's own clock: painted (two frames after the element was
                        # added), from navigation start (full load) or from the click (in-app)
                        drawn = await page.wait_for_function(
                            f"() => (window.__seen[{key!r}] > 0) && "
                            f"(window.__seen[{key!r}] - "
                            f"({'window.__clickAt' if kind == 'in-app' else '0'}))",
                            timeout=10_000,
                        )
                        browser_latencies[kind].append(await drawn.json_value() / 1000)
                        playwright_latencies[kind].append(wall)
                    except Exception as err:  # noqa: BLE001 - counted and reported
                        failures.append(f"browser {kind} {target}: {err}"[:200])
                    await asyncio.sleep(args.think)
            await browser.close()

    async def all_sessions(run_ids: list[str]) -> None:
        tasks = [protocol_session(run_ids) for _ in range(args.sessions)]
        tasks += [browser_session(run_ids) for _ in range(args.browsers)]
        await asyncio.gather(*tasks)

    async def warm_up() -> None:
        # A served dashboard has imported its modules once; the first load of each page in a
        # fresh server process pays for that (several seconds for the launch form) and is not
        # what a team sees, so every page is loaded once before the clock starts.
        async with Session(base) as session:
            for page in PAGES:
                await session.load(page, "run=none" if page == "run" else "")

    asyncio.run(warm_up())
    load_before = os.getloadavg()[0]
    loads: list[float] = [load_before]
    try:
        t0 = time.perf_counter()
        run_ids = [submit(cfg, name=f"load-{i}", store=store) for i in range(args.runs)]
        browsers = threading.Thread(target=lambda: asyncio.run(all_sessions(run_ids)), daemon=True)
        browsers.start()
        while True:
            runs = [store.get_run(r) for r in run_ids]
            done = [r for r in runs if r.status in ("succeeded", "failed", "cancelled")]
            if len(done) == len(runs):
                break
            loads.append(os.getloadavg()[0])
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
        print(
            f"runs: {len(runs)} on 2 workers in {wall:.1f} s; statuses {statuses}; "
            f"runs with missing/duplicated steps: {len(dup)}; tasks per worker {per_worker}"
        )
        print(f"load average (1 min): {load_before:.1f} before, at most {max(loads):.1f} during")
        for label, values in (
            (f"{args.sessions} protocol sessions, server time to script_finished", latencies),
            (
                f"{args.browsers} chromium tab(s), full load: navigation to content drawn",
                browser_latencies["full"],
            ),
            (
                f"{args.browsers} chromium tab(s), in-app: sidebar click to page title drawn",
                browser_latencies["in-app"],
            ),
            (
                f"{args.browsers} chromium tab(s), full load as Playwright's polling wait sees "
                "it (not the target's figure: up to 500 ms late)",
                playwright_latencies["full"],
            ),
            (
                f"{args.browsers} chromium tab(s), in-app as Playwright's polling wait sees it",
                playwright_latencies["in-app"],
            ),
        ):
            if not values:
                print(f"page loads, {label}: none completed")
                continue
            lat = sorted(values)
            p95 = lat[int(0.95 * (len(lat) - 1))]
            print(
                f"page loads, {label}: n={len(lat)} p50={statistics.median(lat):.2f} s "
                f"p95={p95:.2f} s max={lat[-1]:.2f} s (target p95 < 2 s: "
                f"{'met' if p95 < 2 else 'NOT met'})"
            )
        print(f"failed loads: {len(failures)}")
        for f in failures[:5]:
            print("  failed:", f)
    finally:
        stop.set()
        for w in workers:
            stop_process_group(w)
        stop_process_group(server)


if __name__ == "__main__":
    main()
