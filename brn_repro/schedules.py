"""Schedules: a value (r_max, d_max, a moving-average rate) as a function of the step.

Batch Renorm (Ioffe 2017, section 4) starts as plain batchnorm (r_max = 1,
d_max = 0) for 5k steps and then "gradually relaxes" the limits to r_max = 3 at
40k steps and d_max = 5 at 25k steps; raising r_max early caused occasional large
gradients. ``Linear`` with ``paper_r_max()`` / ``paper_d_max()`` encode exactly
that, with every step count and value configurable. ``Cosine`` is the same ramp
with a smooth start and end, ``Constant`` a fixed value (no warm-up).

Schedules are plain frozen dataclasses evaluated on a Python int, so an eager
layer evaluates them without touching the device (no host sync on a GPU). Given
the step as a 0-d tensor instead (a compiled layer's ``step`` buffer), ``Linear``
and ``Cosine`` return a float64 0-d tensor on its device, computed with tensor ops
the compiler fuses: no graph break and no recompilation as the step advances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Schedule(Protocol):
    """Anything that maps a training step (int >= 0) to a float (or, given a 0-d
    tensor, to a float or a 0-d tensor)."""

    def __call__(self, step: int | Tensor) -> float | Tensor: ...


@dataclass(frozen=True)
class Constant:
    """The same value at every step."""

    value: float

    def __call__(self, step: int | Tensor) -> float:
        return float(self.value)

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.value, self.value)


@dataclass(frozen=True)
class Linear:
    """Hold ``start`` until ``start_step``, go linearly to ``end`` at ``end_step``, then hold."""

    start: float
    end: float
    start_step: int
    end_step: int

    def __post_init__(self) -> None:
        if self.start_step < 0 or self.end_step < self.start_step:
            raise ValueError(
                f"schedule steps must satisfy 0 <= start_step <= end_step, got "
                f"start_step={self.start_step}, end_step={self.end_step}"
            )

    def progress(self, step: int | Tensor) -> float | Tensor:
        if isinstance(step, Tensor):
            span = max(self.end_step - self.start_step, 1)
            ramp = ((step.double() - self.start_step) / span).clamp(0.0, 1.0)
            return torch.where(step <= self.start_step, 0.0, torch.where(step >= self.end_step, 1.0, ramp))
        if step <= self.start_step:
            return 0.0
        if step >= self.end_step:
            return 1.0
        return (step - self.start_step) / (self.end_step - self.start_step)

    def __call__(self, step: int | Tensor) -> float | Tensor:
        progress = self.progress(step)
        if isinstance(progress, Tensor):
            return torch.where(progress >= 1.0, float(self.end), self.start + (self.end - self.start) * progress)
        if progress >= 1.0:
            return float(self.end)  # exactly the final value, not a rounding of it
        return self.start + (self.end - self.start) * progress

    @property
    def bounds(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))


@dataclass(frozen=True)
class Cosine(Linear):
    """Like ``Linear`` but the ramp follows half a cosine: gentle at both ends."""

    def __call__(self, step: int | Tensor) -> float | Tensor:
        progress = self.progress(step)
        if isinstance(progress, Tensor):
            smooth = 0.5 - 0.5 * torch.cos(math.pi * progress)
            return torch.where(progress >= 1.0, float(self.end), self.start + (self.end - self.start) * smooth)
        if progress >= 1.0:
            return float(self.end)
        smooth = 0.5 - 0.5 * math.cos(math.pi * progress)
        return self.start + (self.end - self.start) * smooth


def paper_r_max(
    final: float = 3.0, start_step: int = 5_000, end_step: int = 40_000
) -> Linear:
    """The paper's r_max: 1 for the first 5k steps, then linearly to 3 at 40k."""
    return Linear(1.0, final, start_step, end_step)


def paper_d_max(
    final: float = 5.0, start_step: int = 5_000, end_step: int = 25_000
) -> Linear:
    """The paper's d_max: 0 for the first 5k steps, then linearly to 5 at 25k."""
    return Linear(0.0, final, start_step, end_step)


_SHAPES = {"constant": Constant, "linear": Linear, "cosine": Cosine}


def as_schedule(value: Any, name: str = "value") -> Schedule:
    """Turn a float, a schedule or a mapping ``{shape: linear, start: .., end: .., ...}``
    into a schedule. ``name`` is the config field, used in error messages."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number or a schedule, got {value!r}")
    if isinstance(value, int | float):
        return Constant(float(value))
    if isinstance(value, Schedule) and not isinstance(value, dict):
        return value
    if hasattr(value, "items"):
        spec = dict(value.items())
        shape = spec.pop("shape", "linear")
        if shape not in _SHAPES:
            raise ValueError(
                f"{name}: shape={shape!r} is not a schedule shape; use one of {sorted(_SHAPES)}"
            )
        try:
            return _SHAPES[shape](**spec)
        except TypeError as err:
            raise ValueError(f"{name}: bad schedule fields {spec}: {err}") from None
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    raise ValueError(f"{name}: expected a number or a schedule, got {value!r}")


def ramp(shape: str, start: float, end: float, start_step: int, end_step: int | None,
         name: str = "value") -> Schedule:
    """A schedule from flat config keys (BRN's ``relax_start`` / ``r_max_end_step``, the
    moving-average norm's ``momentum_start`` / ``momentum_end_step``): ``end`` throughout
    when no end step is given, else the ``shape`` ramp start -> end, read by ``as_schedule``."""
    if end_step is None:
        return Constant(float(end))
    return as_schedule({"shape": shape, "start": float(start), "end": float(end),
                        "start_step": int(start_step), "end_step": int(end_step)}, name)


def schedule_bounds(schedule: Schedule) -> tuple[float, float]:
    """Smallest and largest value a schedule takes (used to validate limits up front);
    a schedule without ``bounds`` is judged by its first two steps."""
    if hasattr(schedule, "bounds"):
        return schedule.bounds
    values = [schedule(0), schedule(1)]
    return (min(values), max(values))
