"""Convert an existing model: its batchnorms to any norm (``swap_norm``,
``convert_batchnorm``), its convolutions to the kind a norm pairs with (``swap_conv``).

``convert_batchnorm(model, "brn", **options)`` (or ``BatchRenorm2d.convert(model,
**options)``) is the library's counterpart of ``torch.nn.SyncBatchNorm.
convert_sync_batchnorm``: every ``BatchNorm1d/2d/3d`` becomes ``BatchRenorm1d/2d/3d``
(``"bn"``: the per-worker ``BatchNorm1d/2d/3d``; ``"moving_average"``:
``MovingAverageNorm1d/2d/3d``), each keeping its batchnorm's ``eps`` and ``affine``
(the per-worker BN: every option) unless ``options`` say otherwise. A
``SyncBatchNorm`` (torch's or ``brn_repro.norm``'s) does not say its input's
dimension: it becomes the ``sync_dim`` layer (default 2, feature maps).

A new norm layer takes over a batchnorm's state through its own
``load_batchnorm_state(bn)`` when it has one (Batch Renorm and the moving-average
norm keep a moving std, not a variance); any other layer gets
``_replace.copy_batchnorm_state``: affine parameters and running statistics where it
has them. It is put on the batchnorm's device and floating dtype, so a trained
model's inference outputs do not change.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from brn_repro.norm._common import LayerFamily
from brn_repro.norm._replace import NormFactory, replace_batchnorms
from brn_repro.norm.batch_norm import BatchNorm2d
from brn_repro.norm.batch_renorm import BatchRenorm2d
from brn_repro.norm.mabn import CenteredConv2d
from brn_repro.norm.moving_average import MovingAverageNorm2d

# The convolutions a norm may pair with (``NormSpec.conv``).
CONV_KINDS = ("centered", "standardized")


def _conv_class(kind: str) -> type[nn.Conv2d]:
    if kind == "centered":
        return CenteredConv2d
    if kind == "standardized":
        from timm.layers import StdConv2d  # timm is slow to import: only when asked for

        return StdConv2d
    raise ValueError(f"conv={kind!r}: use centered or standardized")


def swap_conv(model: nn.Module, kind: str | None) -> nn.Module:
    """Replace every ``nn.Conv2d`` of ``model`` (in place, weights kept) with the
    convolution a norm pairs with: ``centered`` (MABN's weight centralization) or
    ``standardized`` (weight standardization, timm's StdConv2d); None leaves it."""
    if kind is None:
        return model
    new_class = _conv_class(kind)
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Conv2d and name]  # exact type: already-swapped ones stay
    for name, old in targets:
        new = new_class(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                        padding=old.padding, dilation=old.dilation, groups=old.groups,
                        bias=old.bias is not None)
        new.load_state_dict(old.state_dict())
        model.set_submodule(name, new.to(old.weight.device))
    return model


def swap_norm(model: nn.Module, factory: NormFactory, *, sync_dim: int = 2) -> nn.Module:
    """Replace every batchnorm in ``model`` (in place) with ``factory(num_features)``,
    and its convolutions with the kind the norm pairs with (``factory.conv``).

    A factory of ``build_norm`` puts the layer of the batchnorm's dimension in its
    place (``factory.for_dim``: a BatchNorm1d becomes BatchRenorm1d, not 2d);
    ``sync_dim`` is the dimension assumed for a SyncBatchNorm. Each new layer takes
    over its batchnorm's state (see the module docstring), device and dtype, so a
    pretrained model keeps its inference behaviour under BRN.
    """
    replace_batchnorms(model, factory, sync_dim=sync_dim)
    return swap_conv(model, getattr(factory, "conv", None))  # MABN, GN+WS: their convolutions


FAMILIES: dict[str, type[LayerFamily]] = {
    "brn": BatchRenorm2d, "bn": BatchNorm2d, "moving_average": MovingAverageNorm2d,
}


def convert_batchnorm(model: nn.Module, norm: str | type[LayerFamily] = "brn", *, sync_dim: int = 2,
                      **options: Any) -> nn.Module:
    """Replace (in place) every ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` of ``model``
    with ``norm``'s layer of the same dimension and return ``model``.

    ``norm``: ``"brn"`` (Batch Renorm), ``"bn"`` (batchnorm with ``per_worker_batch``
    groups; without them it turns a SyncBatchNorm model back into plain batchnorm) or
    ``"moving_average"``, or one of their classes (``BatchRenorm2d``). ``options``: the
    layer's keyword arguments (``r_max``, ``relax_start``, ``per_worker_batch``,
    ``momentum`` ...); ``eps`` and ``affine`` default to each batchnorm's own (the
    per-worker BN also takes ``momentum`` and ``track_running_stats``), BRN's
    ``momentum`` to its 0.01. Running statistics, affine parameters, device and dtype
    are carried over, so the converted model's inference output is the original's.
    For the harness's other norms (gn, mabn ...) use ``swap_norm(model, build_norm(name))``.
    """
    if isinstance(norm, str):
        if norm not in FAMILIES:
            raise ValueError(f"norm={norm!r}: convert_batchnorm takes one of {sorted(FAMILIES)} or "
                             "their classes; for other norms use swap_norm(model, build_norm(name))")
        norm = FAMILIES[norm]
    if not (isinstance(norm, type) and issubclass(norm, LayerFamily)):
        raise ValueError(f"norm={norm!r} is not a layer family (BatchRenorm2d, BatchNorm2d, MovingAverageNorm2d)")
    return norm.convert(model, sync_dim=sync_dim, **options)
