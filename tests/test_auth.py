"""Hosted mode: nothing launches, cancels or deletes without a logged-in member; local mode
needs no login. Shared-password login from secrets; viewers are read-only."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services_fixtures import tiny_simclr
from sslengine.store import Store

VIEWS = Path(__file__).resolve().parent.parent / "app" / "views"
MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"
SECRETS = {
    "passwords": {"alice": "wonderland", "guest": "guest-pw"},
    "roles": {"admins": [], "viewers": ["guest"]},
}


def _main(hosted: bool, monkeypatch) -> AppTest:
    monkeypatch.setenv("SSL_HOSTED", "1" if hosted else "0")
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    for k, v in SECRETS.items():
        at.secrets[k] = v
    return at


def test_local_mode_needs_no_login(ssl_home, monkeypatch):
    at = _main(False, monkeypatch)
    at.switch_page(str(VIEWS / "launch.py")).run()
    assert not at.exception
    assert not any(b.label == "Sign in" for b in at.button)
    assert not at.sidebar.text_input


def test_hosted_launch_requires_login_and_refuses_viewers(ssl_home, monkeypatch):
    store = Store.default()
    before = len(store.list_runs())
    at = _main(True, monkeypatch)
    at.switch_page(str(VIEWS / "launch.py")).run()
    assert not at.exception
    at.button(key="launch").click().run()
    assert any("Sign in" in i.value for i in at.info)
    assert len(store.list_runs()) == before  # nothing queued without a user

    at.sidebar.text_input(key="auth_name").set_value("alice")
    at.sidebar.text_input(key="auth_password").set_value("wrong")
    at.sidebar.button[0].click().run()
    assert any("Wrong user or password" in e.value for e in at.sidebar.error)
    assert "auth_user" not in at.session_state

    at.sidebar.text_input(key="auth_name").set_value("guest")
    at.sidebar.text_input(key="auth_password").set_value("guest-pw")
    at.sidebar.button[0].click().run()
    assert at.session_state["auth_user"] == "guest"
    at.button(key="launch").click().run()
    assert any("read-only" in i.value for i in at.info)
    assert len(store.list_runs()) == before


@pytest.mark.integration
def test_hosted_member_launches_as_owner_and_cannot_cancel_others(
    ssl_home, redis_url, celery_queue_env, monkeypatch
):
    store = Store.default()
    bobs = store.create_run(
        tiny_simclr(),
        name="bobs",
        owner="bob",
        method="simclr",
        dataset="digits",
        backbone="small_resnet",
    )
    at = _main(True, monkeypatch)
    at.session_state["auth_user"] = "alice"
    at.switch_page(str(VIEWS / "launch.py")).run()
    at.text_input(key="cfg.name").set_value("alices-run")
    at.button(key="launch").click().run()
    assert not at.exception
    mine = next(r for r in store.list_runs() if r.name == "alices-run")
    assert mine.owner == "alice"

    at.switch_page(str(VIEWS / "runs.py"))
    at.query_params["run"] = bobs
    at.run()
    assert not at.exception
    assert at.button(key="act.cancel").disabled
    assert at.button(key="act.delete").disabled
