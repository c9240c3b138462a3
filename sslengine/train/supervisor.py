"""Run a stored run as a child process group and record how it ended.

The Celery task is a thin adapter around `supervise_run`: it never imports CUDA-touching code;
the training happens in `python -m sslengine.train.launch`, started in a new session so that
the launcher, torchrun and every rank share one process group that can be signalled at once.

Cancel: a flag in the store. Rank 0 sees it at its next metric flush, checkpoints and exits.
If the group has not exited within `grace_s`, it gets SIGTERM, then SIGKILL `kill_after_s`
later. Whatever happens, the group is SIGKILLed on the way out: no orphan keeps a GPU.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sslengine.store import Store
from sslengine.store.artifacts import (
    ArtifactSync,
    artifacts_url,
    pull_run_artifacts,
    run_artifact_dir,
)
from sslengine.train.entry import EXIT_CANCELLED
from sslengine.train.lifeline import die_with_parent

log = logging.getLogger(__name__)
TERMINAL = {"succeeded", "failed", "cancelled"}


def heartbeat_timeout_s() -> float:
    """Seconds without a heartbeat after which a running run counts as lost (and its lease
    expires): SSL_HEARTBEAT_TIMEOUT, default 60."""
    return float(os.environ.get("SSL_HEARTBEAT_TIMEOUT", "60"))


@dataclass
class Outcome:
    status: str
    returncode: int | None
    error: str | None = None


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@dataclass
class GroupStop:
    """Cancel escalation for a process group, one `step()` per poll: once `request()`ed, the
    group gets `grace_s` to exit on its own, then SIGTERM, then SIGKILL `kill_after_s` later.
    `step()` never blocks, so the supervisor keeps heartbeating while the group winds down. The
    times (of `clock`) of the request and of each signal sent are kept."""

    pgid: int
    grace_s: float
    kill_after_s: float
    clock: Callable[[], float] = time.monotonic
    requested_at: float | None = None
    termed_at: float | None = None
    killed_at: float | None = None

    def request(self) -> None:
        if self.requested_at is None:
            self.requested_at = self.clock()

    def step(self) -> None:
        if self.requested_at is None or self.killed_at is not None:
            return
        now = self.clock()
        if self.termed_at is None:
            if now - self.requested_at > self.grace_s:
                kill_group(self.pgid, signal.SIGTERM)
                self.termed_at = now
        elif now - self.termed_at > self.kill_after_s:
            kill_group(self.pgid, signal.SIGKILL)
            self.killed_at = now


def wait_group(
    proc: subprocess.Popen,
    stop: GroupStop,
    poll_s: float,
    tick: Callable[[], None] = lambda: None,
) -> int:
    """Wait for `proc`, the leader of process group `stop.pgid`, to exit: every `poll_s`, run
    `tick()` (heartbeats; it calls `stop.request()` when a cancel is seen) and let `stop` send
    what is due. Returns the leader's exit code."""
    while proc.poll() is None:
        time.sleep(poll_s)
        tick()
        stop.step()
    return proc.returncode


def train_niceness() -> int:
    """Scheduling niceness of the training process group: SSL_TRAIN_NICE, default 10. Training
    is batch work: on a host it shares with the dashboard (`make up`, a small team server) the
    pages and the supervisor's heartbeats come first; on a dedicated GPU host nothing competes
    and it costs nothing. 0 turns it off."""
    value = int(os.environ.get("SSL_TRAIN_NICE", "10"))
    if not 0 <= value <= 19:
        raise ValueError(f"SSL_TRAIN_NICE must be in [0, 19], got {value}")
    return value


def _start_child(parent: int, nice: int) -> None:
    """In the forked child, before exec: die with the worker, then lower the priority."""
    die_with_parent(parent)
    if nice:
        os.nice(nice)


def _error_text(workdir: Path, log_path: Path) -> str:
    errors = sorted(workdir.glob("error_rank*.txt"))
    if errors:
        return "\n".join(f"[{e.stem}] {e.read_text(errors='replace')[-4000:]}" for e in errors)
    try:
        return log_path.read_text(errors="replace")[-4000:]
    except OSError:
        return "the training process failed without output"


def supervise_run(
    run_id: str,
    store: Store | None = None,
    worker_id: str | None = None,
    grace_s: float = 30.0,
    kill_after_s: float = 10.0,
    poll_s: float = 0.5,
    lease_ttl_s: float | None = None,
) -> Outcome:
    store = store or Store.default()
    if lease_ttl_s is None:
        lease_ttl_s = heartbeat_timeout_s()
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    run = store.get_run(run_id)
    if run is None:
        return Outcome("missing", None, f"run {run_id} does not exist")
    if run.status in TERMINAL:
        return Outcome(run.status, None, "already finished")
    if run.cancel_requested:
        store.set_status(run_id, "cancelled")
        return Outcome("cancelled", None)
    if not store.acquire_lease(run_id, worker_id, lease_ttl_s):
        # Another worker holds the run (e.g. a broker redelivery): never train it twice.
        return Outcome("duplicate", None, "run is leased by another worker")

    try:
        # a run resumed on another host finds its checkpoints (remote artifact tree only)
        pull_run_artifacts(run_id)
    except Exception as err:  # noqa: BLE001 - reported on the run, not lost in a worker log
        error = f"could not fetch the run's artifacts from {artifacts_url()}: {err}"
        store.set_status(run_id, "failed", error=error)
        store.release_lease(run_id, worker_id)
        return Outcome("failed", None, error)
    workdir = run_artifact_dir(run_id)
    for stale in workdir.glob("error_rank*.txt"):
        stale.unlink()
    (workdir / "config.json").write_text(json.dumps(run.config))
    log_path = workdir / "train.log"
    ckpt = store.latest_checkpoint(run_id)
    devices = str(run.config.get("train", {}).get("devices", 1))
    cmd = [
        sys.executable,
        "-m",
        "sslengine.train.launch",
        "--run-id",
        run_id,
        "--workdir",
        str(workdir),
        "--devices",
        devices,
    ]
    if ckpt is not None and Path(ckpt.path).is_file():
        cmd += ["--resume", ckpt.path]
    store.update_run(run_id, worker_host=socket.gethostname(), log_path=str(log_path), error=None)
    store.set_status(run_id, "running")
    store.heartbeat(run_id, socket.gethostname())

    parent = os.getpid()
    nice = train_niceness()
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ.copy(),
            preexec_fn=lambda: _start_child(parent, nice),
        )
    pgid = proc.pid
    sync = ArtifactSync(run_id).start()
    stop = GroupStop(pgid, grace_s, kill_after_s)

    def tick() -> None:
        try:
            # the supervisor's heartbeat says "this worker is alive"; the watchdog marks
            # a run lost when it stops (see sslengine.train.watchdog)
            store.acquire_lease(run_id, worker_id, lease_ttl_s)
            store.heartbeat(run_id, socket.gethostname())
            if stop.requested_at is None and store.cancel_requested(run_id):
                stop.request()
        except Exception as err:  # noqa: BLE001 - a blip in the store must not kill the run
            log.warning("store unavailable while supervising %s: %s", run_id, err)

    try:
        rc = wait_group(proc, stop, poll_s, tick)
    finally:
        if proc.poll() is None:
            kill_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                pass
        kill_group(pgid, signal.SIGKILL)  # stragglers (ranks) that outlived the launcher
        proc.wait()

    upload_error = None
    try:
        sync.stop()
    except Exception as err:  # noqa: BLE001 - the files are safe on this host's disk
        upload_error = f"training ended (exit {rc}) but its files could not be uploaded: {err}"
    if upload_error is not None:
        outcome = Outcome("failed", rc, upload_error)
    elif rc == 0:
        outcome = Outcome("succeeded", rc)
    elif rc == EXIT_CANCELLED or stop.requested_at is not None or store.cancel_requested(run_id):
        outcome = Outcome("cancelled", rc)
    else:
        outcome = Outcome("failed", rc, _error_text(workdir, log_path))
    store.set_status(run_id, outcome.status, error=outcome.error)
    store.release_lease(run_id, worker_id)
    return outcome
