"""Hosted mode with OIDC, end to end: a real OpenID Connect provider (oidc-provider-mock, a
standalone HTTP server with discovery, JWKS, authorization-code flow), `streamlit run` with an
`[auth]` section in its secrets, and Debian's chromium. Before login nothing can be launched;
the provider's consent page signs the user in through Streamlit's own `st.login` callback; the
sidebar then names the user with their role from `[roles]`, and logging out locks it again."""

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

pytest.importorskip("oidc_provider_mock")
pytest.importorskip("authlib")
pytestmark = [pytest.mark.e2e, pytest.mark.integration]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url}")


@pytest.fixture(scope="module")
def oidc_dashboard(ssl_home, tmp_path_factory):
    work = tmp_path_factory.mktemp("oidc")
    idp_port, app_port = _free_port(), _free_port()
    idp = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--port", str(idp_port),
         "--user", "alice@example.org", "--user", "guest@example.org"],
        stdout=open(work / "idp.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    idp_url = f"http://127.0.0.1:{idp_port}"
    secrets = work / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{app_port}/oauth2callback"\n'
        f'cookie_secret = "{os.urandom(16).hex()}"\n'
        'client_id = "sslengine-test"\n'
        'client_secret = "not-a-real-secret"\n'
        f'server_metadata_url = "{idp_url}/.well-known/openid-configuration"\n'
        "[roles]\n"
        'viewers = ["guest@example.org"]\n'
    )
    env = {**os.environ, "SSL_HOSTED": "1"}
    app = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(app_port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--secrets.files", str(secrets)],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=open(work / "streamlit.log", "ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_http(f"{idp_url}/.well-known/openid-configuration", idp, work / "idp.log", "IdP")
        app_url = f"http://127.0.0.1:{app_port}"
        _wait_http(f"{app_url}/_stcore/health", app, work / "streamlit.log", "streamlit")
        yield app_url, work
    finally:
        stop_process_group(app)
        stop_process_group(idp)


@pytest.fixture
def browser_page():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def _sign_in(page, app_url: str, who: str) -> None:
    page.goto(f"{app_url}/launch")
    page.get_by_text("Sign in (sidebar) to launch").wait_for(timeout=60_000)
    page.get_by_role("button", name="Log in with your identity provider").click()
    # the provider's own consent page, on its own origin: one click for a predefined user
    page.get_by_role("button", name=who).click(timeout=30_000)
    page.get_by_text(f"Signed in as {who}").wait_for(timeout=60_000)


def test_oidc_login_unlocks_launch_and_logout_locks_it(oidc_dashboard, browser_page):
    app_url, work = oidc_dashboard
    page = browser_page
    _sign_in(page, app_url, "alice@example.org")
    assert "(member)" in page.get_by_text("Signed in as alice@example.org").inner_text()
    page.goto(f"{app_url}/launch")
    page.get_by_role("button", name="Launch").first.wait_for(timeout=60_000)
    assert page.get_by_text("Sign in (sidebar) to launch").count() == 0
    # the client secret and cookie secret never reach the page
    html = page.content()
    assert "not-a-real-secret" not in html
    assert "not-a-real-secret" not in (work / "streamlit.log").read_text(errors="replace")

    page.get_by_role("button", name="Log out").click()
    # Streamlit ends the session at the provider too (RP-initiated logout): confirm it there
    page.get_by_role("button", name="End session").click(timeout=30_000)
    page.goto(f"{app_url}/launch")
    page.get_by_role("button", name="Log in with your identity provider").wait_for(timeout=60_000)
    page.get_by_text("Sign in (sidebar) to launch").wait_for(timeout=60_000)


def test_oidc_viewer_is_read_only(oidc_dashboard, browser_page):
    app_url, _ = oidc_dashboard
    page = browser_page
    _sign_in(page, app_url, "guest@example.org")
    assert "(viewer)" in page.get_by_text("Signed in as guest@example.org").inner_text()
    page.goto(f"{app_url}/launch")
    page.get_by_text("guest@example.org has read-only access").wait_for(timeout=60_000)
