"""Models that take any normalization through a ``norm_layer`` factory.

``build_model(name, num_classes=, in_channels=, image_size=, norm_layer=, **options)``
builds by name; ``check_model_input`` says, before anything is built, whether a
model can take the dataset's images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from brn_repro.models.resnet_cifar import ResNetCifar
from brn_repro.models.small_cnn import SmallCNN
from brn_repro.models.torchvision_models import check_inception_input, inception_v3, resnet
from brn_repro.norm.registry import NormFactory, swap_conv

MODEL_NAMES = ("small_cnn", "resnet_cifar", "resnet18", "resnet50", "inception_v3")
_OPTIONS = {"small_cnn": {"width"}, "resnet_cifar": {"depth", "width"},
            "resnet18": {"small_input_stem"}, "resnet50": {"small_input_stem"}, "inception_v3": set()}


def check_model_input(name: str, *, image_size: int, in_channels: int, dataset: str = "the dataset",
                      **options: Any) -> None:
    """One-line ValueError for an unknown model, option, or an input it cannot take."""
    if name not in MODEL_NAMES:
        raise ValueError(f"model={name!r} is not a model; use one of {', '.join(MODEL_NAMES)}")
    unknown = sorted(set(options) - _OPTIONS[name])
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not an option of model={name}; "
                         f"it takes {sorted(_OPTIONS[name]) or 'none'}")
    if in_channels < 1 or image_size < 4:
        raise ValueError(f"model={name} cannot take {in_channels}-channel {image_size}x{image_size} images")
    if name == "inception_v3":
        check_inception_input(image_size, dataset)


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int,
                norm_layer: NormFactory, **options: Any) -> nn.Module:
    """The model, with the convolutions its norm pairs with (``norm_layer.conv``:
    MABN's centred, GN+WS's standardized ones)."""
    model = _build(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                   norm_layer=norm_layer, **options)
    return swap_conv(model, getattr(norm_layer, "conv", None))


def _build(name: str, *, num_classes: int, in_channels: int, image_size: int,
           norm_layer: NormFactory, **options: Any) -> nn.Module:
    check_model_input(name, image_size=image_size, in_channels=in_channels, **options)
    if name == "small_cnn":
        return SmallCNN(num_classes, in_channels, norm_layer=norm_layer, **options)
    if name == "resnet_cifar":
        return ResNetCifar(num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer,
                           **options)
    if name in ("resnet18", "resnet50"):
        return resnet(name, num_classes, in_channels, image_size, norm_layer, **options)
    return inception_v3(num_classes, in_channels, image_size, norm_layer)


def as_layout(x: Tensor, layout: torch.memory_format) -> Tensor:
    """``x`` with the strides of ``layout``. A 1-channel image batch can be contiguous in
    both layouts at once, and a convolution then picks channels-last for the whole
    network; NCHW must be asked for by its strides."""
    x = x.contiguous(memory_format=layout)
    if layout == torch.contiguous_format and x.dim() == 4 and x.stride(1) != x.shape[2] * x.shape[3]:
        x = x.clone(memory_format=torch.contiguous_format)
    return x


__all__ = ["MODEL_NAMES", "ResNetCifar", "SmallCNN", "as_layout", "build_model", "check_model_input"]
