"""Build any normalization by name, and swap it into any model.

``build_norm(name, **options)`` returns a factory ``num_features -> nn.Module``:
the ``norm_layer`` argument torchvision's ResNets take, and what every model in
``brn_repro.models`` takes. ``swap_norm(model, factory)`` replaces every
batchnorm of an existing model (torchvision's Inception-v3, a pretrained net).

Names and the options each takes (anything else is an error):

- ``bn``: torch's BatchNorm (+ ``per_worker_batch`` groups). eps, momentum, affine, per_worker_batch
- ``brn``: Batch Renorm (Ioffe 2017). eps, momentum, affine, per_worker_batch, r_max, d_max,
  and for the paper's relaxation: relax_start, r_max_end_step, d_max_end_step, shape
- ``moving_average``: normalize with moving averages in training. eps, momentum, affine,
  per_worker_batch, init_from_batch, and for a momentum schedule: momentum_start,
  momentum_end_step, shape
- ``gn``: GroupNorm (Wu & He 2018). num_groups, eps, affine
- ``ln``: LayerNorm over (C, H, W), as GroupNorm with one group. eps, affine
- ``in``: InstanceNorm. eps, affine
- ``syncbn``: batchnorm over the whole global batch across processes (``SyncBatchNorm``,
  all-reduced statistics on gloo or NCCL). eps, momentum, affine
- ``none``: identity

Later answers to the same question (issue: "why not normalize with moving averages?"):

- ``mabn``: Moving Average Batch Normalization (Yan et al. 2020), with weight-centralized
  convolutions. eps, momentum (a decay, 0.98), buffer_size, warmup_iters, r_warmup, r_max,
  per_worker_batch
- ``frn``: Filter Response Normalization + TLU (Singh & Krishnan 2020), timm's. eps
- ``evonorm_s0``: EvoNorm-S0 (Liu et al. 2020), timm's. num_groups, eps
- ``gn_ws``: GroupNorm with weight-standardized convolutions (Qiao et al. 2019; timm's
  StdConv2d). num_groups, eps, affine

A factory whose layer needs other convolutions says so in ``factory.conv``
(``"centered"`` or ``"standardized"``); ``brn_repro.models.build_model`` and
``swap_conv`` replace the model's ``nn.Conv2d`` accordingly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from brn_repro.norm.batch_norm import BatchNorm1d, BatchNorm2d
from brn_repro.norm.batch_renorm import BatchRenorm1d, BatchRenorm2d, check_eps, check_momentum
from brn_repro.norm.mabn import CenteredConv2d, MABN2d
from brn_repro.norm.moving_average import MovingAverageNorm1d, MovingAverageNorm2d
from brn_repro.norm.sync_batch_norm import SyncBatchNorm
from brn_repro.schedules import Constant, Cosine, Linear, Schedule, as_schedule

NormFactory = Callable[[int], nn.Module]

_COMMON = {"eps", "affine"}
_OPTIONS: dict[str, set[str]] = {
    "bn": _COMMON | {"momentum", "per_worker_batch", "dim"},
    "brn": _COMMON
    | {"momentum", "per_worker_batch", "dim", "r_max", "d_max", "relax_start",
       "r_max_end_step", "d_max_end_step", "shape"},
    "moving_average": _COMMON
    | {"momentum", "per_worker_batch", "dim", "momentum_start", "momentum_end_step", "shape",
       "init_from_batch"},
    "gn": _COMMON | {"num_groups"},
    "ln": set(_COMMON),
    "in": set(_COMMON),
    "syncbn": _COMMON | {"momentum"},
    "none": set(),
    "mabn": {"eps", "momentum", "buffer_size", "warmup_iters", "r_warmup", "r_max", "per_worker_batch",
             "dim"},
    "frn": {"eps"},
    "evonorm_s0": {"eps", "num_groups"},
    "gn_ws": _COMMON | {"num_groups"},
}
NORM_NAMES = tuple(_OPTIONS)
_SHAPES = {"linear": Linear, "cosine": Cosine}


def _ramp(shape: str, start: float, end: float, start_step: int, end_step: int | None,
          field: str) -> Schedule:
    """A constant when no end step is given, else the ``shape`` ramp start -> end."""
    if end_step is None:
        return Constant(float(end))
    if shape not in _SHAPES:
        raise ValueError(f"norm.shape={shape!r} is not a ramp shape; use one of {sorted(_SHAPES)}")
    try:
        return _SHAPES[shape](float(start), float(end), int(start_step), int(end_step))
    except ValueError as err:
        raise ValueError(f"norm.{field}: {err}") from None


def _limits(options: dict[str, Any]) -> None:
    """BRN: r_max / d_max as final values, relaxed from batchnorm (1 / 0) after
    ``relax_start`` steps when their end steps are given (the paper's schedule)."""
    shape = options.pop("shape", "linear")
    start = options.pop("relax_start", 0)
    r_end = options.pop("r_max_end_step", None)
    d_end = options.pop("d_max_end_step", None)
    for key, first, end_step in (("r_max", 1.0, r_end), ("d_max", 0.0, d_end)):
        value = options.get(key)
        if isinstance(value, int | float) and value < first:
            raise ValueError(f"norm.{key}={value} must be >= {first:g} "
                             f"({key} = {first:g} is plain batchnorm)")
        if key in options and isinstance(options[key], int | float) and end_step is not None:
            options[key] = _ramp(shape, first, options[key], start, end_step, f"{key}_end_step")
        elif key in options and not isinstance(options[key], int | float):
            options[key] = as_schedule(options[key], f"norm.{key}")


def _momentum(options: dict[str, Any]) -> None:
    shape = options.pop("shape", "linear")
    first = options.pop("momentum_start", None)
    end_step = options.pop("momentum_end_step", None)
    if first is not None and end_step is not None:
        end = options.get("momentum", 0.01)
        options["momentum"] = _ramp(shape, first, end, 0, end_step, "momentum_end_step")


def _gn_groups(num_features: int, num_groups: int) -> int:
    # Widths like 16 in a CIFAR ResNet cannot take 32 groups; use the largest
    # count that divides the width (GN's paper also uses fewer groups there).
    return math.gcd(int(num_features), int(num_groups))


def build_norm(name: str, **options: Any) -> NormFactory:
    """A factory ``num_features -> nn.Module`` for the normalization ``name``."""
    if name not in _OPTIONS:
        raise ValueError(f"norm={name!r} is not a normalization; use one of {', '.join(NORM_NAMES)}")
    unknown = sorted(set(options) - _OPTIONS[name])
    if unknown:
        raise ValueError(
            f"norm.{unknown[0]} is not an option of norm={name}; it takes {sorted(_OPTIONS[name])}"
        )
    options = {k: v for k, v in options.items() if v is not None or k == "per_worker_batch"}
    if "eps" in options:
        check_eps(options["eps"])
    dim = options.pop("dim", 2)
    if dim not in (1, 2):
        raise ValueError(f"norm.dim={dim!r} must be 1 (N, C[, L] input) or 2 (N, C, H, W input)")
    if name == "bn":
        if "momentum" in options:
            check_momentum(options["momentum"], "norm.momentum")
        if options.get("per_worker_batch") is None:
            # No groups: torch's own layer, so "bn" is the plain baseline everywhere.
            options.pop("per_worker_batch", None)
            return partial(nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d, **options)
        return partial(BatchNorm2d if dim == 2 else BatchNorm1d, **options)
    if name == "brn":
        _limits(options)
        return partial(BatchRenorm2d if dim == 2 else BatchRenorm1d, **options)
    if name == "moving_average":
        _momentum(options)
        return partial(MovingAverageNorm2d if dim == 2 else MovingAverageNorm1d, **options)
    if name == "gn":
        groups = options.pop("num_groups", 32)
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"norm.num_groups={groups!r} must be a positive integer")
        return lambda c: nn.GroupNorm(_gn_groups(c, groups), c, **options)
    if name == "ln":
        return lambda c: nn.GroupNorm(1, c, **options)
    if name == "in":
        eps, affine = options.get("eps", 1e-5), options.get("affine", True)
        return lambda c: nn.InstanceNorm2d(c, eps=eps, affine=affine)
    if name == "syncbn":
        return partial(SyncBatchNorm, **options)
    if name in ("mabn", "frn", "evonorm_s0", "gn_ws"):
        return _later_norm(name, dim, options)
    return lambda c: nn.Identity()


def _later_norm(name: str, dim: int, options: dict[str, Any]) -> NormFactory:
    """The post-2017 answers; FRN and EvoNorm come from timm rather than being rewritten."""
    if dim != 2:
        raise ValueError(f"norm={name} is for (N, C, H, W) feature maps, not dim={dim}")
    if name == "mabn":
        factory = partial(MABN2d, **options)
        factory.conv = "centered"
        return factory
    from timm.layers import EvoNorm2dS0, FilterResponseNormTlu2d

    eps = options.get("eps", 1e-5)
    groups = options.get("num_groups", 32)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"norm.num_groups={groups!r} must be a positive integer")
    if name == "frn":
        return lambda c: FilterResponseNormTlu2d(c, eps=eps)
    if name == "evonorm_s0":
        return lambda c: EvoNorm2dS0(c, groups=_gn_groups(c, groups), eps=eps)
    affine = options.get("affine", True)

    def gn_ws(c: int) -> nn.Module:
        return nn.GroupNorm(_gn_groups(c, groups), c, eps=eps, affine=affine)

    gn_ws.conv = "standardized"
    return gn_ws


def swap_conv(model: nn.Module, kind: str | None) -> nn.Module:
    """Replace every ``nn.Conv2d`` of ``model`` (in place, weights kept) with the
    convolution a norm pairs with: ``centered`` (MABN's weight centralization) or
    ``standardized`` (weight standardization, timm's StdConv2d); None leaves it."""
    if kind is None:
        return model
    if kind == "centered":
        new_class = CenteredConv2d
    elif kind == "standardized":
        from timm.layers import StdConv2d

        new_class = StdConv2d
    else:
        raise ValueError(f"conv={kind!r}: use centered or standardized")
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Conv2d and name]  # exact type: already-swapped ones stay
    for name, old in targets:
        new = new_class(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                        padding=old.padding, dilation=old.dilation, groups=old.groups,
                        bias=old.bias is not None)
        new.load_state_dict(old.state_dict())
        model.set_submodule(name, new.to(old.weight.device))
    return model


def swap_norm(model: nn.Module, factory: NormFactory) -> nn.Module:
    """Replace every batchnorm in ``model`` (in place) with ``factory(num_features)``,
    and its convolutions with the kind the norm pairs with (``factory.conv``).

    Affine parameters are copied where the new layer has them, and running
    statistics are carried over (as a moving std for BRN / moving-average norm),
    so a pretrained model keeps its inference behaviour under BRN.
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name
    ]
    for name, old in targets:
        new = factory(old.num_features)
        _carry_state(old, new)
        model.set_submodule(name, new)
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ValueError("swap_norm needs a model that contains norm layers, not a norm layer")
    return swap_conv(model, getattr(factory, "conv", None))  # MABN, GN+WS: their convolutions


def _carry_state(old: nn.Module, new: nn.Module) -> None:
    import torch

    with torch.no_grad():
        for attr in ("weight", "bias"):
            src, dst = getattr(old, attr, None), getattr(new, attr, None)
            if src is not None and dst is not None and src.shape == dst.shape:
                dst.copy_(src)
        if getattr(old, "running_mean", None) is None:
            return
        if getattr(new, "running_mean", None) is not None:
            new.running_mean.copy_(old.running_mean)
        if getattr(new, "running_var", None) is not None:
            new.running_var.copy_(old.running_var)
        if getattr(new, "running_std", None) is not None:
            new.running_std.copy_((old.running_var + old.eps).sqrt())
        if getattr(new, "init_from_batch", False):  # pretrained statistics beat one batch's
            new.init_from_batch = False
        new.to(old.weight.device if old.weight is not None else old.running_mean.device)


def norm_diagnostics(model: nn.Module) -> dict[str, float]:
    """Per-layer and mean r/d clip statistics of every Batch Renorm layer at its last
    training step: keys ``norm/<layer>/r_clip_frac`` ... and ``norm/mean/r_clip_frac`` ..."""
    out: dict[str, float] = {}
    per_key: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        diag = getattr(module, "diagnostics", None)
        if not callable(diag):
            continue
        for key, value in diag().items():
            out[f"norm/{name or 'layer'}/{key}"] = value
            per_key.setdefault(key, []).append(value)
    for key, values in per_key.items():
        out[f"norm/mean/{key}"] = sum(values) / len(values)
    return out
