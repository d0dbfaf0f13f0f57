"""Normalizing with the moving averages in training: the naive idea the paper answers.

Ioffe (2017, section 2) asks why batchnorm does not simply normalize with its
moving averages mu, sigma during training too, and answers that this "has been
observed to lead to the model blowing up": the gradient does not see that a
change of a bias or a scale would be cancelled by the normalization, so such
parameters can grow without bound. This layer does exactly the naive thing so
the harness can measure it instead of quoting it:

    y = gamma * (x - mu) / sigma + beta           # mu, sigma: moving averages, no gradient
    mu    += alpha * (mu_B - mu)                  # updated after normalizing, from the batch
    sigma += alpha * (sigma_B - sigma)            # (per-worker groups: mean over groups)

The averages start from the first training batch's statistics (``init_from_batch``,
the default), not from 0 / 1: a fresh layer would otherwise leave its input
unnormalized for the first ~1/alpha steps, a transient that can blow a run up for
reasons that have nothing to do with the question asked (the one divergence of
the first reproduction was that). Layers given pretrained statistics (``swap_norm``)
keep them.

``momentum`` (alpha) may follow a schedule; "decay started small and raised
later" is a large alpha at first (fast tracking) falling to a small one, e.g.
``Linear(start=0.5, end=0.01, start_step=0, end_step=1000)``.
Inference is identical to batchnorm and Batch Renorm with the same statistics.
Under ``torch.autocast`` the statistics and averages are float32, the output is in
the input's dtype.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from brn_repro.norm._common import LayerFamily, MovingStdNorm, as_rate
from brn_repro.norm._grouped import (
    batch_stats,
    fused_kernels,
    moving_stats,
    normalize,
    plain_batch_stats,
    sqrt,
    to_groups,
)
from brn_repro.schedules import Schedule


class _MovingAverageNorm(LayerFamily, MovingStdNorm):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | Schedule = 0.01,
        per_worker_batch: int | None = None,
        affine: bool = True,
        init_from_batch: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, per_worker_batch, affine)
        self.init_from_batch = bool(init_from_batch)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"per_worker_batch={self.per_worker_batch}, affine={self.affine}, "
            f"init_from_batch={self.init_from_batch}"
        )

    def _train_forward(self, x: Tensor, groups: int, step: int | Tensor) -> Tensor:
        alpha = as_rate(self.momentum(step), self.running_mean)
        with torch.no_grad():
            if fused_kernels():
                batch_mean, batch_var = batch_stats(to_groups(x.detach(), groups))
            else:
                _, batch_mean, batch_var = plain_batch_stats(x.detach(), groups)
            batch_mean = batch_mean.view(groups, -1).mean(0)
            batch_std = sqrt(batch_var + self.eps).view(groups, -1).mean(0)
            if self.init_from_batch:  # the first step starts the averages at its batch
                self._start_averages(step == 0, batch_mean, batch_std)
        # Copies: the update below is in place, and autograd saved the values used here.
        mean, std = moving_stats(self.running_mean, self.running_std)
        y = normalize(x, mean, std.square(), self.weight, self.bias)
        with torch.no_grad():
            self.update_moving(batch_mean, batch_std, alpha)
        return y

    @torch.no_grad()
    def load_batchnorm_state(self, bn: torch.nn.modules.batchnorm._BatchNorm) -> None:
        super().load_batchnorm_state(bn)
        if bn.running_mean is not None:  # pretrained statistics beat one batch's
            self.init_from_batch = False

    def _start_averages(self, first: bool | Tensor, batch_mean: Tensor, batch_std: Tensor) -> None:
        """At step 0, set the averages to the batch's statistics: over all processes'
        workers (one all-reduce, once), as one process holding every worker would."""
        several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if isinstance(first, Tensor):  # compiled: a tensor op, no branch on the step
            if several:
                raise RuntimeError("norm=moving_average with init_from_batch cannot be compiled in "
                                   "several processes; set train.compile=false or norm.init_from_batch=false")
            self.running_mean.copy_(torch.where(first, batch_mean, self.running_mean))
            self.running_std.copy_(torch.where(first, batch_std, self.running_std))
        elif first:
            start = torch.stack([batch_mean, batch_std])
            if several:
                dist.all_reduce(start)
                start /= dist.get_world_size()
            self.running_mean.copy_(start[0])
            self.running_std.copy_(start[1])


class MovingAverageNorm1d(_MovingAverageNorm):
    """For (N, C) or (N, C, L) input."""

    _input_dims = (2, 3)


class MovingAverageNorm2d(_MovingAverageNorm):
    """For (N, C, H, W) input."""

    _input_dims = (4,)


class MovingAverageNorm3d(_MovingAverageNorm):
    """For (N, C, D, H, W) input."""

    _input_dims = (5,)


_MovingAverageNorm._family = {1: MovingAverageNorm1d, 2: MovingAverageNorm2d, 3: MovingAverageNorm3d}
