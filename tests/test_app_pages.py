"""Streamlit AppTest for the Launch, Runs, Run-detail and Compare pages against a real store
filled by real tiny runs, plus every page's empty state and bad URLs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Error as ErrorElement

from sslengine.store import Store

pytestmark = pytest.mark.integration
PAGES = str(Path(__file__).resolve().parent.parent / "app" / "views")
ALL_PAGES = ("runs", "launch", "run", "compare", "layers", "clusters", "retrieval", "embeddings")


def _page(name: str, **params: str) -> AppTest:
    at = AppTest.from_file(f"{PAGES}/{name}.py", default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    return at


def _figure(at: AppTest, key_fragment: str | None = None, index: int = 0) -> dict:
    """The plotly figure JSON a page sent (the proto carries it as a string)."""
    charts = at.get("plotly_chart")
    if key_fragment is not None:
        charts = [c for c in charts if key_fragment in c.proto.id]
    return json.loads(charts[index].proto.spec)


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture
def scratch_runs(ssl_home):
    """Runs a test creates by hand; deleted afterwards so no worker's watchdog adopts them."""
    store = Store.default()
    made: list[str] = []

    def make(status: str = "queued", name: str = "scratch", **config) -> str:
        from services_fixtures import tiny_simclr

        run_id = store.create_run(
            {**tiny_simclr(), **config},
            name=name,
            method="simclr",
            dataset="digits",
            backbone="small_resnet",
        )
        made.append(run_id)
        if status != "queued":
            if status != "running":
                store.set_status(run_id, "running")
            store.set_status(run_id, status)
        return run_id

    yield make
    for run_id in made:
        store.delete_run(run_id)


@pytest.fixture
def empty_store(ssl_home, tmp_path, monkeypatch):
    """A fresh migrated database with no runs, and the app's cached store handle reset."""
    from app.state import store
    from sslengine.store import migrate

    monkeypatch.setenv("SSL_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("SSL_ARTIFACTS", str(tmp_path / "artifacts"))
    migrate()
    store.clear()
    yield Store.default()
    store.clear()


# ---------------------------------------------------------------------------- empty state


@pytest.mark.parametrize("name", ALL_PAGES)
def test_every_page_works_with_zero_runs(empty_store, name):
    at = _page(name)
    at.run()
    assert not at.exception, at.exception
    if name != "launch":
        assert "No runs yet" in _texts(at.info)
    else:
        assert at.button(key="launch")


# ---------------------------------------------------------------------------- run detail


def test_run_page_shows_curve_status_and_knn(finished_run):
    at = _page("run", run=finished_run)
    at.run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Status"] == "succeeded"
    knn = Store.default().last_metric(finished_run, "knn_top1_k20")
    assert labels["kNN top-1 (k=20)"] == f"{knn[1] * 100:.1f}%"
    loss = _figure(at, "loss_chart")
    steps, values = Store.default().metric_series(finished_run, "loss")
    assert loss["data"][0]["x"] == steps and loss["data"][0]["y"] == pytest.approx(values)


def test_run_page_collapse_charts_have_their_reference_lines(finished_run):
    store = Store.default()
    at = _page("run", run=finished_run)
    at.run()
    ref = store.last_metric(finished_run, "embed_std_ref")[1]
    std = _figure(at, "std_chart")
    assert std["layout"]["shapes"][0]["y0"] == pytest.approx(ref)
    erank = _figure(at, "erank_chart")
    # the dashed line is the embedding dimension d = 1 / ref^2 (the largest possible rank)
    assert erank["layout"]["shapes"][0]["y0"] == round(1 / ref**2)
    assert erank["data"][0]["y"] == pytest.approx(
        store.metric_series(finished_run, "effective_rank")[1]
    )


def test_run_page_lists_checkpoints_and_offers_evaluations(finished_run):
    at = _page("run", run=finished_run)
    at.run()
    steps = [c.step for c in Store.default().list_checkpoints(finished_run)]
    frames = [d.value for d in at.dataframe if "path" in d.value.columns]
    assert sorted(frames[0]["step"].tolist()) == steps
    assert at.selectbox(key="eval_step").options == [str(s) for s in steps[::-1]]
    for kind in ("knn", "probe", "retrieval", "clusters"):
        assert at.button(key=f"eval.{kind}.False")


def test_run_page_eval_launch_without_broker_is_a_message(finished_run, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    at = _page("run", run=finished_run)
    at.run()
    at.button(key="eval.knn.False").click()
    at.run()
    assert not at.exception
    assert "Could not queue the kNN evaluation" in _texts(at.error)


def test_run_page_failed_run_shows_error_and_log_tail(failed_run, scratch_runs, tmp_path):
    store = Store.default()
    run_id = scratch_runs("failed", name="crashed")
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(250)))
    store.update_run(run_id, log_path=str(log), error="RuntimeError: boom at step 7")
    at = _page("run", run=run_id)
    at.run()
    assert not at.exception
    codes = [c.value for c in at.code]
    assert any("boom at step 7" in c for c in codes)
    tail = next(c for c in codes if "line 249" in c).splitlines()
    assert tail == [f"line {i}" for i in range(150, 250)]  # exactly the last 100 lines

    at = _page("run", run=failed_run)
    at.run()
    assert any("dataset path /nope" in c.value for c in at.code)


def test_run_page_running_run_shows_eta_and_cancels(scratch_runs):
    store = Store.default()
    run_id = scratch_runs("running", name="live-one")
    store.log_metrics(run_id, [(s, "loss", 5.0 - 0.01 * s, time.time()) for s in range(1, 60)])
    store.update_run(run_id, step=59, total_steps=200, progress=59 / 200, eta_seconds=125.0)
    store.heartbeat(run_id, "gpu-host-1")
    at = _page("run", run=run_id)
    at.run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Status"] == "running"
    assert labels["ETA"] == "2m 05s"
    assert labels["Step"] == "59 / 200"
    assert "gpu-host-1" in _texts(at.caption)
    at.button(key="cancel").click()
    at.run()
    assert store.get_run(run_id).cancel_requested


def test_run_page_unknown_id_is_a_message_not_a_traceback(ssl_home):
    at = _page("run", run="doesnotexist")
    at.run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


# ---------------------------------------------------------------------------- runs


def test_runs_page_lists_runs_with_knn_and_filters(finished_run, failed_run):
    store = Store.default()
    at = _page("runs")
    at.run()
    assert not at.exception
    df = at.dataframe[0].value
    row = df[df["run"].str.contains(finished_run)].iloc[0]
    assert row["best kNN %"] == pytest.approx(
        round(100 * store.last_metric(finished_run, "knn_top1_k20")[1], 2)
    )
    assert row["status"] == "succeeded"
    assert failed_run in " ".join(df["run"])

    at = _page("runs", status="failed")
    at.run()
    statuses = set(at.dataframe[0].value["status"])
    assert statuses == {"failed"}
    assert at.query_params["status"] == "failed"

    at = _page("runs")
    at.run()
    at.text_input(key="f.q").set_value("broken").run()
    names = set(at.dataframe[0].value["name"])
    assert "broken" in names and "finished" not in names


def test_runs_page_delete_needs_confirmation(scratch_runs):
    store = Store.default()
    run_id = scratch_runs("failed", name="to-delete")
    at = _page("runs", run=run_id)
    at.run()
    assert at.selectbox(key="selected_run").value == run_id
    at.button(key="act.delete").click().run()
    assert store.get_run(run_id) is not None  # asked, not deleted
    assert "cannot be undone" in _texts(at.warning)
    at.button(key="act.delete_keep").click().run()
    assert store.get_run(run_id) is not None
    at.button(key="act.delete").click().run()
    at.button(key="act.delete_confirm").click().run()
    assert not at.exception
    assert store.get_run(run_id) is None


def test_runs_page_cancel_and_clone_link(scratch_runs):
    store = Store.default()
    run_id = scratch_runs("queued", name="waiting")
    at = _page("runs", run=run_id)
    at.run()
    assert at.button(key="act.delete").disabled  # a live run cannot be deleted
    at.button(key="act.cancel").click().run()
    assert store.get_run(run_id).status == "cancelled"
    assert f"/launch?clone={run_id}" in _texts(at.markdown)


def test_runs_page_resume_queues_a_stopped_run(
    scratch_runs, finished_run, redis_url, celery_queue_env
):
    import redis

    store = Store.default()
    run_id = scratch_runs("cancelled", name="to-resume")
    ckpt = store.latest_checkpoint(finished_run)
    store.add_checkpoint(run_id, ckpt.step, ckpt.path)
    client = redis.Redis.from_url(redis_url)
    before = client.llen(celery_queue_env)
    at = _page("runs", run=run_id)
    at.run()
    at.button(key="act.resume").click().run()
    assert not at.exception
    # queued, unless a worker of this session took the message at once and started it
    assert store.get_run(run_id).status in {"queued", "running", "succeeded"}
    # the message is either still in the queue or a worker of this session already took it
    # (it may be between popping the message and recording its host: wait for that)
    deadline = time.monotonic() + 60
    while client.llen(celery_queue_env) < before + 1:
        run = store.get_run(run_id)
        if run.worker_host or run.status != "queued":
            break
        assert time.monotonic() < deadline, "resume queued nothing"
        time.sleep(0.2)


def test_runs_page_resume_without_broker_is_a_message(scratch_runs, finished_run, monkeypatch):
    store = Store.default()
    run_id = scratch_runs("failed", name="no-broker")
    ckpt = store.latest_checkpoint(finished_run)
    store.add_checkpoint(run_id, ckpt.step, ckpt.path)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    at = _page("runs", run=run_id)
    at.run()
    at.button(key="act.resume").click().run()
    assert not at.exception
    assert "cannot reach Redis" in _texts(at.error)
    assert store.get_run(run_id).status == "failed"


def test_queue_status_without_broker_answers_fast(ssl_home, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    st.cache_data.clear()
    t0 = time.monotonic()
    at = _page("runs")
    at.run()
    assert not at.exception
    assert "Broker not reachable" in _texts(at.warning)
    checked = next(c.value for c in at.caption if c.value.startswith("checked in"))
    assert float(checked.split()[2]) < 1.0  # the 0.3 s broker check, not connection retries
    assert time.monotonic() - t0 < 30
    st.cache_data.clear()


def test_queue_status_with_broker_and_no_worker_is_bounded(redis_url, queue_name):
    from app.queue_status import fetch_queue_status

    t0 = time.monotonic()
    status = fetch_queue_status(timeout_s=0.7)
    elapsed = time.monotonic() - t0
    assert status.broker_error is None
    assert elapsed < 2.5  # three broadcasts asked in parallel, each waiting 0.7 s
    assert status.waiting is not None


# ---------------------------------------------------------------------------- launch


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


def _in_order(at: AppTest) -> list:
    """Every element and block of the page, in the order it is drawn."""
    out: list = []

    def walk(node) -> None:
        for child in getattr(node, "children", {}).values():
            out.append(child)
            walk(child)

    walk(at._tree)
    return out


def _error_under(at: AppTest, key: str) -> str:
    """The text of the st.error drawn right under the widget ``key`` ('' when there is none)."""
    nodes = _in_order(at)
    i = next(i for i, n in enumerate(nodes) if getattr(n, "key", None) == key)
    below = nodes[i + 1] if i + 1 < len(nodes) else None
    return str(below.value) if isinstance(below, ErrorElement) else ""


def _errors_above_form(at: AppTest) -> str:
    """The st.error texts drawn before the form's first widget (the method selectbox)."""
    nodes = _in_order(at)
    first = next(i for i, n in enumerate(nodes) if getattr(n, "key", None) == "cfg.method")
    return _texts(n for n in nodes[:first] if isinstance(n, ErrorElement))


def _launch_with(at: AppTest, **text_inputs: str) -> None:
    at.run()
    assert not at.exception
    for key, value in text_inputs.items():
        at.text_input(key=key).set_value(value)
    at.button(key="launch").click()
    at.run()
    assert not at.exception


def test_launch_page_union_error_is_one_message_under_its_field(
    ssl_home, redis_url, celery_queue_env
):
    """train.devices is 'auto' | int: pydantic reports train.devices.int and
    train.devices.literal['auto']; both become one message under the devices box."""
    store = Store.default()
    before = len(store.list_runs())
    at = _page("launch")
    _launch_with(at, **{"cfg.train.devices": "many"})
    under = _error_under(at, "cfg.train.devices")
    assert "train.devices" in under and "expected 'auto' or an integer" in under, under
    assert "literal[" not in _texts(at.error) and "devices.int" not in _texts(at.error)
    assert "train.devices" in _texts(at.error[-1:])  # and named next to the Launch button
    assert not at.success
    assert len(store.list_runs()) == before


def test_launch_page_bad_list_item_is_shown_under_its_field(ssl_home, redis_url, celery_queue_env):
    """A bad item of eval.knn_k is reported by pydantic as eval.knn_k.1 (the second item)."""
    store = Store.default()
    before = len(store.list_runs())
    at = _page("launch")
    _launch_with(at, **{"cfg.eval.knn_k": "[20, a]"})
    under = _error_under(at, "cfg.eval.knn_k")
    assert "eval.knn_k" in under and "item 2: expected an integer" in under, under
    assert "knn_k.1" not in _texts(at.error)
    assert not at.success
    assert len(store.list_runs()) == before


def test_launch_page_whole_config_error_is_shown_above_the_form(
    ssl_home, redis_url, celery_queue_env
):
    store = Store.default()
    before = len(store.list_runs())
    at = _page("launch")
    at.run()
    at.number_input(key="cfg.train.batch_size").set_value(30)
    _launch_with(at, **{"cfg.train.devices": "4"})
    assert "not divisible by train.devices" in _errors_above_form(at)
    assert not at.success
    assert len(store.list_runs()) == before


def test_launch_page_error_without_a_widget_is_never_dropped(
    ssl_home, redis_url, celery_queue_env, monkeypatch
):
    """Errors no drawn widget owns (an unknown path, a method section not shown) go to a
    visible block at the top of the form; one below a section goes under that section."""
    import sslengine.config

    real = sslengine.config.config_errors

    def with_extra(data: dict) -> dict[str, str]:
        return {
            **real(data),
            "mystery.deep.path": "a problem with no widget",
            "moco.queue_size": "a problem in a section not drawn",
            "train.devices_x": "a key below train, not below train.devices",
        }

    monkeypatch.setattr(sslengine.config, "config_errors", with_extra)
    store = Store.default()
    before = len(store.list_runs())
    at = _page("launch")
    _launch_with(at)
    top = _errors_above_form(at)
    assert "mystery.deep.path" in top and "a problem with no widget" in top, top
    assert "moco.queue_size" in top and "a problem in a section not drawn" in top, top
    assert _error_under(at, "cfg.train.devices") == ""
    assert "train.devices_x" in _texts(at.error) and "train.devices_x" not in top
    assert not at.success
    assert len(store.list_runs()) == before


def test_launch_page_submits_a_valid_config(ssl_home, redis_url, celery_queue_env):
    store = Store.default()
    at = _page("launch")
    at.run()
    at.text_input(key="cfg.name").set_value("from-apptest")
    at.number_input(key="cfg.train.batch_size").set_value(64)
    at.text_area(key="notes").set_value("a note")
    at.button(key="launch").click()
    at.run()
    assert not at.exception
    assert any("Queued run" in s.value for s in at.success)
    run = next(r for r in store.list_runs() if r.name == "from-apptest")
    assert run.config["train"]["batch_size"] == 64
    assert run.notes == "a note"
    store.request_cancel(run.id)
    store.set_status(run.id, "cancelled")  # nothing should train it later in the session


def test_launch_page_shows_dataset_counts_before_launch(ssl_home):
    from sklearn.datasets import load_digits

    at = _page("launch")
    at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    digits = load_digits()
    assert metrics["Images"] == f"{len(digits.target):,}"
    assert metrics["Classes"] == str(len(set(digits.target.tolist())))
    # a per-class cap says how many of those a run will use (digits: 10 classes)
    at.text_input(key="cfg.dataset.max_per_class").set_value("5").run()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "dataset.max_per_class 5: at most that many images of each class" in captions
    assert "train: ≤ 50" in captions and "test: ≤ 50" in captions
    # the held-out split may keep more (digits' test split has 360 images)
    at.text_input(key="cfg.dataset.test_max_per_class").set_value("20").run()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "dataset.max_per_class 5, dataset.test_max_per_class 20" in captions
    assert "train: ≤ 50" in captions and "test: ≤ 200" in captions


def test_launch_page_lists_data_roots_and_counts_the_chosen_one(ssl_home):
    from PIL import Image

    root = ssl_home / "data" / "shapes"
    counts = {"circle": 3, "square": 2}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / cls / f"{i}.png")
    at = _page("launch")
    at.run()
    pick = next(s for s in at.selectbox if s.label == "Dataset")
    label = next(o for o in pick.options if o.startswith("shapes/"))
    assert "digits (built in)" in pick.options
    pick.set_value(label).run()
    assert not at.exception
    assert at.selectbox(key="cfg.dataset.name").value == "imagefolder"
    assert at.text_input(key="cfg.dataset.root").value == "shapes"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == str(sum(counts.values()))
    assert metrics["Classes"] == str(len(counts))


def test_launch_page_unreadable_dataset_is_a_message(ssl_home):
    at = _page("launch")
    at.run()
    at.selectbox(key="cfg.dataset.name").set_value("imagefolder")
    at.text_input(key="cfg.dataset.root").set_value("no/such/folder").run()
    assert not at.exception
    assert "Dataset not readable" in _texts(at.warning)


def test_launch_page_clone_from_url_prefills_the_form(finished_run):
    store = Store.default()
    source = store.get_run(finished_run)
    at = _page("launch", clone=finished_run)
    at.run()
    assert not at.exception
    assert at.text_input(key="cfg.name").value == f"{source.name} (clone)"
    assert at.number_input(key="cfg.train.batch_size").value == source.config["train"]["batch_size"]
    assert at.number_input(key="cfg.dataset.image_size").value == 16
    assert finished_run in at.text_area(key="notes").value


def test_launch_page_clone_of_unknown_run_is_a_message(ssl_home):
    at = _page("launch", clone="nosuchrun")
    at.run()
    assert not at.exception
    assert "does not exist" in _texts(at.warning)


def test_launch_page_imports_yaml(ssl_home):
    at = _page("launch")
    at.run()
    text = yaml.safe_dump(
        {"method": "moco", "train": {"batch_size": 32}, "moco": {"queue_size": 64}}
    )
    at.file_uploader(key="yaml_import").set_value(("exp.yaml", text.encode(), "text/yaml")).run()
    assert not at.exception
    assert at.selectbox(key="cfg.method").value == "moco"
    assert at.number_input(key="cfg.train.batch_size").value == 32
    assert at.number_input(key="cfg.moco.queue_size").value == 64


def test_launch_page_bad_yaml_is_a_message(ssl_home):
    at = _page("launch")
    at.run()
    bad = b"train:\n  batch_size: -3\n  nonsense: 1\n"
    at.file_uploader(key="yaml_import").set_value(("bad.yaml", bad, "text/yaml")).run()
    assert not at.exception
    assert "Could not import bad.yaml" in _texts(at.error)


# ---------------------------------------------------------------------------- compare


def test_compare_page_overlays_runs_and_tabulates_final_metrics(finished_run, failed_run):
    store = Store.default()
    at = _page("compare", runs=f"{finished_run},{failed_run},gone123", key="loss")
    at.run()
    assert not at.exception
    assert "gone123" in _texts(at.warning)
    fig = _figure(at, "compare_chart")
    assert len(fig["data"]) == 1  # the failed run logged nothing
    assert fig["data"][0]["y"] == pytest.approx(store.metric_series(finished_run, "loss")[1])
    assert "broken" in _texts(at.caption)
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[finished_run, "loss"] == pytest.approx(
        store.last_metric(finished_run, "loss")[1]
    )
    assert table.loc[finished_run, "knn_top1_k20"] == pytest.approx(
        store.last_metric(finished_run, "knn_top1_k20")[1]
    )

    at.selectbox(key="metric_key").set_value("effective_rank").run()
    assert at.query_params["key"] == "effective_rank"
    fig = _figure(at, "compare_chart")
    assert fig["data"][0]["y"] == pytest.approx(
        store.metric_series(finished_run, "effective_rank")[1]
    )


def test_launch_page_with_redis_down_names_the_url_and_stores_nothing(ssl_home, monkeypatch):
    """Broker unreachable: the page says which URL it tried; no run row is left `queued`."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"  # nothing listens after close
    monkeypatch.setenv("REDIS_URL", dead)
    store = Store.default()
    before = len(store.list_runs())
    at = _page("launch")
    at.run()
    at.text_input(key="cfg.name").set_value("redis-down")
    at.button(key="launch").click()
    at.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert f"cannot reach Redis at {dead}" in errors, errors
    assert not at.success
    assert len(store.list_runs()) == before
