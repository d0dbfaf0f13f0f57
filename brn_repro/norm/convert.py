"""Convert an existing model: its batchnorms to any norm (``swap_norm``), its
convolutions to the kind a norm pairs with (``swap_conv``).

A new norm layer takes over a batchnorm's state through its own
``load_batchnorm_state(bn)`` when it has one (Batch Renorm and the moving-average
norm keep a moving std, not a variance); any other layer gets
``_common.copy_batchnorm_state``: affine parameters and running statistics where it
has them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from brn_repro.norm._common import copy_batchnorm_state
from brn_repro.norm.mabn import CenteredConv2d

NormFactory = Callable[[int], nn.Module]

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


def swap_norm(model: nn.Module, factory: NormFactory) -> nn.Module:
    """Replace every batchnorm in ``model`` (in place) with ``factory(num_features)``,
    and its convolutions with the kind the norm pairs with (``factory.conv``).

    Each new layer takes over its batchnorm's state (see the module docstring), so a
    pretrained model keeps its inference behaviour under BRN.
    """
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ValueError("swap_norm needs a model that contains norm layers, not a norm layer")
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name
    ]
    for name, old in targets:
        new = factory(old.num_features)
        load = getattr(new, "load_batchnorm_state", None)
        if callable(load):
            load(old)
        else:
            copy_batchnorm_state(new, old)
        tensor = next(old.parameters(), old.running_mean)
        if tensor is not None:
            new.to(tensor.device)
        model.set_submodule(name, new)
    return swap_conv(model, getattr(factory, "conv", None))  # MABN, GN+WS: their convolutions
