"""Normalization layers: Batch Renorm (Ioffe 2017), batchnorm with per-worker groups,
the moving-average idea, and torch's GroupNorm / LayerNorm / InstanceNorm / SyncBN,
all built by name with ``build_norm`` and swapped into any model with ``swap_norm``."""

from brn_repro.norm.batch_norm import BatchNorm1d, BatchNorm2d
from brn_repro.norm.batch_renorm import BatchRenorm1d, BatchRenorm2d
from brn_repro.norm.mabn import CenteredConv2d, MABN2d
from brn_repro.norm.moving_average import MovingAverageNorm1d, MovingAverageNorm2d
from brn_repro.norm.registry import NORM_NAMES, build_norm, norm_diagnostics, swap_conv, swap_norm
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
    "SyncBatchNorm",
    "build_norm",
    "norm_diagnostics",
    "swap_conv",
    "swap_norm",
]
