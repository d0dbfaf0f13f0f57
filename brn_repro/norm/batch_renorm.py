"""Batch Renormalization, exactly as Algorithm 1 of Ioffe (NeurIPS 2017, arXiv:1702.03275).

Per channel, over a minibatch of m values (per worker group when
``per_worker_batch`` is set):

    mu_B    = mean(x)
    sigma_B = sqrt(eps + mean((x - mu_B)^2))              # biased variance, eps inside
    r = stop_gradient(clip(sigma_B / sigma, 1/r_max, r_max))
    d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta
    mu    += alpha * (mu_B - mu)                          # alpha = ``momentum``
    sigma += alpha * (sigma_B - sigma)                    # a moving *standard deviation*

Inference: y = gamma * (x - mu) / sigma + beta, identical to batchnorm.
r_max = 1 and d_max = 0 is exactly batchnorm. Because r and d are constants of
the step, y = (gamma r) * bn_hat(x) + (gamma d + beta): the layer runs torch's
fused batchnorm kernels with per-step affine parameters (see ``_grouped``).

The relaxation (paper, section 4): BRN starts as batchnorm (r_max = 1, d_max = 0)
and "gradually relaxes" the limits; the paper held them for 5k steps, then reached
r_max = 3 at 40k and d_max = 5 at 25k, of ~160k steps. A layer built with float
limits does that on its own, scaled by 1/6.25 for a run of ~25k steps:
``relax_start=800``, ``r_max_end_step=6400``, ``d_max_end_step=4000`` (linear; give
the steps for a longer or shorter run). ``r_max_end_step=None`` and
``d_max_end_step=None`` make the limits constant from the first step; a schedule
(``brn_repro.schedules``) for ``r_max`` / ``d_max`` is used as given. The step is the
``step`` buffer, so ``state_dict`` and a resumed checkpoint keep the schedule's place.
The harness builds its layers through ``registry.build_norm``, which states every
part of the schedule (conf/norm/brn.yaml), so these defaults never enter its runs.

Under ``torch.compile`` the layer runs ``_grouped``'s plain-ops formulation and its
schedules become tensor ops of that buffer (``_common.StepCounter``). Under
``torch.autocast`` the statistics, r, d and the moving averages are float32 and the
output is in the input's dtype, as torch's BatchNorm2d.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from brn_repro.norm._common import LayerFamily, MovingStdNorm, as_rate
from brn_repro.norm._grouped import fused_kernels, grouped_batch_norm, moving_stats
from brn_repro.schedules import Schedule, as_schedule, ramp, schedule_bounds

# The layer's own relaxation: the paper's 5k / 40k / 25k steps (of ~160k) scaled by 1/6.25.
RELAX_START, R_MAX_END_STEP, D_MAX_END_STEP = 800, 6400, 4000


def relaxed(name: str, limit: float | Schedule, first: float, start: int, end_step: int | None,
            shape: str = "linear") -> Schedule:
    """``limit`` as a schedule: a float rises from ``first`` (batchnorm's 1 or 0) at step
    ``start`` to ``limit`` at ``end_step`` (constant when ``end_step`` is None); a schedule
    (or a mapping ``as_schedule`` reads) is taken as it is."""
    if isinstance(limit, int | float) and not isinstance(limit, bool):
        if limit < first:
            raise ValueError(f"{name}={limit!r} must be >= {first:g} ({name} = {first:g} is plain batchnorm)")
        return ramp(shape, first, limit, start, end_step, f"{name}_end_step")
    return as_schedule(limit, name)


class _BatchRenorm(LayerFamily, MovingStdNorm):
    """Batch Renorm, Algorithm 1 (module docstring). ``r_max`` / ``d_max``: the final
    limits, reached by the relaxation ``relax_start`` -> ``r_max_end_step`` /
    ``d_max_end_step`` (defaults: 800 -> 6400 / 4000 steps, the paper's schedule scaled
    to a ~25k-step run; None end steps: constant limits), or schedules used as given.
    ``momentum``: the moving averages' rate alpha. ``per_worker_batch``: normalize a batch
    of W x b examples as W groups of b (``None``: one group)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | Schedule = 0.01,
                 r_max: float | Schedule = 3.0, d_max: float | Schedule = 5.0,
                 per_worker_batch: int | None = None, affine: bool = True, *,
                 relax_start: int = RELAX_START, r_max_end_step: int | None = R_MAX_END_STEP,
                 d_max_end_step: int | None = D_MAX_END_STEP, shape: str = "linear") -> None:
        super().__init__(num_features, eps, momentum, per_worker_batch, affine)
        self.r_max = relaxed("r_max", r_max, 1.0, relax_start, r_max_end_step, shape)
        self.d_max = relaxed("d_max", d_max, 0.0, relax_start, d_max_end_step, shape)
        if schedule_bounds(self.r_max)[0] < 1:
            raise ValueError(f"r_max={r_max!r} must be >= 1 (r_max = 1 is plain batchnorm)")
        if schedule_bounds(self.d_max)[0] < 0:
            raise ValueError(f"d_max={d_max!r} must be >= 0 (d_max = 0 is plain batchnorm)")
        # self._host["last"]: raw (unclipped) r and d of the last training step, per
        # (group, channel), for the clip diagnostics computed at logging time.

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, "
            f"d_max={self.d_max}, per_worker_batch={self.per_worker_batch}, affine={self.affine}"
        )

    def _train_forward(self, x: Tensor, groups: int, step: int | Tensor) -> Tensor:
        limits = (self.r_max(step), self.d_max(step), self.momentum(step))
        return grouped_batch_norm(
            x, self.weight, self.bias, groups, self.eps, partial(self._renorm, groups, limits)
        )

    def _renorm(self, groups: int, limits: tuple[float, float, float], mean: Tensor,
                var: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """Algorithm 1's r and d from the batch statistics, then the moving averages."""
        r_max, d_max, alpha = limits
        running_mean, running_std = self.running_mean, self.running_std
        if groups > 1:
            mean = mean.view(groups, self.num_features)
            std = std.view(groups, self.num_features)
        if not fused_kernels():  # compiled: read them through copies (``_grouped.snapshot``)
            mu, sigma = moving_stats(running_mean, running_std)
        else:  # eager: r and d are computed before the update below
            mu, sigma = running_mean, running_std
        r_raw = std / sigma
        d_raw = (mean - mu).div_(sigma)
        self._host["last"] = (r_raw, d_raw, r_max, d_max)
        alpha = as_rate(alpha, running_mean)
        self.update_moving(mean if groups == 1 else mean.mean(0), std if groups == 1 else std.mean(0), alpha)
        r = r_raw.clamp(1.0 / r_max, r_max)
        d = d_raw.clamp(-d_max, d_max)
        return (r, d) if groups == 1 else (r.view(-1), d.view(-1))

    def diagnostics(self) -> dict[str, float]:
        """Clip statistics of the last training step: the fraction of r and of d that hit
        their limits, mean |r - 1| and mean |d| (of the clipped values used)."""
        if self._host["last"] is None:
            return {}
        r_raw, d_raw, r_max, d_max = self._host["last"]
        r_max, d_max = float(r_max), float(d_max)
        r = r_raw.clamp(1.0 / r_max, r_max)
        d = d_raw.clamp(-d_max, d_max)
        return {
            "r_max": r_max,
            "d_max": d_max,
            "r_clip_frac": ((r_raw > r_max) | (r_raw < 1.0 / r_max)).float().mean().item(),
            "d_clip_frac": (d_raw.abs() > d_max).float().mean().item(),
            "r_dev_mean": (r - 1).abs().mean().item(),
            "d_abs_mean": d.abs().mean().item(),
        }


class BatchRenorm1d(_BatchRenorm):
    """Batch Renorm for (N, C) or (N, C, L) input. Per-worker groups need more than one
    value per channel, so ``per_worker_batch=1`` is an error on (N, C) input."""

    _input_dims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch Renorm for (N, C, H, W) input; ``per_worker_batch=1`` normalizes each
    example over its own H x W.

    ``BatchRenorm2d(64)`` is batchnorm for 800 steps, then relaxes to r_max = 3 at
    step 6400 and d_max = 5 at step 4000 (the paper's schedule scaled by 1/6.25; set
    ``relax_start``, ``r_max_end_step``, ``d_max_end_step`` for your run's length)."""

    _input_dims = (4,)


class BatchRenorm3d(_BatchRenorm):
    """Batch Renorm for (N, C, D, H, W) input."""

    _input_dims = (5,)


_BatchRenorm._family = {1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d}
