"""Layer-wise linear probes of a real CIFAR-10 pretraining, all through the real queue.

A short SimCLR run (the "SimCLR, CIFAR-10 subset, small ResNet (CPU)" preset: 2,000 training
images at 16 px, 155 steps, a checkpoint every 50) is submitted with `tasks.submit.submit`; once
it has succeeded, the layer-wise probe of its FIRST and of its FINAL checkpoint are submitted
with `tasks.evaluate.submit_evaluation`, as the dashboard's and `sslengine eval probe --queue`
do. The store must then hold exactly one probe row per tap (conv1, layer1..layer4, pooled) per
checkpoint, with sane accuracies (held-out CIFAR-10 test subset of 2,000 images), and the pooled
probe of the trained backbone must beat chance and the same probe of the random-init backbone.

About 1-2 minutes on an idle 2-core machine (worker start, ~15 s of training, two probe jobs of
~15 s, the random-init probe in this process before the worker starts training).
"""

from __future__ import annotations

import copy
import subprocess
import time

import pytest
import torch

from services_fixtures import CIFAR_TGZ
from sslengine.config import parse_config
from sslengine.eval.probe import layerwise_probe
from sslengine.models.backbones import TAPS, build_backbone
from sslengine.presets import PRESETS
from sslengine.store import EvalJobRecord, Store
from sslengine.train.data import dataset_mean_std, load_splits

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not CIFAR_TGZ.is_file(), reason=f"CIFAR-10 not found at {CIFAR_TGZ}"),
]

PRESET = "SimCLR, CIFAR-10 subset, small ResNet (CPU)"
CHECKPOINT_EVERY = 50
PROBE = {"epochs": 10}  # 8 steps an epoch on 2,000 images; 28 (the default) gains < 1 point here
CHANCE = 0.1
# Measured (BENCHMARKS.md, "Layerwise probes on CIFAR-10 (CPU)"): pooled top-1 ~0.35 trained,
# ~0.28 at random init; 2,000 test images put one standard error near 1 point.
ABOVE_CHANCE = 0.15
OVER_RANDOM = 0.03


def run_config() -> dict:
    data = copy.deepcopy(PRESETS[PRESET])
    data["train"]["checkpoint_every"] = CHECKPOINT_EVERY
    data["eval"]["knn"] = False  # the probes are the evaluation here
    data["dataset"]["test_max_per_class"] = 200  # 2,000 held-out images keep it short
    return data


def wait_for_job(
    store: Store, task_id: str, worker: subprocess.Popen, timeout_s: float = 300
) -> EvalJobRecord:
    deadline = time.monotonic() + timeout_s
    job = None
    while time.monotonic() < deadline:
        job = next((j for j in store.list_eval_jobs() if j.task_id == task_id), None)
        if job is not None and job.status in ("succeeded", "failed"):
            return job
        if worker.poll() is not None:
            pytest.fail(f"the Celery worker exited (code {worker.returncode}); job {job}")
        time.sleep(0.5)
    pytest.fail(f"evaluation task {task_id} not finished after {timeout_s} s: {job}")


@pytest.fixture(scope="module")
def random_init(ssl_home) -> dict[str, float]:
    """The pooled probe of the backbone the run starts from (same seed, drawn first, as
    `pretrain` does; tests/test_methods_learn.py checks the weights are the run's), with the
    queued probe's protocol. Computed here, before the worker trains, so the two do not share
    the cores."""
    cfg = parse_config(run_config())
    train, test = load_splits(cfg)
    mean, std = dataset_mean_std(train)
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone.name, cifar_stem=cfg.backbone.cifar_stem).eval()
    return layerwise_probe(
        backbone, train, test, mean, std, taps=("pooled",), seed=cfg.seed, **PROBE
    )["pooled"]


@pytest.fixture(scope="module")
def pretrained(random_init, celery_worker, queue_name) -> str:
    from tasks.submit import submit

    store = Store.default()
    run_id = submit(run_config(), name="probe-cifar10", store=store, queue=queue_name)
    deadline = time.monotonic() + 600
    while (status := store.get_run(run_id).status) not in ("succeeded", "failed", "cancelled"):
        if celery_worker.poll() is not None:
            pytest.fail(f"the Celery worker exited while run {run_id} was {status}")
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} still {status} after 600 s")
        time.sleep(0.5)
    run = store.get_run(run_id)
    assert run.status == "succeeded", f"pretraining {run.status}: {run.error}"
    return run_id


def test_layerwise_probes_of_the_first_and_final_checkpoint_through_the_queue(
    pretrained, random_init, celery_worker, queue_name
):
    from tasks.evaluate import submit_evaluation

    store = Store.default()
    steps = [c.step for c in store.list_checkpoints(pretrained)]
    assert steps == [50, 100, 150, 155]  # every 50 steps, and the final one
    first, final = steps[0], steps[-1]
    tasks = {
        s: submit_evaluation(pretrained, "probe", checkpoint_step=s, params=PROBE, queue=queue_name)
        for s in (final, first)
    }
    jobs = {s: wait_for_job(store, t, celery_worker) for s, t in tasks.items()}
    for s, job in jobs.items():
        assert job.status == "succeeded", f"probe of step {s} failed: {job.error}"
        assert job.checkpoint_step == s and len(job.result_ids) == len(TAPS)

    rows = store.list_eval_results(pretrained, "probe")
    assert sorted((r.checkpoint_step, r.layer) for r in rows) == sorted(
        (s, tap) for s in (first, final) for tap in TAPS
    ), "exactly one probe row per layer per checkpoint"
    assert sorted(r.id for r in rows) == sorted(i for j in jobs.values() for i in j.result_ids)
    table = {}
    for r in rows:
        m = r.metrics
        assert 0.0 <= m["top1"] <= m["top5"] <= 1.0, (r.checkpoint_step, r.layer, m)
        assert m["epochs"] == PROBE["epochs"] and m["dim"] > 0
        table[(r.checkpoint_step, r.layer)] = m
    print(f"\nrandom init pooled: top1 {random_init['top1']:.3f} top5 {random_init['top5']:.3f}")
    for s in (first, final):
        print(f"step {s:4d}: " + "  ".join(
            f"{tap} {table[(s, tap)]['top1']:.3f}/{table[(s, tap)]['top5']:.3f}" for tap in TAPS
        ))  # fmt: skip

    pooled = table[(final, "pooled")]["top1"]
    assert pooled > CHANCE + ABOVE_CHANCE, f"pooled top-1 {pooled:.3f} is near chance"
    assert pooled > random_init["top1"] + OVER_RANDOM, (
        f"pooled top-1 {pooled:.3f} after training vs {random_init['top1']:.3f} at random init"
    )
