"""Batchnorm (Ioffe & Szegedy 2015) with optional per-worker groups.

``BatchNorm2d(C)`` with no ``per_worker_batch`` *is* ``torch.nn.BatchNorm2d``
(same code path). With ``per_worker_batch=b`` a batch of W x b examples is
normalized as W independent groups of b, as on W synchronized workers that each
normalize their own minibatch while the gradient is taken over all W x b (the
paper's 50 x 32 and its microbatches of 4). The running statistics are updated
with the mean over groups of the group statistics (unbiased variance, as torch).
With ``per_worker_batch`` set, training always takes the grouped path (one group
included), so a worker's numbers do not depend on how many share a process.
Under ``torch.autocast`` the grouped path keeps float32 statistics and running
averages and returns the input's dtype, as torch's layer does.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor, nn

from brn_repro.norm._common import LayerFamily
from brn_repro.norm._grouped import (
    check_per_worker_batch,
    fused_kernels,
    grouped_batch_norm,
    num_groups,
)


class _GroupedBatchNorm(LayerFamily):
    """Mixin before a torch batchnorm class: adds ``per_worker_batch`` groups."""

    def __init__(self, num_features: int, *args, per_worker_batch: int | None = None, **kwargs):
        super().__init__(num_features, *args, **kwargs)
        self.per_worker_batch = check_per_worker_batch(per_worker_batch)

    def forward(self, x: Tensor) -> Tensor:
        out = self._grouped_forward(x)
        return super().forward(x) if out is None else out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", per_worker_batch={self.per_worker_batch}"

    @staticmethod
    def batchnorm_options(bn: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
        """A converted batchnorm keeps all of its options (``per_worker_batch`` is added)."""
        return {"eps": bn.eps, "momentum": bn.momentum, "affine": bn.affine,
                "track_running_stats": bn.track_running_stats}

    def _grouped_forward(self, x: Tensor) -> Tensor | None:
        """The per-worker-groups training forward, or None to use torch's own.

        One group takes this path too: torch's CPU kernel for the statistics loses
        float32 accuracy on channels-last input (see ``_grouped.batch_stats``), and
        its backward holds the running buffers, which the statistics all-reduce of
        ``brn_repro.distributed`` rewrites. Same layer, same numbers, however split."""
        if not (self.training and self.per_worker_batch is not None):
            return None
        groups = num_groups(x, self.per_worker_batch)
        self._check_input_dim(x)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        return grouped_batch_norm(
            x, self.weight, self.bias, groups, self.eps,
            partial(self._update_running, groups, x.numel() // (groups * self.num_features)),
        )

    def _update_running(
        self, groups: int, n: int, mean: Tensor, var: Tensor, std: Tensor
    ) -> None:
        if not self.track_running_stats:
            return None
        rate = self.momentum
        if rate is None:  # a cumulative average; a tensor while compiling (no host read)
            count = self.num_batches_tracked
            rate = 1.0 / float(count) if fused_kernels() else (1.0 / count).to(var.dtype)
        unbiased = var * (n / (n - 1))
        dtype = self.running_mean.dtype  # float32 statistics of an autocast batch: no cast
        self.running_mean.lerp_(mean.view(groups, -1).mean(0).to(dtype), rate)
        self.running_var.lerp_(unbiased.view(groups, -1).mean(0).to(dtype), rate)
        return None


class BatchNorm1d(_GroupedBatchNorm, nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` plus ``per_worker_batch`` groups."""


class BatchNorm2d(_GroupedBatchNorm, nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` plus ``per_worker_batch`` groups."""


class BatchNorm3d(_GroupedBatchNorm, nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` plus ``per_worker_batch`` groups."""


_GroupedBatchNorm._family = {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}
