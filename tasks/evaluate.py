"""The evaluation task: JSON arguments in, the evaluation run in a child process.

The worker never imports CUDA-touching code: `python -m sslengine.eval.jobs` does the work in
its own process group (killed on the way out, whatever happens), so a crashed or hung
evaluation cannot hold a GPU or take the worker with it. Its log goes to
``<run artifacts>/eval/logs/``.

Every evaluation sent through the queue has an ``eval_jobs`` row in the store (the store is the
source of truth; Celery keeps no results): ``queued`` when it is submitted, ``running`` on the
worker, then ``succeeded`` with the ids of the ``eval_results`` rows it wrote, or ``failed``
with the error (for example a checkpoint file deleted after submission). A failed evaluation
never takes the worker down: the next task is served as usual.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sslengine.store import Store
from sslengine.store.artifacts import push_run_artifacts, run_artifact_dir
from tasks.celery_app import app

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


class EvaluationFailed(RuntimeError):
    """The evaluation process exited non-zero; the message carries its last output.

    ``summary`` is the one-line reason (the refusal of ``sslengine.eval.jobs``, or the last line
    of the child's traceback); ``log_path`` is the child's whole log."""

    def __init__(self, message: str, summary: str = "", log_path: Path | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message
        self.log_path = log_path


def _summary(log_text: str, returncode: int) -> str:
    """The reason an evaluation process failed, in one line where possible."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the evaluation process was killed by {name}"
    errors = [line for line in lines if line.startswith("error: ")]
    if returncode == 2 and errors:  # sslengine.eval.jobs refused the request: its message
        return errors[-1].removeprefix("error: ")
    if "Traceback (most recent call last):" in lines:
        # the exception line ends the traceback (after any chained one)
        return lines[-1]
    return lines[-1] if lines else f"the evaluation process exited with code {returncode}"


def log_path_for(run_id: str, kind: str) -> Path:
    logs = run_artifact_dir(run_id) / "eval" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return logs / f"{kind}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.log"


def run_in_child(
    run_id: str,
    kind: str,
    checkpoint_step: int | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    all_checkpoints: bool = False,
    timeout_s: float | None = None,
    log_path: Path | None = None,
) -> list[int]:
    """Run `sslengine.eval.jobs` for one request in a new process group; returns its row ids.

    Raises EvaluationFailed (with the child's log tail) when it exits non-zero or times out."""
    cmd = [sys.executable, "-m", "sslengine.eval.jobs", run_id, kind]
    cmd += ["--params", json.dumps(params or {})]
    if checkpoint_step is not None:
        cmd += ["--step", str(int(checkpoint_step))]
    if layer:
        cmd += ["--layer", layer]
    if all_checkpoints:
        cmd.append("--all-checkpoints")
    log_path = log_path or log_path_for(run_id, kind)
    timed_out = False
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            env=os.environ.copy(),
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            out = b""
        finally:
            try:  # the child's own children (faiss/torch helpers) go with it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(10)
    if timed_out or proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        if timed_out:
            summary = f"the evaluation did not finish within {timeout_s:g} s"
        else:
            summary = _summary(text, proc.returncode)
        raise EvaluationFailed(
            f"evaluation '{kind}' of run {run_id} failed (exit {proc.returncode}): {summary}\n"
            f"last lines of {log_path}:\n{text[-4000:]}",
            summary=summary,
            log_path=log_path,
        )
    lines = out.decode(errors="replace").strip().splitlines()
    return list(json.loads(lines[-1])["ids"])


def _mark(store: Store, job_id: int, status: str, **values: Any) -> None:
    """Update the job's row; a store hiccup (or a run deleted meanwhile) is logged, not raised,
    so it cannot hide the evaluation's own outcome."""
    try:
        store.set_eval_job_status(job_id, status, **values)
    except Exception as err:  # noqa: BLE001
        log.warning("could not mark evaluation job %s %s: %s", job_id, status, err)


@app.task(name="sslengine.evaluate")
def evaluate(
    run_id: str,
    kind: str,
    checkpoint_step: int | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    all_checkpoints: bool = False,
    job_id: int | None = None,
) -> list[int]:
    """Run one evaluation; its ``eval_jobs`` row (created here when the sender made none)
    ends ``succeeded`` with the result ids or ``failed`` with the error, which is re-raised
    so Celery logs the task as failed too."""
    store = Store.default()
    if job_id is None:
        job_id = store.create_eval_job(
            run_id,
            kind,
            checkpoint_step=checkpoint_step,
            layer=layer,
            params=params,
            all_checkpoints=all_checkpoints,
            task_id=getattr(evaluate.request, "id", None),
        )
    log_path = log_path_for(run_id, kind)
    _mark(store, job_id, "running", worker_host=socket.gethostname(), log_path=str(log_path))
    try:
        ids = run_in_child(
            run_id, kind, checkpoint_step, layer, params, all_checkpoints, log_path=log_path
        )
    except EvaluationFailed as err:
        _mark(store, job_id, "failed", error=err.summary)
        raise
    except Exception as err:
        _mark(store, job_id, "failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        _upload(store, job_id, run_id)
    _mark(store, job_id, "succeeded", result_ids=ids)
    return ids


def _upload(store: Store, job_id: int, run_id: str) -> None:
    """Send the evaluation's files (results, embeddings, indexes, its log) to a remote
    artifact tree, so the dashboard on another host can open them; no-op for local trees."""
    try:
        push_run_artifacts(run_id)
    except Exception as err:
        _mark(store, job_id, "failed", error=f"results could not be uploaded: {err}")
        raise


def submit_evaluation(
    run_id: str,
    kind: str,
    checkpoint_step: int | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    all_checkpoints: bool = False,
    store: Store | None = None,
    queue: str | None = None,
) -> str:
    """Validate the request (run, checkpoint, layer, parameters, labels) and the broker, then
    record it (an ``eval_jobs`` row, ``queued``) and enqueue it; returns the Celery task id,
    which is also the job row's ``task_id``. Raises ValueError (or BrokerUnavailable) before
    anything is written or queued.

    A single-checkpoint request is pinned to the checkpoint validated here (None = the latest
    now), so the worker evaluates the checkpoint the caller saw."""
    from sslengine.eval.jobs import validate_request
    from tasks.submit import check_broker, send

    store = store or Store.default()
    if all_checkpoints and (kind != "probe" or checkpoint_step is not None):
        raise ValueError("all_checkpoints is for kind 'probe' without a checkpoint_step")
    req = validate_request(store, run_id, kind, checkpoint_step, layer, params)
    check_broker()
    step = None if all_checkpoints else req.checkpoint.step
    params = dict(params or {})
    task_id = str(uuid.uuid4())
    job_id = store.create_eval_job(
        run_id,
        kind,
        checkpoint_step=step,
        layer=layer,
        params=params,
        all_checkpoints=all_checkpoints,
        task_id=task_id,
    )
    try:
        send(
            evaluate,
            args=[run_id, kind, step, layer, params, all_checkpoints, job_id],
            queue=queue,
            task_id=task_id,
        )
    except Exception as err:
        store.set_eval_job_status(job_id, "failed", error=f"could not queue: {err}")
        raise
    return task_id
