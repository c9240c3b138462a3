"""Browser end to end: `streamlit run` + Debian's chromium driven by Playwright.

One browser page for the module, tests in order: launch a run through the form, find it on
the Runs page, open it and see its loss curve drawn, cancel it; then the Retrieval and
Clusters pages of a run the evaluation library evaluated. Screenshots go to test-output/
(kept by CI as artefacts, used in the README).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app_more import evaluated_run  # noqa: F401  (a session fixture)

from services_fixtures import ROOT, stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUT = ROOT / "test-output"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(ssl_home, redis_url, celery_queue_env, celery_worker, evaluated_run):  # noqa: F811
    # evaluated_run first: it trains in this process, and must not compete with the browser's
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app/main.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        start_new_session=True,
        stdout=open(ssl_home / "streamlit.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        stop_process_group(proc)
        raise RuntimeError("streamlit did not start")
    yield url
    stop_process_group(proc)


@pytest.fixture(scope="module")
def page(dashboard):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt install chromium)")
    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield pg
        browser.close()


STATE: dict[str, str] = {}


def _diagnosis(run_id: str) -> str:
    """What the store and the run's log say, for a failure message."""
    from sslengine.store import Store

    run = Store.default().get_run(run_id)
    if run is None:
        return f"run {run_id} is gone"
    log = Path(run.log_path).read_text(errors="replace")[-2000:] if run.log_path else ""
    return f"status={run.status} step={run.step} error={run.error!r}\nlog tail:\n{log}"


def test_launch_from_form(page, dashboard):
    page.goto(f"{dashboard}/launch")
    page.get_by_text("Launch a pretraining run").wait_for(timeout=30_000)
    page.get_by_text("Images", exact=True).wait_for(timeout=30_000)  # dataset counts shown
    name = page.get_by_role("textbox", name="run name")
    name.fill("browser-run")
    name.press("Enter")
    # small steps (16 px, batch 64), and enough of them to be cancelled while it runs
    for field, value in (("image_size", "16"), ("batch_size", "64"), ("epochs", "20")):
        box = page.get_by_role("spinbutton", name=field, exact=True)
        box.fill(value)
        box.press("Enter")
    page.get_by_role("button", name="Launch", exact=True).click()
    link = page.get_by_role("link", name="Open run")
    link.wait_for(timeout=30_000)
    STATE["run"] = (link.text_content() or "").split()[-1]
    page.screenshot(path=str(OUT / "launch.png"), full_page=True)


def test_new_run_is_listed_on_runs_page(page, dashboard):
    run_id = STATE["run"]
    page.goto(f"{dashboard}/")  # the root forwards to /runs
    page.wait_for_url(re.compile(r".*/runs(\?.*)?$"), timeout=30_000)
    page.get_by_role("heading", name="Runs").wait_for(timeout=30_000)
    # newest first: the run just launched is the one selected for actions
    selected = page.get_by_role("combobox", name="Selected run")
    selected.wait_for(timeout=30_000)
    assert selected.input_value().startswith(f"browser-run · simclr · {run_id}")
    page.get_by_test_id("stDataFrame").first.wait_for(timeout=30_000)
    page.screenshot(path=str(OUT / "runs.png"), full_page=True)


def test_run_detail_draws_loss_curve_then_cancel(page, dashboard):
    run_id = STATE["run"]
    page.get_by_role("link", name="Open", exact=True).click()
    page.wait_for_url(f"**/run?run={run_id}", timeout=30_000)
    page.get_by_role("heading", name="browser-run").wait_for(timeout=30_000)
    # the loss trace is drawn with at least two points (the fragment refreshes every 2 s)
    try:
        page.wait_for_function(
            "() => { const p = document.querySelector('.js-plotly-plot .scatterlayer .trace "
            ".lines path'); return p && (p.getAttribute('d') || '').split('L').length >= 3; }",
            timeout=300_000,  # a worker process starting torch on a busy 2-core CI machine
        )
    except Exception as err:
        raise AssertionError(f"no loss curve: {_diagnosis(run_id)}") from err
    page.screenshot(path=str(OUT / "run.png"), full_page=True)
    page.get_by_role("button", name="Cancel run").click()
    page.get_by_test_id("stMetricValue").filter(has_text="cancelled").wait_for(timeout=180_000)
    page.screenshot(path=str(OUT / "run_cancelled.png"), full_page=True)


def test_retrieval_shows_k_neighbour_images(page, dashboard, evaluated_run):  # noqa: F811
    k = 6
    page.goto(f"{dashboard}/retrieval?run={evaluated_run}&index=5&k={k}")
    page.get_by_role("heading", name=f"Top {k} neighbours").wait_for(timeout=60_000)
    images = page.locator('[data-testid="stImage"] img')
    # the query and its k neighbours, every one actually decoded by the browser
    page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('[data-testid=\"stImage\"] img')];"
        " return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=k + 1,
        timeout=60_000,
    )
    assert images.count() == k + 1
    page.screenshot(path=str(OUT / "retrieval.png"), full_page=True)


def test_clusters_shows_usage_histogram(page, dashboard, evaluated_run):  # noqa: F811
    from sslengine.store import Store

    row = Store.default().list_eval_results(evaluated_run, kind="clusters")[-1]
    page.goto(f"{dashboard}/clusters?run={evaluated_run}")
    page.get_by_role("heading", name="Clusters and prototypes").wait_for(timeout=60_000)
    bars = page.locator(".js-plotly-plot .barlayer .point")
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot .barlayer .point').length >= n",
        arg=row.metrics["k"],
        timeout=60_000,
    )
    assert bars.count() == row.metrics["k"]
    page.screenshot(path=str(OUT / "clusters.png"), full_page=True)


def test_layers_and_embeddings_pages_draw(page, dashboard, evaluated_run):  # noqa: F811
    from sslengine.store import Store

    store = Store.default()
    page.goto(f"{dashboard}/layers?runs={evaluated_run}&run={evaluated_run}")
    page.get_by_role("heading", name="Layer-wise linear probes").wait_for(timeout=60_000)
    # one line over the six taps, and one line per tap over training
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 7",
        timeout=60_000,
    )
    page.screenshot(path=str(OUT / "layers.png"), full_page=True)

    n = store.list_eval_results(evaluated_run, kind="retrieval")[-1].metrics["n"]
    page.goto(f"{dashboard}/embeddings?run={evaluated_run}")
    page.get_by_role("heading", name="Embedding space").wait_for(timeout=60_000)
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot .scatterlayer .points path').length >= n",
        arg=n,
        timeout=60_000,
    )
    page.screenshot(path=str(OUT / "embeddings.png"), full_page=True)


def test_concurrent_protocol_sessions_load_every_page(dashboard, evaluated_run):  # noqa: F811
    """Three sessions at once (Streamlit's websocket protocol, as bench/queue_load.py drives
    it) load every page of the served dashboard: each run of each page finishes, no page shows
    an exception, and live fragments are re-run for the sessions on the Runs page."""
    import asyncio
    import concurrent.futures

    sys.path.insert(0, str(ROOT / "bench"))
    from st_session import Session

    pages = [
        ("runs", ""),
        ("launch", ""),
        ("run", f"run={evaluated_run}"),
        ("compare", f"runs={evaluated_run}"),
        ("layers", f"run={evaluated_run}"),
        ("clusters", f"run={evaluated_run}"),
        ("retrieval", f"run={evaluated_run}"),
        ("embeddings", f"run={evaluated_run}"),
    ]

    async def one(k: int) -> tuple[list[float], int]:
        async with Session(dashboard) as session:
            times = [await session.load(p, q, timeout=120) for p, q in pages[k:] + pages[:k]]
            await session.load("runs")
            await asyncio.sleep(7.0)  # the Runs page's table refreshes every 3 s
            return times, session.fragment_runs

    async def all_three():
        return await asyncio.gather(*(one(k) for k in range(3)))

    # a thread of its own: the sync Playwright fixtures of this module keep an event loop
    # running on the main thread, where asyncio.run() refuses to start another
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        results = pool.submit(asyncio.run, all_three()).result()
    for times, fragment_runs in results:
        assert len(times) == len(pages) and all(t > 0 for t in times)
        assert fragment_runs >= 1


def test_served_dashboard_skips_post_run_gc_and_source_watching():
    """The repository's .streamlit/config.toml is what `streamlit run` from the root reads:
    no full gc.collect() after each script run (~0.3 s of the server per page load with this
    heap), no source watcher walking every imported module."""
    code = (
        "import streamlit.config as c; c.get_config_options(force_reparse=True); "
        "print(c.get_option('runner.postScriptGC'), c.get_option('server.fileWatcherType'), "
        "c.get_option('server.runOnSave'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "none", "False"]
