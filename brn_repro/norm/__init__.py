"""Normalization layers: Batch Renorm (Ioffe 2017), batchnorm with per-worker groups,
the moving-average idea, MABN, and torch's / timm's GroupNorm, LayerNorm, InstanceNorm,
SyncBN, FRN, EvoNorm, all built by name from one table (``registry.TABLE``) with
``build_norm`` and swapped into any model with ``swap_norm`` (``convert``).

In one's own model: ``BatchRenorm1d/2d/3d`` (the paper's relaxation by default),
``convert_batchnorm(model, "brn")`` for an existing model, and
``sync_moving_statistics(model)`` after each step under DDP."""

from brn_repro.norm.batch_norm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from brn_repro.norm.batch_renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from brn_repro.norm.convert import convert_batchnorm, swap_conv, swap_norm
from brn_repro.norm.ddp import sync_moving_statistics
from brn_repro.norm.mabn import CenteredConv2d, MABN2d
from brn_repro.norm.moving_average import MovingAverageNorm1d, MovingAverageNorm2d, MovingAverageNorm3d
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
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "CenteredConv2d",
    "MABN2d",
    "MovingAverageNorm1d",
    "MovingAverageNorm2d",
    "MovingAverageNorm3d",
    "NormFactory",
    "NormSpec",
    "SyncBatchNorm",
    "build_norm",
    "convert_batchnorm",
    "norm_diagnostics",
    "norm_names",
    "norm_spec",
    "register_norm",
    "swap_conv",
    "swap_norm",
    "sync_moving_statistics",
]
