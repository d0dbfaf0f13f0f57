"""The norm table: one ``NormSpec`` per name, and ``build_norm`` that reads it.

``build_norm(name, **options)`` returns a factory ``num_features -> nn.Module``:
the ``norm_layer`` argument torchvision's ResNets take, and what every model in
``brn_repro.models`` takes. Every other module asks the table rather than keeping
its own list: the config check and ``per_worker_batch`` (``config``), the run
identity (``records.split_blind``), the report's extended sweep, the benchmark,
the moving statistics all-reduced across processes (``distributed``) and the
probe's batch-statistics layers (``evaluate``).

Adding a norm: its layer file, one ``NormSpec`` in ``TABLE`` below (or
``register_norm`` from outside the package) and its ``conf/norm/<name>.yaml``.
The names, their options and facts are the entries below (anything else is an error).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import Tensor, nn

from brn_repro.norm._common import check_eps, check_momentum
from brn_repro.norm.batch_norm import BatchNorm1d, BatchNorm2d
from brn_repro.norm.batch_renorm import BatchRenorm1d, BatchRenorm2d
from brn_repro.norm.convert import CONV_KINDS, NormFactory, swap_conv, swap_norm
from brn_repro.norm.mabn import MABN2d
from brn_repro.norm.moving_average import MovingAverageNorm1d, MovingAverageNorm2d
from brn_repro.norm.sync_batch_norm import SyncBatchNorm
from brn_repro.schedules import as_schedule, ramp

__all__ = ["NORM_NAMES", "TABLE", "NormFactory", "NormSpec", "batch_statistics_layer", "build_norm",
           "moving_statistics", "norm_diagnostics", "norm_names", "norm_spec", "register_norm",
           "swap_conv", "swap_norm"]

Builder = Callable[[dict[str, Any], int], NormFactory]


@dataclass(frozen=True)
class NormSpec:
    """Everything the harness knows about one normalization.

    ``build(options, dim)`` makes the factory from the checked options (None values
    dropped, ``eps`` checked, ``dim`` taken out: 2 for (N, C, H, W), 1 for (N, C[, L])).
    ``options``: the keys ``norm.*`` it accepts; taking ``per_worker_batch`` is what makes
    it ``per_worker``. ``batch_statistics``: training normalizes with statistics of the
    batch. ``moving_statistics``: its buffers that are moving averages of those, the same
    on every process (all-reduced by ``brn_repro.distributed``). ``layers``: the classes it
    builds that hold batch or moving statistics, by which a built model's layers are
    found. ``conv``: the convolution it pairs with (``convert.CONV_KINDS``) or None.
    ``description``: one line for a reader of the table.
    """

    name: str
    build: Builder
    options: frozenset[str]
    description: str
    batch_statistics: bool = False
    moving_statistics: tuple[str, ...] = ()
    layers: tuple[type[nn.Module], ...] = ()
    conv: str | None = None

    def __post_init__(self) -> None:
        if self.per_worker and not self.batch_statistics:
            raise ValueError(f"norm {self.name}: per_worker_batch makes sense only with batch statistics")
        if (self.batch_statistics or self.moving_statistics) and not self.layers:
            raise ValueError(f"norm {self.name}: give the layer classes that hold its statistics (layers=)")
        if self.conv is not None and self.conv not in CONV_KINDS:
            raise ValueError(f"norm {self.name}: conv={self.conv!r}; use one of {CONV_KINDS} or None")

    @property
    def per_worker(self) -> bool:
        """Sees the per-worker split: its statistics are each worker's (``per_worker_batch``)."""
        return "per_worker_batch" in self.options

    @property
    def split_blind(self) -> bool:
        """The split of the global batch into workers cannot change its run on i.i.d. data,
        so a run's identity holds only the global batch (``records.split_blind``). Every
        batch-statistics norm keeps the split in its identity, syncbn included."""
        return not self.batch_statistics


def _limits(options: dict[str, Any]) -> None:
    """BRN: r_max / d_max as final values, relaxed from batchnorm (1 / 0) after
    ``relax_start`` steps when their end steps are given (the paper's schedule), else
    constant. Every part of the schedule is decided here and handed to the layer as a
    schedule (3 / 5 when r_max / d_max are not given), so the layer's own defaults
    (``BatchRenorm2d``'s relaxation) never enter a harness run."""
    shape = options.pop("shape", "linear")
    start = options.pop("relax_start", 0)
    r_end = options.pop("r_max_end_step", None)
    d_end = options.pop("d_max_end_step", None)
    for key, first, end_step, final in (("r_max", 1.0, r_end, 3.0), ("d_max", 0.0, d_end, 5.0)):
        value = options.get(key, final)
        if isinstance(value, int | float) and value < first:
            raise ValueError(f"norm.{key}={value} must be >= {first:g} "
                             f"({key} = {first:g} is plain batchnorm)")
        if isinstance(value, int | float):  # a Constant when end_step is None
            options[key] = ramp(shape, first, value, start, end_step, f"norm.{key}_end_step")
        else:
            options[key] = as_schedule(value, f"norm.{key}")


def _positive_groups(options: dict[str, Any]) -> int:
    groups = options.pop("num_groups", 32)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"norm.num_groups={groups!r} must be a positive integer")
    return groups


def _gn_groups(num_features: int, num_groups: int) -> int:
    # Widths like 16 in a CIFAR ResNet cannot take 32 groups; use the largest
    # count that divides the width (GN's paper also uses fewer groups there).
    return math.gcd(int(num_features), int(num_groups))


def _feature_maps(name: str, dim: int) -> None:
    if dim != 2:
        raise ValueError(f"norm={name} is for (N, C, H, W) feature maps, not dim={dim}")


def _bn(options: dict[str, Any], dim: int) -> NormFactory:
    if "momentum" in options:
        check_momentum(options["momentum"], "norm.momentum")
    if options.get("per_worker_batch") is None:
        # No groups: torch's own layer, so "bn" is the plain baseline everywhere.
        options.pop("per_worker_batch", None)
        return partial((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dim - 1], **options)
    return partial((BatchNorm1d, BatchNorm2d, BatchNorm2d.for_dim(3))[dim - 1], **options)


def _brn(options: dict[str, Any], dim: int) -> NormFactory:
    _limits(options)
    return partial(BatchRenorm2d.for_dim(dim), **options)


def _moving_average(options: dict[str, Any], dim: int) -> NormFactory:
    shape = options.pop("shape", "linear")
    first = options.pop("momentum_start", None)
    end_step = options.pop("momentum_end_step", None)
    if first is not None and end_step is not None:
        options["momentum"] = ramp(shape, first, options.get("momentum", 0.01), 0, end_step,
                                   "norm.momentum_end_step")
    return partial(MovingAverageNorm2d.for_dim(dim), **options)


def _gn(options: dict[str, Any], dim: int) -> NormFactory:
    groups = _positive_groups(options)
    return lambda c: nn.GroupNorm(_gn_groups(c, groups), c, **options)


def _in(options: dict[str, Any], dim: int) -> NormFactory:
    eps, affine = options.get("eps", 1e-5), options.get("affine", True)
    layer = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dim - 1]
    return lambda c: layer(c, eps=eps, affine=affine)


def _mabn(options: dict[str, Any], dim: int) -> NormFactory:
    _feature_maps("mabn", dim)
    return partial(MABN2d, **options)


def _frn(options: dict[str, Any], dim: int) -> NormFactory:
    from timm.layers import FilterResponseNormTlu2d  # timm is slow to import: only when asked for

    eps = options.get("eps", 1e-5)
    return lambda c: FilterResponseNormTlu2d(c, eps=eps)


def _evonorm_s0(options: dict[str, Any], dim: int) -> NormFactory:
    from timm.layers import EvoNorm2dS0

    eps, groups = options.get("eps", 1e-5), _positive_groups(options)
    return lambda c: EvoNorm2dS0(c, groups=_gn_groups(c, groups), eps=eps)


_COMMON = frozenset({"eps", "affine"})
_BATCH = _COMMON | {"momentum", "per_worker_batch", "dim"}
_RUNNING = ("running_mean", "running_var")  # a torch batchnorm's moving statistics
_MOVING_STD = ("running_mean", "running_std")

TABLE: dict[str, NormSpec] = {spec.name: spec for spec in (
    NormSpec("bn", _bn, _BATCH, "torch's BatchNorm (+ per_worker_batch groups)",
             batch_statistics=True, moving_statistics=_RUNNING,
             layers=(nn.modules.batchnorm._BatchNorm,)),
    NormSpec("brn", _brn, _BATCH | {"r_max", "d_max", "relax_start", "r_max_end_step",
                                    "d_max_end_step", "shape"},
             "Batch Renorm (Ioffe 2017); relax_start, *_end_step, shape: the paper's relaxation",
             batch_statistics=True, moving_statistics=_MOVING_STD,
             layers=(BatchRenorm1d, BatchRenorm2d, BatchRenorm2d.for_dim(3))),
    NormSpec("moving_average", _moving_average,
             _BATCH | {"momentum_start", "momentum_end_step", "shape", "init_from_batch"},
             "normalize with the moving averages in training (Ioffe 2017 section 2's naive idea)",
             batch_statistics=True, moving_statistics=_MOVING_STD,
             layers=(MovingAverageNorm1d, MovingAverageNorm2d, MovingAverageNorm2d.for_dim(3))),
    NormSpec("gn", _gn, _COMMON | {"num_groups"}, "GroupNorm (Wu & He 2018)"),
    NormSpec("ln", lambda options, dim: lambda c: nn.GroupNorm(1, c, **options), _COMMON,
             "LayerNorm over (C, H, W), as GroupNorm with one group"),
    NormSpec("in", _in, _COMMON, "InstanceNorm"),
    # Statistics of the whole global batch, all-reduced across processes: no per-worker
    # groups (no per_worker_batch). Its statistics do not depend on the split, but as a
    # batch-statistics norm it is not split-blind: its run names its split, beside the
    # BN run at that split it is the large-batch reference for.
    NormSpec("syncbn", lambda options, dim: partial(SyncBatchNorm, **options), _COMMON | {"momentum"},
             "batchnorm over the whole global batch across processes (SyncBatchNorm, gloo or NCCL)",
             batch_statistics=True, moving_statistics=_RUNNING, layers=(SyncBatchNorm,)),
    NormSpec("none", lambda options, dim: lambda c: nn.Identity(), frozenset(), "identity"),
    NormSpec("mabn", _mabn, frozenset({"eps", "momentum", "buffer_size", "warmup_iters", "r_warmup",
                                       "r_max", "per_worker_batch", "dim"}),
             "Moving Average Batch Normalization (Yan et al. 2020); momentum is a decay (0.98)",
             batch_statistics=True, moving_statistics=("running_var",), layers=(MABN2d,),
             conv="centered"),
    NormSpec("frn", _frn, frozenset({"eps"}),
             "Filter Response Normalization + TLU (Singh & Krishnan 2020), timm's"),
    NormSpec("evonorm_s0", _evonorm_s0, frozenset({"eps", "num_groups"}),
             "EvoNorm-S0 (Liu et al. 2020), timm's"),
    NormSpec("gn_ws", _gn, _COMMON | {"num_groups"},
             "GroupNorm with weight-standardized convolutions (Qiao et al. 2019; timm's StdConv2d)",
             conv="standardized"),
)}
NORM_NAMES = tuple(TABLE)  # the built-in names; ``norm_names()`` includes registered ones


def register_norm(spec: NormSpec) -> NormSpec:
    """Add a norm to the table (from outside the package: a plug-in or a test)."""
    if spec.name in TABLE:
        raise ValueError(f"norm={spec.name!r} is already in the table; choose another name")
    for other in TABLE.values():  # a built layer is traced back to its entries by class
        shared = [c.__name__ for c in spec.layers
                  if issubclass(c, other.layers or ()) or any(issubclass(o, c) for o in other.layers)]
        if shared and (spec.batch_statistics, spec.moving_statistics) != (other.batch_statistics,
                                                                           other.moving_statistics):
            raise ValueError(f"norm {spec.name}: its layers {', '.join(shared)} are norm={other.name}'s, "
                             "whose statistics differ; give it a layer class of its own")
    TABLE[spec.name] = spec
    return spec


def norm_names() -> tuple[str, ...]:
    return tuple(TABLE)


def norm_spec(name: str) -> NormSpec:
    if name not in TABLE:
        raise ValueError(f"norm.name={name!r} is not a normalization; use one of {', '.join(TABLE)}")
    return TABLE[name]


def build_norm(name: str, **options: Any) -> NormFactory:
    """A factory ``num_features -> nn.Module`` for the normalization ``name``; a norm
    that pairs with other convolutions says so in ``factory.conv``, which
    ``brn_repro.models.build_model`` and ``swap_norm`` act on."""
    spec = norm_spec(name)
    unknown = sorted(set(options) - spec.options)
    if unknown:
        raise ValueError(f"norm.{unknown[0]} is not an option of norm={name}; it takes {sorted(spec.options)}")
    options = {k: v for k, v in options.items() if v is not None or k == "per_worker_batch"}
    if "eps" in options:
        check_eps(options["eps"])
    dim = options.pop("dim", 2)

    def for_dim(d: int) -> NormFactory:
        """The same norm for d-dimensional input (``swap_norm`` asks for a replaced
        BatchNorm1d's, 2d's, 3d's)."""
        if d not in (1, 2, 3):
            raise ValueError(f"norm.dim={d!r} must be 1 (N, C[, L] input), 2 (N, C, H, W) or 3 (N, C, D, H, W)")
        factory = partial(spec.build(dict(options), d))
        factory.conv = spec.conv
        factory.for_dim = for_dim
        return factory

    return for_dim(dim)


def _specs_of(module: nn.Module) -> list[NormSpec]:
    return [spec for spec in TABLE.values() if spec.layers and isinstance(module, spec.layers)]


def batch_statistics_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer that normalizes with batch statistics in training."""
    return any(spec.batch_statistics for spec in _specs_of(module))


def moving_statistics(model: nn.Module) -> list[Tensor]:
    """Every moving-statistics buffer of ``model``'s norm layers, in module order."""
    found = []
    for module in model.modules():
        names = {n for spec in _specs_of(module) for n in spec.moving_statistics}
        found += [b for n, b in module.named_buffers(recurse=False)
                  if n in names and b.is_floating_point()]
    return found


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
