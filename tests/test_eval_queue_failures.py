"""Evaluations that cannot run: refused before anything is queued when the request is bad, and
recorded as a failed evaluation job (status and error, in the store, the CLI and the run page)
when they fail on the worker, which keeps serving the next task."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslengine.store import EvalJobRecord, Store
from sslengine.store.artifacts import run_artifact_dir
from tasks.evaluate import _summary

JOB_DONE = {"succeeded", "failed"}
RUN_PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "run.py")


def wait_for_job(
    store: Store, task_id: str, worker: subprocess.Popen, timeout_s: float = 180
) -> EvalJobRecord:
    """The evaluation job of a Celery task once it has finished; fails at once if the worker
    died."""
    deadline = time.monotonic() + timeout_s
    job = None
    while time.monotonic() < deadline:
        job = next((j for j in store.list_eval_jobs() if j.task_id == task_id), None)
        if job is not None and job.status in JOB_DONE:
            return job
        if worker.poll() is not None:
            pytest.fail(f"the Celery worker exited (code {worker.returncode}); job {job}")
        time.sleep(0.3)
    pytest.fail(f"evaluation task {task_id} not finished after {timeout_s} s: {job}")


# ---------------------------------------------------------------------------- the store


def test_eval_job_rows(store: Store) -> None:
    run_id = store.create_run({}, name="r", method="simclr", dataset="digits", backbone="x")
    job = store.create_eval_job(run_id, "probe", checkpoint_step=10, params={"epochs": 2})
    (row,) = store.list_eval_jobs(run_id)
    assert (row.id, row.status, row.checkpoint_step, row.params) == (
        job,
        "queued",
        10,
        {"epochs": 2},
    )
    assert row.started_at is None and row.error is None and row.all_checkpoints is False
    store.set_eval_job_status(job, "running", worker_host="w1", log_path="/x.log")
    store.set_eval_job_status(job, "failed", error="ValueError: boom")
    row = store.get_eval_job(job)
    assert (row.status, row.error, row.worker_host, row.log_path) == (
        "failed",
        "ValueError: boom",
        "w1",
        "/x.log",
    )
    assert row.started_at <= row.finished_at
    other = store.create_eval_job(run_id, "knn")
    store.set_eval_job_status(other, "succeeded", result_ids=[3, 4])
    assert store.get_eval_job(other).result_ids == [3, 4]
    assert [j.id for j in store.list_eval_jobs(status="failed")] == [job]
    with pytest.raises(ValueError, match="unknown evaluation job status"):
        store.set_eval_job_status(job, "lost")
    with pytest.raises(KeyError):
        store.set_eval_job_status(10**9, "failed")
    store.delete_run(run_id)
    assert store.list_eval_jobs(run_id) == [] and store.get_eval_job(job) is None


def test_failure_summary_is_the_reason_in_one_line() -> None:
    refused = "INFO x: loading\nerror: unknown tap(s) ['layer9']; known taps: conv1, pooled\n"
    assert _summary(refused, 2) == "unknown tap(s) ['layer9']; known taps: conv1, pooled"
    crashed = (
        'INFO x: loading\nTraceback (most recent call last):\n  File "a.py", line 1\n'
        "RuntimeError: out of memory\n"
    )
    assert _summary(crashed, 1) == "RuntimeError: out of memory"
    assert _summary("", -9) == "the evaluation process was killed by SIGKILL"
    assert _summary("", 3) == "the evaluation process exited with code 3"


# ---------------------------------------------------------------------------- refused at submit


@pytest.fixture(scope="module")
def unlabelled_run(ssl_home, finished_run):
    """A run on a one-folder ImageFolder (no labels), given a checkpoint to evaluate."""
    folder = ssl_home / "data" / "unlabelled-queue" / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    store = Store.default()
    config = {"dataset": {"name": "imagefolder", "root": str(folder.parent), "image_size": 16}}
    run_id = store.create_run(
        config, name="unlabelled", method="simclr", dataset="imagefolder", backbone="small_resnet"
    )
    ckpt = store.latest_checkpoint(finished_run)
    store.add_checkpoint(run_id, ckpt.step, ckpt.path)
    store.set_status(run_id, "running")
    store.set_status(run_id, "succeeded")
    yield run_id
    store.delete_run(run_id)


@pytest.fixture(scope="module")
def run_without_checkpoint(ssl_home):
    store = Store.default()
    run_id = store.create_run({}, name="empty", method="simclr", dataset="digits", backbone="x")
    store.set_status(run_id, "running")
    store.set_status(run_id, "failed", error="RuntimeError: died before its first checkpoint")
    yield run_id
    store.delete_run(run_id)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("which", "kind", "kwargs", "message"),
    [
        ("empty", "probe", {}, "has no checkpoint"),
        ("finished", "probe", {"layer": "layer9"}, r"unknown tap\(s\) \['layer9'\]"),
        ("finished", "probe", {"layer": "conv1,res5"}, "known taps: conv1, layer1"),
        ("unlabelled", "probe", {}, "needs labels"),
        ("unlabelled", "knn", {}, "needs labels"),
        ("unlabelled", "finetune", {}, "needs labels"),
    ],
)
def test_bad_queued_requests_are_refused_before_anything_is_queued(
    which, kind, kwargs, message, finished_run, unlabelled_run, run_without_checkpoint, idle_queue
):
    from tasks.evaluate import submit_evaluation

    queue, client = idle_queue
    run_id = {
        "empty": run_without_checkpoint,
        "finished": finished_run,
        "unlabelled": unlabelled_run,
    }[which]
    store = Store.default()
    jobs_before, rows_before = len(store.list_eval_jobs()), len(store.list_eval_results())
    eval_dir = run_artifact_dir(run_id) / "eval"
    files_before = sorted(eval_dir.rglob("*")) if eval_dir.exists() else []
    with pytest.raises(ValueError, match=message):
        submit_evaluation(run_id, kind, queue=queue, **kwargs)
    assert client.llen(queue) == 0, "a refused request reached the broker"
    assert len(store.list_eval_jobs()) == jobs_before
    assert len(store.list_eval_results()) == rows_before
    assert (sorted(eval_dir.rglob("*")) if eval_dir.exists() else []) == files_before


@pytest.mark.integration
def test_a_valid_request_does_reach_the_idle_queue(finished_run, idle_queue):
    """The control for the test above: `llen` does see a queued evaluation."""
    from tasks.evaluate import submit_evaluation

    queue, client = idle_queue
    store = Store.default()
    task_id = submit_evaluation(finished_run, "probe", layer="pooled", queue=queue)
    assert client.llen(queue) == 1
    (job,) = [j for j in store.list_eval_jobs(finished_run) if j.task_id == task_id]
    assert job.status == "queued" and job.layer == "pooled"
    assert job.checkpoint_step == store.latest_checkpoint(finished_run).step  # pinned at submit
    client.delete(queue)  # never delivered: close the row so it does not look pending
    store.set_eval_job_status(job.id, "failed", error="discarded by the test")


@pytest.mark.integration
def test_cli_queue_refusals_are_messages(finished_run, run_without_checkpoint, unlabelled_run):
    from typer.testing import CliRunner

    from sslengine.cli_eval import eval_app

    runner = CliRunner()
    for args, message in (
        (["probe", run_without_checkpoint, "--queue"], "has no checkpoint"),
        (["probe", finished_run, "--layer", "layer9", "--queue"], "layer9"),
        (["knn", unlabelled_run, "--queue"], "needs labels"),
    ):
        result = runner.invoke(eval_app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------- failing on the worker


@pytest.fixture
def scratch_copy(finished_run):
    """A run whose only checkpoint is a copy of the finished run's, to delete at will."""
    store = Store.default()
    src = store.latest_checkpoint(finished_run)
    run = store.get_run(finished_run)
    run_id = store.create_run(
        run.config, name="doomed", method="simclr", dataset="digits", backbone="small_resnet"
    )
    store.set_status(run_id, "running")
    store.set_status(run_id, "succeeded")
    path = run_artifact_dir(run_id) / "checkpoints" / "copy.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.path, path)
    store.add_checkpoint(run_id, src.step, str(path))
    yield run_id, path
    store.delete_run(run_id)


@pytest.mark.integration
def test_failed_queued_evaluations_are_recorded_and_the_worker_keeps_serving(
    finished_run, scratch_copy, celery_worker, queue_name
):
    from typer.testing import CliRunner

    from sslengine.cli_eval import eval_app
    from tasks.evaluate import evaluate, submit_evaluation

    store = Store.default()
    run_id, ckpt = scratch_copy
    step = store.latest_checkpoint(run_id).step
    # 1. the checkpoint file disappears between submission (validated: it existed) and
    #    execution (the child process needs seconds to import torch before it looks)
    gone = submit_evaluation(run_id, "probe", params={"epochs": 1}, queue=queue_name)
    ckpt.unlink()
    # 2. a message that skipped validation (an older client, a hand-made task): no such layer;
    #    the task records the job itself
    bad_layer = evaluate.apply_async(
        args=[finished_run, "probe", None, "layer9", {"epochs": 1}, False], queue=queue_name
    ).id
    # 3. the worker still serves a good request after both failures
    good = submit_evaluation(finished_run, "knn", params={"k": [5]}, queue=queue_name)

    job = wait_for_job(store, gone, celery_worker)
    assert job.status == "failed" and job.kind == "probe" and job.checkpoint_step == step
    assert f"checkpoint file of run {run_id} at step {step} is missing" in job.error
    assert "Traceback" not in job.error
    assert job.worker_host and job.started_at and job.finished_at and job.result_ids is None
    assert "is missing" in open(job.log_path).read()

    job = wait_for_job(store, bad_layer, celery_worker)
    assert job.status == "failed" and job.layer == "layer9" and job.run_id == finished_run
    assert "unknown tap(s) ['layer9']" in job.error

    job = wait_for_job(store, good, celery_worker)
    assert job.status == "succeeded", job.error
    (row,) = [r for r in store.list_eval_results(finished_run) if r.id in job.result_ids]
    assert row.kind == "knn" and "knn_top1_k5" in row.metrics
    assert celery_worker.poll() is None
    assert store.list_eval_results(run_id) == [], "a failed evaluation wrote results"

    # visible: the CLI lists the failure with its message ...
    out = CliRunner().invoke(eval_app, ["jobs", run_id])
    assert out.exit_code == 0, out.output
    assert "failed" in out.output and "is missing" in out.output
    listed = json.loads(CliRunner().invoke(eval_app, ["jobs", run_id, "--json"]).stdout)
    assert [(j["status"], j["kind"]) for j in listed] == [("failed", "probe")]
    # ... and so does the run's page
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(RUN_PAGE, default_timeout=60)
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception
    errors = "\n".join(str(e.value) for e in at.error)
    assert f"The probe evaluation of step {step}" in errors and "is missing" in errors
    jobs_table = next(d.value for d in at.dataframe if "error" in d.value.columns)
    assert jobs_table["status"].tolist() == ["failed"]
