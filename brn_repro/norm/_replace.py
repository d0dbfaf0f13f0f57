"""Putting new layers in place of a model's batchnorms, each taking over its batchnorm's
state, device and dtype: the core of ``convert.swap_norm`` and of ``LayerFamily.convert``.
Apart from both so that the layer families can convert without importing convert.py,
which imports them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


@torch.no_grad()
def copy_batchnorm_state(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """What any layer takes from a torch batchnorm: the affine parameters where it has
    them at the same shape, and the running mean and variance where it keeps them."""
    for attr in ("weight", "bias"):
        src, dst = getattr(bn, attr, None), getattr(layer, attr, None)
        if src is not None and dst is not None and src.shape == dst.shape:
            dst.copy_(src)
    if bn.running_mean is None:
        return
    for attr in ("running_mean", "running_var"):
        dst = getattr(layer, attr, None)
        if dst is not None:
            dst.copy_(getattr(bn, attr))


_BY_DIM = ((nn.BatchNorm1d, 1), (nn.BatchNorm2d, 2), (nn.BatchNorm3d, 3))


def batchnorm_dim(bn: nn.Module, sync_dim: int = 2) -> int:
    """1, 2 or 3 for a BatchNorm1d/2d/3d (or a subclass); ``sync_dim`` for a
    SyncBatchNorm or any other batchnorm, which take (N, C, *) input alike."""
    return next((dim for cls, dim in _BY_DIM if isinstance(bn, cls)), sync_dim)


def _new_layer(factory: NormFactory, old: nn.modules.batchnorm._BatchNorm, sync_dim: int) -> nn.Module:
    dim = batchnorm_dim(old, sync_dim)
    for_batchnorm = getattr(factory, "for_batchnorm", None)
    if callable(for_batchnorm):
        return for_batchnorm(old, dim)
    for_dim = getattr(factory, "for_dim", None)  # build_norm's factories: 1d, 2d, 3d layers
    return (for_dim(dim) if callable(for_dim) else factory)(old.num_features)


def replace_batchnorms(model: nn.Module, factory: NormFactory, *, sync_dim: int = 2) -> nn.Module:
    """Every batchnorm of ``model`` (in place) replaced by the layer ``factory`` builds for it
    (``factory.for_batchnorm(bn, dim)``, ``factory.for_dim(dim)(C)`` or ``factory(C)``), which takes
    over its state (``load_batchnorm_state`` where the layer has it, else ``copy_batchnorm_state``)."""
    if sync_dim not in (1, 2, 3):
        raise ValueError(f"sync_dim={sync_dim!r} must be 1, 2 or 3")
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ValueError(f"model={type(model).__name__} is a batchnorm itself; pass the model that contains it")
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name
    ]
    for name, old in targets:
        new = _new_layer(factory, old, sync_dim)
        load = getattr(new, "load_batchnorm_state", None)
        if callable(load):
            load(old)
        else:
            copy_batchnorm_state(new, old)
        tensor = next(old.parameters(), old.running_mean)
        if tensor is not None:
            new.to(device=tensor.device, dtype=tensor.dtype if tensor.is_floating_point() else None)
        model.set_submodule(name, new)
    return model


class FamilyConversion:
    """A ``replace_batchnorms`` factory: the family's layer of each batchnorm's dimension, with
    the batchnorm's own options (``batchnorm_options``) under the caller's."""

    def __init__(self, family: type, options: dict[str, Any]) -> None:
        self.family, self.options = family, options

    def for_batchnorm(self, bn: nn.modules.batchnorm._BatchNorm, dim: int) -> nn.Module:
        layer = self.family.for_dim(dim)
        return layer(bn.num_features, **{**layer.batchnorm_options(bn), **self.options})

    def __call__(self, num_features: int) -> nn.Module:
        return self.family.for_dim(2)(num_features, **self.options)
