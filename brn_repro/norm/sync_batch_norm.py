"""Batchnorm over the whole global batch, across processes: the "large normalization
batch" reference (Ioffe 2017 compares BRN at small per-worker batches with BN whose
statistics are over many examples).

torch's ``nn.SyncBatchNorm`` refuses CPU tensors, and DDP refuses it in a CPU
model, while the harness runs its multi-process tests (and CPU clusters) on gloo.
So this layer is a plain batchnorm in one process (torch's kernel) and, across
processes, on any device, all-reduces the global mean and then the global biased
variance with ``torch.distributed.nn.functional.all_reduce``, whose backward
all-reduces the gradient: autograd differentiates through the statistics of the
whole global batch exactly as single-process batchnorm does. Two small
all-reduces per layer; torch's fused CUDA kernels would be faster on GPUs, at the
price of a second code path. Running statistics get the global mean and the
unbiased global variance, as torch's layer updates them, and so are identical on
every process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batchnorm over the global batch of all processes (see the module docstring);
    takes (N, C, ...) input like torch's SyncBatchNorm."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects (N, C, ...) input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and _distributed_world() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        local_count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        # Two passes (mean, then centred squares) for the same accuracy as batchnorm's;
        # the count (examples x positions, all processes) rides with the first.
        sums = all_reduce(torch.cat([x.sum(dims), local_count]))
        total = sums[-1].detach()
        mean = sums[:-1] / total
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.0
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative average, as torch's layer
                    momentum = 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * total / (total - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased, momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y
