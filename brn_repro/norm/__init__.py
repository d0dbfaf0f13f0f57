"""Normalization layers: Batch Renorm (Ioffe 2017), batchnorm with per-worker groups,
the moving-average idea, MABN, and torch's / timm's GroupNorm, LayerNorm, InstanceNorm,
SyncBN, FRN, EvoNorm, all built by name from one table (``registry.TABLE``) with
``build_norm`` and swapped into any model with ``swap_norm`` (``convert``)."""

from brn_repro.norm.batch_norm import BatchNorm1d, BatchNorm2d
from brn_repro.norm.batch_renorm import BatchRenorm1d, BatchRenorm2d
from brn_repro.norm.convert import swap_conv, swap_norm
from brn_repro.norm.mabn import CenteredConv2d, MABN2d
from brn_repro.norm.moving_average import MovingAverageNorm1d, MovingAverageNorm2d
from brn_repro.norm.registry import (
    NORM_NAMES,
    NormFactory,
    NormSpec,
    build_norm,
    norm_diagnostics,
    norm_names,
    norm_spec,
    register_norm,
)
from brn_repro.norm.sync_batch_norm import SyncBatchNorm

__all__ = [
    "NORM_NAMES",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "CenteredConv2d",
    "MABN2d",
    "MovingAverageNorm1d",
    "MovingAverageNorm2d",
    "NormFactory",
    "NormSpec",
    "SyncBatchNorm",
    "build_norm",
    "norm_diagnostics",
    "norm_names",
    "norm_spec",
    "register_norm",
    "swap_conv",
    "swap_norm",
]
