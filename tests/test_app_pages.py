"""Streamlit AppTest for the Launch, Runs and Run-detail pages against a real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sslengine.store import Store

pytestmark = pytest.mark.integration
PAGES = str(Path(__file__).resolve().parent.parent / "app" / "views")


def _page(name: str) -> AppTest:
    return AppTest.from_file(f"{PAGES}/{name}.py", default_timeout=60)


def test_run_page_shows_curve_status_and_knn(finished_run):
    at = _page("run")
    at.query_params["run"] = finished_run
    at.run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Status"] == "succeeded"
    assert labels["kNN top-1 (k=20)"].endswith("%")
    assert len(at.get("plotly_chart")) >= 3  # loss, lr, throughput (+ probe / collapse)


def test_run_page_failed_run_shows_error(failed_run):
    at = _page("run")
    at.query_params["run"] = failed_run
    at.run()
    assert not at.exception
    assert any("dataset path /nope" in c.value for c in at.code)


def test_run_page_unknown_id_is_a_message_not_a_traceback(ssl_home):
    at = _page("run")
    at.query_params["run"] = "doesnotexist"
    at.run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


def test_runs_page_lists_runs(finished_run):
    at = _page("runs")
    at.run()
    assert not at.exception
    df = at.dataframe[0].value
    assert finished_run in " ".join(df["run"])


def test_launch_page_refuses_invalid_config_without_queueing(ssl_home, redis_url):
    store = Store.default()
    before = len(store.list_runs())
    at = _page("launch")
    at.run()
    assert not at.exception
    at.number_input(key="cfg.train.batch_size").set_value(0)
    at.button(key="launch").click()
    at.run()
    assert not at.exception
    assert any(
        "train.batch_size" in str(e.value) or "greater than" in str(e.value) for e in at.error
    )
    assert len(store.list_runs()) == before


def test_launch_page_submits_a_valid_config(ssl_home, redis_url, celery_queue_env):
    store = Store.default()
    at = _page("launch")
    at.run()
    at.text_input(key="cfg.name").set_value("from-apptest")
    at.number_input(key="cfg.train.batch_size").set_value(64)
    at.button(key="launch").click()
    at.run()
    assert not at.exception
    assert any("Queued run" in s.value for s in at.success)
    run = next(r for r in store.list_runs() if r.name == "from-apptest")
    assert run.config["train"]["batch_size"] == 64
