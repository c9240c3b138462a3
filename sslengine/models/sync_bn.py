"""Batch norm over the global batch on every backend.

`torch.nn.SyncBatchNorm` only runs on CUDA; on CPU (gloo, how the tests run every distributed
path) `GlobalBatchNorm` does the same maths: the per-channel count and sum, then the centred
sum of squares, are all-reduced WITH autograd (torch.distributed.nn.functional.all_reduce), so
the backward pass sums every rank's contribution exactly as one process holding the whole batch
would. Running statistics use the unbiased global variance, as BatchNorm does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.full((1,), xf.numel() / c, dtype=xf.dtype, device=x.device)
        sums = all_reduce(torch.cat([xf.sum(dims), count]))
        n = sums[-1]
        shape = [1, c] + [1] * (x.dim() - 2)
        mean = sums[:c] / n
        centred = xf - mean.reshape(shape)
        # centred second moment (two passes): E[x^2] - E[x]^2 loses precision and can go < 0
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                if m is None:  # cumulative moving average, as BatchNorm does
                    m = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean), alpha=m)
                unbiased = var.detach() * n / (n - 1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var), alpha=m)
        y = centred * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)


def convert_global_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d by GlobalBatchNorm, reusing its parameters and buffers
    (so dtype, device and frozen flags, e.g. MoCo's momentum encoder, are kept)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm | nn.SyncBatchNorm
    ):
        new = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_global_bn(child))
    return module


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm on CUDA (NCCL), GlobalBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return convert_global_bn(module)
