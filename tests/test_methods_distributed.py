"""Every registered method: 1 process with batch 2B == 2 gloo processes with batch B each.

This is the whole-method counterpart of ``test_losses_distributed.py``: the real method (its
backbone, heads, BN layers, queue, memory bank, Sinkhorn codes) runs one training step's forward
and backward on the same global batch in two ways.

- Reference: one process, no process group, plain BatchNorm, the whole global batch.
- Distributed: two gloo ranks; BN converted by ``convert_sync_bn`` exactly as the training loop
  does when ``method.uses_sync_bn()``; rank r gets the r-th slice of the global batch; the
  parameter gradients are then averaged over ranks as DDP does (all-reduce sum / world) and the
  ranks' losses averaged.

Both sides start from identical weights and see identical views: the parent builds the method
once (seeded), draws the global views once with ``make_views`` and a fixed generator, and ships
initial ``state_dict`` and views to the ranks through a file. Everything runs in float64 so that
a real mismatch (a wrong reduction, a missing gather, BN over the local batch: errors of 1e-2 to
1) stands out from rounding by orders of magnitude. After the step, the state the forward
updates (MoCo queue and pointer, momentum encoder, PIRL memory bank and step counter, BN running
statistics, SwAV's normalised prototypes) must match the reference and be identical on both
ranks. Also checked: two real DDP steps run for every method (DDP refuses parameters that
require grad but get none).

Tolerances are the issue's (1e-5 on the loss, 1e-5 absolute / 1e-4 relative on gradients,
scaled by the method's largest gradient; 1e-6 on state); in float64 the differences are in fact
about 1e-13 (summation order only), and ``test_float64_runs_agree_to_rounding`` holds them to
1e-10.

MoCo runs with ``moco.shuffle_bn: false`` (global BN). Shuffle BN is by design NOT batch-size
equivalent: each rank normalises the keys of a random B-sized slice of the global batch with
that slice's statistics, so its keys (and hence loss) depend on the world size; the 1-vs-N
equivalence holds only for the SyncBN variant. SwAV runs without its feature queue (the paper's
queue is per rank, so it also depends on the world size by design).

One process group is spawned for the whole file (a few seconds of start-up, paid once); the
reference is computed in the parent while the ranks work.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from sslengine.config import ExperimentConfig, parse_config
from sslengine.distributed import is_dist
from sslengine.methods import METHODS, Method, build_method
from sslengine.models.sync_bn import GlobalBatchNorm, convert_sync_bn

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD = 2
B = 4  # local batch; the reference process sees WORLD * B
GLOBAL = WORLD * B
DATASET_SIZE = 32  # bank entries for PIRL; the batch's indices are distinct draws from it
DT = torch.float64
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
LOSS_ATOL = 1e-5
# Gradient tolerance relative to the method's largest gradient (Barlow Twins' and PIRL's sum
# over many terms reach ~50, SimCLR's ~2): absolute for gradients of order 1.
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4
STATE_ATOL = 1e-6

# Tiny heads; every stateful feature that has a world-size-independent form is switched on.
SECTIONS: dict[str, dict[str, Any]] = {
    "simclr": {"proj_hidden_dim": 16, "proj_dim": 8},
    # queue 2 global batches long: the step writes rows 0..GLOBAL-1, the rest stay initial
    "moco": {
        "queue_size": 2 * GLOBAL,
        "proj_hidden_dim": 16,
        "proj_dim": 8,
        "momentum": 0.9,
        "shuffle_bn": False,
    },
    "swav": {
        "n_prototypes": 10,
        "n_small_crops": 2,
        "small_crop_size": 8,
        "freeze_prototypes_steps": 0,
        "queue_size": 0,
        "proj_hidden_dim": 16,
        "proj_dim": 8,
    },
    "barlow_twins": {"proj_dim": 16},
    "rotation": {},
    "jigsaw": {"n_permutations": 8},
    "relative_position": {},
    "pirl": {"n_negatives": 16, "proj_dim": 8},
}
PATCH_METHODS = ("jigsaw", "relative_position", "pirl")  # they cut tiles: need 32 px images


@dataclass(frozen=True)
class Case:
    """One comparison: a method config, and whether the ranks get global BN."""

    method: str
    global_bn: bool = True


CASES: dict[str, Case] = {name: Case(name) for name in SECTIONS}
# Negative control: the same SimCLR step with per-rank BN must NOT match (the test can fail).
CASES["simclr/local_bn"] = Case("simclr", global_bn=False)
REFERENCE = {name: case.method for name, case in CASES.items()}  # local_bn reuses simclr's


def make_config(method: str) -> ExperimentConfig:
    """A tiny validated config for ``method`` with a global batch of ``GLOBAL`` images."""
    size = 32 if method in PATCH_METHODS else 16
    return parse_config(
        {
            "method": method,
            "seed": 0,
            "dataset": {"name": "digits", "image_size": size},
            "backbone": {"name": "small_resnet"},
            "train": {"batch_size": GLOBAL},
            "eval": {"knn": False},
            method: SECTIONS[method],
        }
    )


def build(method: str) -> Method:
    """The method in float64 and training mode, weights from a fixed seed."""
    torch.manual_seed(0)
    model = build_method(make_config(method), DATASET_SIZE, MEAN, STD).to(DT)
    return model.train()


def global_inputs(model: Method) -> tuple[list[Tensor], Tensor]:
    """The global batch's views (float ones in float64; labels stay long) and its indices."""
    g = torch.Generator().manual_seed(1234)
    size = model.cfg.dataset.image_size
    images = torch.randint(0, 256, (GLOBAL, 3, size, size), generator=g, dtype=torch.uint8)
    views = model.make_views(images, g)
    views = [v.to(DT) if v.is_floating_point() else v for v in views]
    indices = torch.randperm(DATASET_SIZE, generator=g)[:GLOBAL]
    return views, indices


def rank_slice(
    method: str, views: list[Tensor], indices: Tensor, rank: int
) -> tuple[list[Tensor], Tensor]:
    """Rank ``rank``'s share of the global batch, as the sampler would hand it out.

    Every view is (GLOBAL, ...) with row i belonging to image i, except rotation's x_rot and
    labels: (4 * GLOBAL, ...) in 4 blocks, block k holding every image rotated by k * 90
    degrees, so a rank takes its images' rows from EACH block (what ``rotate_batch`` makes of
    the rank's own B images).
    """
    lo, hi = rank * B, (rank + 1) * B
    if method == "rotation":
        rows = torch.cat([torch.arange(k * GLOBAL + lo, k * GLOBAL + hi) for k in range(4)])
        out = [v[rows] for v in views]
    else:
        out = [v[lo:hi] for v in views]
    return [v.clone() for v in out], indices[lo:hi].clone()


def train_step(model: Method, views: list[Tensor], indices: Tensor) -> dict[str, Any]:
    """Forward + backward; the loss, every parameter's gradient (None if it got none) and the
    state_dict after the forward's side effects (queues, banks, running statistics)."""
    out = model(views, indices)
    out.loss.backward()
    return {
        "loss": out.loss.detach().clone(),
        "grads": {
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()
        },
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def _ddp_average(model: Method, result: dict[str, Any]) -> dict[str, Any]:
    """What DDP does to gradients (all-reduce sum, / world) and the mean of the ranks' losses.

    Also counts, per parameter, how many ranks produced a gradient: it must be 0 or WORLD.
    """
    loss = result["loss"].clone()
    dist.all_reduce(loss)
    grads, grad_ranks = {}, {}
    for name, param in model.named_parameters():
        grad = result["grads"][name]
        has = torch.tensor([0 if grad is None else 1])
        dist.all_reduce(has)
        grad_ranks[name] = int(has)
        if int(has) == 0:
            grads[name] = None
            continue
        # a rank without a gradient contributes zeros, keeping the collectives aligned; the
        # count above records the mismatch
        total = torch.zeros_like(param) if grad is None else grad.clone()
        dist.all_reduce(total)
        grads[name] = total / WORLD
    return {"loss": loss / WORLD, "grads": grads, "grad_ranks": grad_ranks}


def _ddp_two_steps(method: str, data: dict[str, Any], rank: int) -> str:
    """Two real DDP steps (float32, BN converted as the loop does); '' or the error raised.

    DDP fails at the second forward when a parameter that requires grad got no gradient in the
    first step, which the manual averaging above cannot notice.
    """
    model = build(method).float()
    if model.uses_sync_bn():
        convert_sync_bn(model, torch.device("cpu"))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    views, indices = rank_slice(method, data["views"], data["indices"], rank)
    views = [v.float() if v.is_floating_point() else v for v in views]
    try:
        for _ in range(2):
            ddp(views, indices).loss.backward()
    except RuntimeError as err:
        return str(err).splitlines()[0]
    return ""


def _worker(rank: int, port: int, inputs_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    try:
        inputs = torch.load(inputs_path, weights_only=True)
        results: dict[str, Any] = {}
        for name, case in CASES.items():
            data = inputs[case.method]
            model = build(case.method)
            model.load_state_dict(data["init"])
            if case.global_bn:
                # what the loop does for world > 1 when method.uses_sync_bn()
                assert model.uses_sync_bn(), case.method
                convert_sync_bn(model, torch.device("cpu"))
                assert any(isinstance(m, GlobalBatchNorm) for m in model.modules())
            views, indices = rank_slice(case.method, data["views"], data["indices"], rank)
            local = train_step(model, views, indices)
            reduced = _ddp_average(model, local)
            reduced["state"] = local["state"]  # per rank: compared across ranks in the parent
            results[name] = reduced
        results["ddp_errors"] = {m: _ddp_two_steps(m, inputs[m], rank) for m in SECTIONS}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_comparison(work_dir: Path) -> tuple[dict, dict, dict]:
    """(reference per method, rank 0's results per case, rank 1's results per case)."""
    threads = torch.get_num_threads()
    # One thread, as on the ranks: float32 kernels (the augmentation) then round the same way
    # in every run, so the compared numbers are reproducible, not just close.
    torch.set_num_threads(1)
    try:
        inputs, models = {}, {}
        for method in SECTIONS:
            models[method] = build(method)
            views, indices = global_inputs(models[method])
            init = {k: v.clone() for k, v in models[method].state_dict().items()}
            inputs[method] = {"init": init, "views": views, "indices": indices}
        inputs_path = work_dir / "inputs.pt"
        torch.save(inputs, inputs_path)
        ctx = mp.start_processes(
            _worker,
            args=(_free_port(), str(inputs_path), str(work_dir)),
            nprocs=WORLD,
            join=False,
            start_method="spawn",
        )
        try:
            # The reference runs here, in a process that never joins a group, while the ranks
            # work.
            assert not is_dist()
            single = {
                m: train_step(models[m], inputs[m]["views"], inputs[m]["indices"]) for m in SECTIONS
            }
        finally:
            while not ctx.join():
                pass
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(work_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return single, ranks[0], ranks[1]


def max_diffs(single: dict, multi: dict) -> tuple[float, float]:
    """(|loss difference|, max |gradient difference| over every parameter with a gradient)."""
    loss_diff = float((multi["loss"] - single["loss"]).abs())
    grad_diff = max(
        (
            float((multi["grads"][n] - g).abs().max())
            for n, g in single["grads"].items()
            if g is not None and multi["grads"][n] is not None
        ),
        default=0.0,
    )
    return loss_diff, grad_diff


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, dict, dict]:
    return run_comparison(Path(tmp_path_factory.mktemp("methods_dist")))


def test_every_registered_method_has_a_case():
    assert set(METHODS) == set(SECTIONS)


@pytest.mark.parametrize("method", list(SECTIONS))
def test_loss_and_gradients_match_single_process(results, method):
    single_all, rank0, _ = results
    single, multi = single_all[method], rank0[method]
    assert torch.isfinite(single["loss"])
    assert abs(float(multi["loss"] - single["loss"])) < LOSS_ATOL

    # a parameter gets a gradient on every rank or on none, and then also none in 1 process
    assert set(multi["grad_ranks"].values()) <= {0, WORLD}
    with_grad = {n for n, g in single["grads"].items() if g is not None}
    assert with_grad == {n for n, g in multi["grads"].items() if g is not None}
    assert any(n.startswith("backbone.") for n in with_grad)  # the trunk is trained

    scale = max(1.0, max(float(single["grads"][n].abs().max()) for n in with_grad))
    for name in sorted(with_grad):
        torch.testing.assert_close(
            multi["grads"][name],
            single["grads"][name],
            atol=GRAD_ATOL * scale,
            rtol=GRAD_RTOL,
            check_dtype=False,  # converted BN is float32 until CONVERT_BUG is fixed
            msg=lambda m, name=name: f"{method} gradient of {name}: {m}",
        )
    # not a comparison of zeros
    assert max(float(single["grads"][n].abs().max()) for n in with_grad) > 1e-3


@pytest.mark.parametrize("method", list(SECTIONS))
def test_updated_state_matches_single_process_and_agrees_across_ranks(results, method):
    """Queues, pointers, momentum encoders, memory banks, BN running statistics."""
    single_all, rank0, rank1 = results
    single = single_all[method]["state"]
    for r, state in enumerate((rank0[method]["state"], rank1[method]["state"])):
        assert state.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(
                state[key],
                value,
                atol=STATE_ATOL,
                rtol=0,
                check_dtype=False,  # converted BN is float32 until CONVERT_BUG is fixed
                msg=lambda m, key=key, r=r: f"{method} rank {r} state {key}: {m}",
            )
    for key, value in rank0[method]["state"].items():
        assert torch.equal(value, rank1[method]["state"][key]), f"{method}: ranks differ in {key}"


def test_state_under_test_was_really_updated(results):
    """The state comparison above is not between untouched initial buffers."""
    single = results[0]
    init = {m: build(m).state_dict() for m in ("moco", "pirl", "simclr")}
    moco = single["moco"]["state"]
    assert int(moco["queue_ptr"]) == GLOBAL
    assert not torch.allclose(moco["queue"][:GLOBAL], init["moco"]["queue"][:GLOBAL])
    torch.testing.assert_close(moco["queue"][GLOBAL:], init["moco"]["queue"][GLOBAL:].to(DT))
    pirl = single["pirl"]["state"]
    changed = (pirl["memory.bank"] - init["pirl"]["memory.bank"].to(DT)).abs().amax(1) > 1e-6
    assert int(changed.sum()) == GLOBAL  # exactly the batch's entries
    assert int(pirl["steps_done"]) == 1
    simclr = single["simclr"]["state"]
    bn_means = [k for k in simclr if k.endswith("running_mean")]
    assert bn_means and all(simclr[k].abs().max() > 0 for k in bn_means)


def test_negative_control_local_batch_norm_breaks_equivalence(results):
    """Without GlobalBatchNorm each rank normalises by its own B samples: the same harness then
    sees different gradients and running statistics, so the equivalence above is not vacuous."""
    single_all, rank0, _ = results
    single, multi = single_all[REFERENCE["simclr/local_bn"]], rank0["simclr/local_bn"]
    loss_diff, grad_diff = max_diffs(single, multi)
    assert grad_diff > 1e3 * GRAD_ATOL
    assert loss_diff > 10 * LOSS_ATOL
    key = "backbone.bn1.running_mean"
    assert (multi["state"][key] - single["state"][key]).abs().max() > 1e3 * STATE_ATOL


# ---- regressions of bugs this file found (fixed in sync_bn.py and swav.py)


@pytest.mark.parametrize("method", SECTIONS)
def test_two_real_ddp_steps_run(results, method):
    """DDP (as the loop wraps the method) refuses a parameter that requires grad but gets none."""
    _, rank0, rank1 = results
    assert rank0["ddp_errors"][method] == "" and rank1["ddp_errors"][method] == ""


def test_global_bn_conversion_keeps_dtype_and_frozen_parameters():
    model = build("moco")  # float64, momentum encoder frozen
    before = {n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()}
    convert_sync_bn(model, torch.device("cpu"))
    assert any(isinstance(m, GlobalBatchNorm) for m in model.modules())
    assert {n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()} == before


def test_float64_runs_agree_to_rounding(results):
    """In float64 nothing but summation order differs: 1e-10 is ~1e5 times the rounding seen
    with the three fixes applied, and ~1e4 times below what a float32 step leaves."""
    single_all, rank0, _ = results
    for method in SECTIONS:
        single, multi = single_all[method], rank0[method]
        torch.testing.assert_close(multi["loss"], single["loss"], atol=1e-10, rtol=0)
        # dtypes are compared too: a float64 model must stay float64 through the conversion
        for name, grad in single["grads"].items():
            if grad is not None:
                torch.testing.assert_close(multi["grads"][name], grad, atol=1e-10, rtol=1e-10)
        for key, value in single["state"].items():
            torch.testing.assert_close(multi["state"][key], value, atol=1e-10, rtol=0)
