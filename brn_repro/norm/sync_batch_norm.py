"""Batchnorm over the whole global batch, across processes: the "large normalization
batch" reference (Ioffe 2017 compares BRN at small per-worker batches with BN whose
statistics are over many examples).

torch's ``nn.SyncBatchNorm`` does this with fused CUDA kernels, but refuses CPU
tensors, and the harness runs its multi-process tests (and CPU clusters) on gloo.
This subclass keeps torch's layer wherever torch supports it (CUDA, or one
process, where it is plain batchnorm) and adds a CPU path: the global mean and
biased variance are all-reduced with ``torch.distributed.nn.functional.all_reduce``,
whose backward all-reduces the gradient, so autograd differentiates through the
statistics of the whole global batch exactly as single-process batchnorm does.
Running statistics get the global mean and the unbiased global variance, as
torch's layer updates them, and are therefore identical on every process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that also runs on CPU under gloo (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.device.type == "cpu" and _distributed_world() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        total = all_reduce(count.clone()).item()  # examples x positions, all processes
        # Two passes (mean, then centred squares) for the same accuracy as batchnorm's.
        mean = all_reduce(x.sum(dims)) / total
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.0
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative average, as torch's layer
                    momentum = 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * total / max(total - 1, 1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased, momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y
