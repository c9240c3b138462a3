"""The evaluation task: JSON arguments in, the evaluation run in a child process.

The worker never imports CUDA-touching code: `python -m sslengine.eval.jobs` does the work in
its own process group (killed on the way out, whatever happens), so a crashed or hung
evaluation cannot hold a GPU or take the worker with it. Its log goes to
``<run artifacts>/eval/logs/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sslengine.store import Store
from sslengine.store.artifacts import run_artifact_dir
from tasks.celery_app import app

ROOT = Path(__file__).resolve().parent.parent


class EvaluationFailed(RuntimeError):
    """The evaluation process exited non-zero; the message carries its last output."""


def run_in_child(
    run_id: str,
    kind: str,
    checkpoint_step: int | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    all_checkpoints: bool = False,
    timeout_s: float | None = None,
) -> list[int]:
    """Run `sslengine.eval.jobs` for one request in a new process group; returns its row ids."""
    cmd = [sys.executable, "-m", "sslengine.eval.jobs", run_id, kind]
    cmd += ["--params", json.dumps(params or {})]
    if checkpoint_step is not None:
        cmd += ["--step", str(int(checkpoint_step))]
    if layer:
        cmd += ["--layer", layer]
    if all_checkpoints:
        cmd.append("--all-checkpoints")
    logs = run_artifact_dir(run_id) / "eval" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
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
        finally:
            try:  # the child's own children (faiss/torch helpers) go with it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(10)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise EvaluationFailed(
            f"evaluation '{kind}' of run {run_id} failed (exit {proc.returncode}):\n{tail}"
        )
    lines = out.decode(errors="replace").strip().splitlines()
    return list(json.loads(lines[-1])["ids"])


@app.task(name="sslengine.evaluate")
def evaluate(
    run_id: str,
    kind: str,
    checkpoint_step: int | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    all_checkpoints: bool = False,
) -> list[int]:
    return run_in_child(run_id, kind, checkpoint_step, layer, params, all_checkpoints)


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
    enqueue it; returns the Celery task id. Raises ValueError before anything is queued."""
    from sslengine.eval.jobs import validate_request
    from tasks.submit import check_broker

    store = store or Store.default()
    if all_checkpoints and (kind != "probe" or checkpoint_step is not None):
        raise ValueError("all_checkpoints is for kind 'probe' without a checkpoint_step")
    validate_request(store, run_id, kind, checkpoint_step, layer, params)
    check_broker()
    result = evaluate.apply_async(
        args=[run_id, kind, checkpoint_step, layer, dict(params or {}), all_checkpoints],
        queue=queue,
    )
    return result.id
