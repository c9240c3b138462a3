"""Small collective helpers shared by the losses, Sinkhorn-Knopp and the memory bank.

Conventions (every helper follows them):

- Not distributed (no process group, or a group of one) means identity: the helpers return
  their input (or do nothing), so a loss written with them is the single-process loss.
- ``*_with_grad`` helpers are differentiable. Their backward is the exact adjoint of the
  forward collective (all-gather -> reduce-scatter of the gradients, all-reduce-sum ->
  all-reduce-sum of the gradients). Autograd on rank r therefore returns the gradient of
  ``sum over ranks of L_r`` with respect to rank r's own inputs; after DDP averages parameter
  gradients over the W ranks, each parameter receives the gradient of ``mean_r L_r``. A loss
  that wants 1-process == W-process gradients must make ``mean_r L_r`` equal to the
  single-process loss (see each loss's docstring for how it does so).
- ``*_no_grad`` / trailing-underscore helpers run outside autograd; the underscore ones work
  in place.
- Gathers concatenate along dim 0 in rank order and need the same shape on every rank (the
  training sampler drops the last partial batch). We do not exchange sizes first: that would
  force a host-device sync every step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_max_",
    "all_reduce_sum_",
    "all_reduce_sum_with_grad",
    "broadcast_",
    "gather_no_grad",
    "gather_with_grad",
    "is_dist",
    "rank",
    "world_size",
]


def is_dist() -> bool:
    """True when a process group is initialised and has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` (N, ...) from every rank into (W*N, ...), keeping the graph.

    Uses ``torch.distributed.nn.functional.all_gather``, whose backward sums each slice's
    gradient over ranks and hands it back to the rank that owns it, so gradients reach every
    rank's local inputs. Rank r's rows are ``[r*N, (r+1)*N)``.
    """
    if not is_dist():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` (N, ...) into (W*N, ...) in rank order, without autograd."""
    if not is_dist():
        return x
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return torch.cat(out, dim=0)


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Differentiable all-reduce sum: returns a new tensor, the sum of ``x`` over ranks.

    Backward all-reduces the incoming gradient (the adjoint of a sum that every rank reads).
    """
    if not is_dist():
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x)


@torch.no_grad()
def all_reduce_sum_(x: Tensor) -> Tensor:
    """In-place all-reduce sum without autograd; returns ``x``."""
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def all_reduce_max_(x: Tensor) -> Tensor:
    """In-place all-reduce max without autograd; returns ``x``."""
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    """In-place broadcast of ``x`` from rank ``src`` to all ranks; returns ``x``."""
    if is_dist():
        dist.broadcast(x, src=src)
    return x
