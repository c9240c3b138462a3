"""Browser end to end: `streamlit run` + Debian's chromium driven by Playwright.

Launch a run through the form, follow the link, and see its loss curve drawn.
Screenshots go to test-output/ (kept by CI as artefacts, used in the README).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services_fixtures import ROOT, stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUT = ROOT / "test-output"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(ssl_home, redis_url, celery_queue_env, celery_worker):
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


def test_launch_from_form_and_watch_loss_curve(page, dashboard):
    page.goto(f"{dashboard}/launch")
    page.get_by_text("Launch a pretraining run").wait_for(timeout=30_000)
    name = page.get_by_role("textbox", name="run name")
    name.fill("browser-run")
    name.press("Enter")
    page.get_by_role("button", name="Launch", exact=True).click()
    link = page.get_by_role("link", name="Open run")
    link.wait_for(timeout=30_000)
    page.screenshot(path=str(OUT / "launch.png"), full_page=True)
    link.click()
    page.wait_for_url("**/run?run=*", timeout=30_000)
    page.get_by_role("heading", name="browser-run").wait_for(timeout=30_000)
    # the loss trace is drawn with at least two points (the fragment refreshes every 2 s)
    trace = page.locator(".js-plotly-plot .scatterlayer .trace .lines path").first
    page.wait_for_function(
        "() => { const p = document.querySelector('.js-plotly-plot .scatterlayer .trace "
        ".lines path'); return p && (p.getAttribute('d') || '').split('L').length >= 3; }",
        timeout=180_000,
    )
    assert trace.get_attribute("d")
    page.screenshot(path=str(OUT / "run.png"), full_page=True)
