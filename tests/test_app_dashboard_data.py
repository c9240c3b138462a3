"""AppTest of how the Run and Runs pages read the store: the run page fetches a series again
only when it has grown, the Runs page reads its kNN column in one statement and filters by
method in the query, and the evaluation table says it refreshes while a job is queued."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import event
from streamlit.testing.v1 import AppTest

from sslengine.store import Store

PAGES = Path(__file__).resolve().parent.parent / "app" / "views"
REFRESHING = "Refreshing every"


@pytest.fixture
def app_store(tmp_path, monkeypatch) -> Store:
    """A fresh migrated SQLite store the pages open (their cached store handle reset)."""
    from app.state import store
    from sslengine.store import dispose_engines, migrate

    monkeypatch.setenv("SSL_HOME", str(tmp_path))
    monkeypatch.setenv("SSL_DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'ssl.db'}")
    monkeypatch.setenv("SSL_ARTIFACTS", str(tmp_path / "var" / "artifacts"))
    migrate()
    store.clear()
    st.cache_data.clear()
    yield Store.default()
    store.clear()
    st.cache_data.clear()
    dispose_engines()


def _run(store: Store, method: str = "simclr", name: str = "r", status: str = "succeeded") -> str:
    run_id = store.create_run(
        {"method": method}, name=name, method=method, dataset="cifar10", backbone="small_resnet"
    )
    if status != "queued":
        store.set_status(run_id, "running")
        if status != "running":
            store.set_status(run_id, status)
    return run_id


def _page(name: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    return at


def _captions(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def test_run_page_refetches_only_series_that_grew(app_store: Store, monkeypatch) -> None:
    run_id = _run(app_store)
    now = time.time()
    for key in ("loss", "lr", "throughput"):
        app_store.log_metrics(run_id, [(s, key, 1.0 / s, now) for s in range(1, 5001)])
    app_store.update_run(run_id, step=5000)
    fetched: list[str] = []
    original = Store.metric_series

    def counting(self, run_id, key, *args, **kwargs):
        fetched.append(key)
        return original(self, run_id, key, *args, **kwargs)

    monkeypatch.setattr(Store, "metric_series", counting)
    at = _page("run", run=run_id)
    at.run()
    assert not at.exception, at.exception
    assert sorted(fetched) == ["loss", "lr", "throughput"]  # only the charts drawn
    loss = at.get("plotly_chart")[0]
    assert len(at.get("plotly_chart")) == 3 and "loss_chart" in loss.proto.id

    fetched.clear()
    _page("run", run=run_id).run()  # another viewer, or a rerun: nothing fetched again
    assert fetched == []

    app_store.log_metrics(run_id, [(5001, "loss", 0.1, now)])  # only the loss grew
    _page("run", run=run_id).run()
    assert fetched == ["loss"]

    fetched.clear()  # a resumed run rewriting earlier steps moves the run's step
    app_store.log_metrics(run_id, [(10, "lr", 9.0, now)])
    app_store.update_run(run_id, step=10)
    at = _page("run", run=run_id)
    at.run()
    assert sorted(fetched) == ["loss", "lr", "throughput"]
    assert not at.exception


def test_run_page_shows_last_knn_and_no_metrics_message(app_store: Store) -> None:
    run_id = _run(app_store, status="running")
    at = _page("run", run=run_id)
    at.run()
    assert not at.exception, at.exception
    assert any("No metrics yet" in i.value for i in at.info)
    app_store.log_metrics(run_id, [(1, "loss", 2.0, 0.0), (7, "knn_top1_k20", 0.4567, 0.0)])
    at = _page("run", run=run_id)
    at.run()
    labels = {m.label: m.value for m in at.metric}
    assert labels["kNN top-1 (k=20)"] == "45.7%"
    assert len(at.get("plotly_chart")) == 1


def test_run_page_evaluations_refresh_while_a_job_is_queued(app_store: Store) -> None:
    run_id = _run(app_store)
    at = _page("run", run=run_id)
    at.run()
    assert not at.exception, at.exception
    assert REFRESHING not in _captions(at)  # a finished run, nothing queued: no timer

    job = app_store.create_eval_job(run_id, "knn", checkpoint_step=10)
    at.run()
    assert REFRESHING in _captions(at)
    assert "No evaluation results yet." in _captions(at)

    app_store.set_eval_job_status(job, "running", worker_host="gpu-1")
    at.run()
    assert REFRESHING in _captions(at)

    result = app_store.add_eval_result(run_id, "knn", {"top1_k20": 0.5}, checkpoint_step=10)
    app_store.set_eval_job_status(job, "succeeded", result_ids=[result])
    at.run()
    assert not at.exception, at.exception
    assert REFRESHING not in _captions(at)
    frames = [d.value for d in at.dataframe if "metrics" in d.value.columns]
    assert frames and frames[0]["metrics"].tolist() == ["top1_k20=0.5"]


def test_run_page_evaluations_refresh_while_the_run_is_live(app_store: Store) -> None:
    run_id = _run(app_store, status="running")
    at = _page("run", run=run_id)
    at.run()
    assert REFRESHING in _captions(at)


def test_runs_page_knn_column_in_one_statement_and_method_filter(app_store: Store) -> None:
    simclr = [_run(app_store, "simclr", f"s{i}") for i in range(6)]
    moco = [_run(app_store, "moco", f"m{i}") for i in range(3)]
    for i, run_id in enumerate(simclr + moco):
        app_store.log_metrics(
            run_id, [(1, "knn_top1_k20", 0.1, 0.0), (2, "knn_top1_k20", i / 100, 0.0)]
        )
    lookups: list[str] = []

    def on_execute(conn, cursor, statement, parameters, context, executemany) -> None:
        if "metrics" in statement:
            lookups.append(statement)

    event.listen(app_store.engine, "before_cursor_execute", on_execute)
    try:
        at = _page("runs")
        at.run()
    finally:
        event.remove(app_store.engine, "before_cursor_execute", on_execute)
    assert not at.exception, at.exception
    assert len(lookups) == 1  # not one per run
    df = at.dataframe[0].value
    assert len(df) == 9
    by_name = dict(zip(df["name"], df["best kNN %"], strict=True))
    assert by_name == {f"s{i}": i for i in range(6)} | {f"m{i}": 6 + i for i in range(3)}

    at = _page("runs", method="moco")
    at.run()
    assert set(at.dataframe[0].value["name"]) == {"m0", "m1", "m2"}
    assert at.selectbox(key="f.method").value == "moco"
