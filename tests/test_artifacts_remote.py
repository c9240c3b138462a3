"""Artifacts in a remote fsspec tree (S3), against a real S3-compatible HTTP server (moto's
standalone server, started here as its own process) through s3fs: a worker on "host A" trains
and pushes; "host B" (the same machine with the mirror folder wiped) fetches exactly the bytes
that were written; deleting the run deletes both copies."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services_fixtures import start_worker_process, stop_process_group, tiny_simclr, wait_for_status
from sslengine.config import parse_config
from sslengine.store import Store
from sslengine.store.artifacts import (
    ArtifactSync,
    artifacts_root,
    artifacts_url,
    localize,
    pull_run_artifacts,
    push_run_artifacts,
    remove_run_artifacts,
    run_artifact_dir,
)
from tasks.submit import enqueue

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")

pytestmark = [pytest.mark.integration]
BUCKET = "ssl-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}")
    yield url
    stop_process_group(proc)


@pytest.fixture
def remote_env(s3_endpoint, ssl_home, tmp_path, monkeypatch):
    """SSL_ARTIFACTS pointing at a fresh prefix of the S3 bucket, a fresh local mirror."""
    options = {"endpoint_url": s3_endpoint, "key": "test", "secret": "test"}
    fs = s3fs.S3FileSystem(**options)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    prefix = f"{BUCKET}/{tmp_path.name}"
    monkeypatch.setenv("SSL_ARTIFACTS", f"s3://{prefix}")
    monkeypatch.setenv("SSL_ARTIFACTS_OPTIONS", json.dumps(options))
    monkeypatch.setenv("SSL_ARTIFACTS_CACHE", str(tmp_path / "mirror"))
    monkeypatch.setenv("SSL_ARTIFACTS_SYNC_S", "1")
    fs.invalidate_cache()
    return fs, prefix


def test_push_pull_localize_and_remove_round_trip(remote_env, tmp_path):
    fs, prefix = remote_env
    assert artifacts_url() == f"s3://{prefix}"
    assert artifacts_root() == tmp_path / "mirror"
    run = "r0123abcd"
    folder = run_artifact_dir(run)
    (folder / "checkpoints").mkdir()
    blob = os.urandom(300_000)
    (folder / "checkpoints" / "step_00000004.pt").write_bytes(blob)
    (folder / "checkpoints" / "step_00000008.pt.tmp").write_bytes(b"half written")
    (folder / "eval" / "knn-step00000004-pooled").mkdir(parents=True)
    (folder / "eval" / "knn-step00000004-pooled" / "result.json").write_text('{"top1": 0.5}')
    (folder / "train.log").write_text("step 1\n")

    assert push_run_artifacts(run) == 3  # the .tmp file is never uploaded
    assert push_run_artifacts(run) == 0  # nothing changed, nothing sent
    fs.invalidate_cache()
    assert fs.cat(f"{prefix}/{run}/checkpoints/step_00000004.pt") == blob
    assert not fs.exists(f"{prefix}/{run}/checkpoints/step_00000008.pt.tmp")

    # "another host": nothing of the run on its disk
    shutil.rmtree(folder)
    ckpt = folder / "checkpoints" / "step_00000004.pt"
    assert localize(ckpt) == ckpt and ckpt.read_bytes() == blob
    eval_dir = folder / "eval" / "knn-step00000004-pooled"
    assert json.loads((localize(eval_dir) / "result.json").read_text()) == {"top1": 0.5}
    assert not (folder / "train.log").exists()  # only what was asked for was fetched

    # a growing log is fetched again with refresh=True, left alone without it
    (tmp_path / "log").write_text("step 1\nstep 2\n")
    fs.put_file(str(tmp_path / "log"), f"{prefix}/{run}/train.log")
    assert localize(folder / "train.log").read_text() == "step 1\nstep 2\n"
    fs.put_file(str(tmp_path / "log"), f"{prefix}/{run}/train.log")
    (tmp_path / "log").write_text("step 1\nstep 2\nstep 3\n")
    fs.put_file(str(tmp_path / "log"), f"{prefix}/{run}/train.log")
    assert localize(folder / "train.log").read_text() == "step 1\nstep 2\n"
    assert localize(folder / "train.log", refresh=True).read_text().endswith("step 3\n")

    shutil.rmtree(folder)
    assert pull_run_artifacts(run, "checkpoints") == 1
    assert pull_run_artifacts(run) == 2  # the eval result and the log; the checkpoint is here
    outside = tmp_path / "elsewhere.txt"
    assert localize(outside) == outside  # paths outside the tree are left alone

    assert remove_run_artifacts(run)
    fs.invalidate_cache()
    assert not fs.exists(f"{prefix}/{run}") and not folder.exists()


def test_background_sync_pushes_while_running_and_on_stop(remote_env):
    fs, prefix = remote_env
    run = "r9sync"
    folder = run_artifact_dir(run)
    sync = ArtifactSync(run, interval_s=0.2).start()
    (folder / "a.txt").write_text("first")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        fs.invalidate_cache()
        if fs.exists(f"{prefix}/{run}/a.txt"):
            break
        time.sleep(0.1)
    assert fs.cat(f"{prefix}/{run}/a.txt") == b"first"
    (folder / "b.txt").write_text("last")
    sync.stop()  # the final push happens on stop, whatever the interval
    fs.invalidate_cache()
    assert fs.cat(f"{prefix}/{run}/b.txt") == b"last"


def test_local_artifacts_need_no_remote(ssl_home, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_ARTIFACTS", str(tmp_path / "local"))
    assert artifacts_url() is None and artifacts_root() == tmp_path / "local"
    assert push_run_artifacts("r1") == 0 and pull_run_artifacts("r1") == 0
    assert ArtifactSync("r1").start().stop() == 0


def test_bad_storage_options_are_named(remote_env, monkeypatch):
    monkeypatch.setenv("SSL_ARTIFACTS_OPTIONS", "{endpoint")
    with pytest.raises(ValueError, match="SSL_ARTIFACTS_OPTIONS"):
        push_run_artifacts("r1")


@pytest.mark.slow
def test_worker_trains_into_s3_and_another_host_reads_the_checkpoint(
    remote_env, redis_url, celery_queue_env, ssl_home, tmp_path
):
    """A real worker process with the S3 tree configured trains a run: its checkpoints and
    log land in the bucket; with the mirror wiped, the checkpoint path the store recorded is
    fetched back byte for byte and loads."""
    from sslengine.train.checkpoint import load_checkpoint

    fs, prefix = remote_env
    store = Store.default()
    cfg = parse_config(tiny_simclr(max_steps=8, checkpoint_every=4, log_every=2))
    queue = f"s3-{os.getpid()}-{tmp_path.name[-6:]}"
    worker = start_worker_process(queue, tmp_path / "worker.log", f"s3{os.getpid()}")
    try:
        run_id = store.create_run(
            cfg.model_dump(mode="json"), name="s3", method=cfg.method,
            dataset=cfg.dataset.name, backbone=cfg.backbone.name,
        )  # fmt: skip
        enqueue(run_id, queue=queue)
        status = wait_for_status(store, run_id, {"succeeded", "failed"}, 240)
        assert status == "succeeded", store.get_run(run_id).error
    finally:
        stop_process_group(worker)
    ckpt = Path(store.latest_checkpoint(run_id).path)
    assert ckpt.is_relative_to(artifacts_root())
    written = ckpt.read_bytes()
    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in fs.find(f"{prefix}/{run_id}")}
    assert {"step_00000004.pt", "step_00000008.pt", "train.log", "config.json"} <= names

    shutil.rmtree(artifacts_root() / run_id)  # host B: nothing on its disk
    assert localize(ckpt).read_bytes() == written
    assert load_checkpoint(ckpt)["step"] == 8
