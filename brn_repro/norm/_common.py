"""Plumbing the norm layers share: option checks, the step buffer that schedules are
evaluated at, the base of the two layers that keep a moving mean and a moving standard
deviation (Batch Renorm, the moving-average norm), and the default way a layer takes
over a torch batchnorm's state (``brn_repro.norm._replace``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from brn_repro.norm._grouped import check_input_dim, check_per_worker_batch, normalize, num_groups, sqrt
from brn_repro.norm._replace import FamilyConversion, copy_batchnorm_state, replace_batchnorms
from brn_repro.schedules import Schedule, as_schedule, schedule_bounds


def check_eps(eps: float) -> float:
    if not eps > 0:
        raise ValueError(f"eps={eps!r} must be > 0")
    return float(eps)


def check_momentum(momentum: Any, field: str = "momentum") -> Schedule:
    schedule = as_schedule(momentum, field)
    low, high = schedule_bounds(schedule)
    if not (0 < low and high <= 1):
        raise ValueError(f"{field}={momentum!r} must lie in (0, 1] (the moving-average rate alpha)")
    return schedule


def as_rate(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A schedule's value as ``lerp_``'s weight for ``like`` (a tensor must match its dtype)."""
    return value.to(like.dtype) if isinstance(value, Tensor) else value


class LayerFamily:
    """Mixin: the 1d / 2d / 3d classes of one layer (``for_dim``), and ``convert``, which
    puts them in place of a model's batchnorms (``brn_repro.norm.convert``). A family
    sets ``_family = {1: ..., 2: ..., 3: ...}`` on its base class."""

    _family: dict[int, type] = {}

    @classmethod
    def for_dim(cls, dim: int) -> type:
        """The class of this family for 1d (N, C[, L]), 2d (N, C, H, W) or 3d (N, C, D, H, W) input."""
        if dim not in cls._family:
            raise ValueError(f"{cls.__name__} has no {dim}d layer; use one of {sorted(cls._family)}")
        return cls._family[dim]

    @classmethod
    def convert(cls, model: nn.Module, *, sync_dim: int = 2, **options: Any) -> nn.Module:
        """Replace (in place) every ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` of ``model``
        with this family's layer of the same dimension, keeping running statistics,
        affine parameters, device and dtype; see ``brn_repro.norm.convert_batchnorm``."""
        return replace_batchnorms(model, FamilyConversion(cls, options), sync_dim=sync_dim)

    @staticmethod
    def batchnorm_options(bn: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
        """The options a converted layer takes from the batchnorm it replaces, unless given."""
        return {"eps": bn.eps, "affine": bn.affine}


class StepCounter(nn.Module):
    """Mixin: a ``step`` buffer (saved in checkpoints) that schedules are evaluated at.

    Eager, the step is read from a host-side mirror, so a GPU is never waited on;
    the mirror re-reads the buffer only when the buffer's version shows that
    something else moved it (a compiled step, ``load_state_dict``).
    Compiled, the step is the buffer itself and schedules are tensor ops of it: no
    graph break, no recompilation, no host sync. Per-step Python state lives in a
    plain dict, ``self._host``: assigning attributes on an ``nn.Module`` costs
    microseconds that show at batch 1-4, and a dict is what the compiler can trace.
    """

    def _init_step(self) -> None:
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._host: dict[str, Any] = {"step": 0, "version": self.step._version, "last": None}

    def _advance_step(self) -> int | Tensor:
        """This step's index (0 first), as an int eager or a 0-d tensor compiled."""
        if torch.compiler.is_compiling():
            step = self.step.clone()
            self.step.add_(1)
            return step
        host = self._host
        if host["version"] != self.step._version:
            host["step"] = int(self.step)
        step = host["step"]
        self.step.add_(1)
        host["step"], host["version"] = step + 1, self.step._version
        return step


class MovingStdNorm(StepCounter):
    """Base of the layers that keep a moving mean ``running_mean`` and a moving
    *standard deviation* ``running_std`` (eps inside, Ioffe 2017 Algorithm 1's sigma),
    with optional affine gamma / beta and per-worker groups. Inference is batchnorm's,
    ``gamma * (x - mu) / sigma + beta``; a subclass writes the training forward,
    ``_train_forward(x, groups, step)``, and its ``_input_dims``."""

    _input_dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | Schedule = 0.01,
                 per_worker_batch: int | None = None, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.per_worker_batch = check_per_worker_batch(per_worker_batch)
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self._init_step()

    def update_moving(self, mean: Tensor, std: Tensor, alpha: float | Tensor) -> None:
        """``mu += alpha (mean - mu)``, ``sigma += alpha (std - sigma)``, in the buffers'
        dtype (float32 statistics of an autocast batch into float32 buffers: no cast)."""
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), alpha)
        self.running_std.lerp_(std.to(self.running_std.dtype), alpha)

    def forward(self, x: Tensor) -> Tensor:
        check_input_dim(x, self._input_dims, type(self).__name__)
        if not self.training:
            # eps is already inside sigma (a moving average of sqrt(var + eps)).
            return normalize(x, self.running_mean, self.running_std.square(), self.weight, self.bias)
        return self._train_forward(x, num_groups(x, self.per_worker_batch), self._advance_step())

    def _train_forward(self, x: Tensor, groups: int, step: int | Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def load_batchnorm_state(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        """Take a trained batchnorm's parameters and statistics, its variance as the
        moving std sqrt(var + eps), so the model keeps its inference outputs."""
        copy_batchnorm_state(self, bn)
        if bn.running_var is not None:
            self.running_std.copy_(sqrt(bn.running_var + bn.eps))
