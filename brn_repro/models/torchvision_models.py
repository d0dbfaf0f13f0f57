"""torchvision's ResNet-18/50 and Inception-v3 with any normalization, any input channels.

ResNets take the norm through torchvision's ``norm_layer``; Inception-v3 has no
such argument, so its batchnorms are swapped (``swap_norm``). Images under 64 px
get a CIFAR-style ResNet stem (3x3 stride-1 convolution, no max-pool), as is
usual for 32x32 inputs, since the ImageNet stem would shrink them to 1x1.
Weights are never downloaded: every model starts from scratch.
"""

from __future__ import annotations

import torchvision
from torch import nn

from brn_repro.norm.registry import NormFactory, swap_norm

INCEPTION_MIN_SIZE = 75


def resnet(name: str, num_classes: int, in_channels: int, image_size: int,
           norm_layer: NormFactory, small_input_stem: bool | None = None) -> nn.Module:
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes,
                                              norm_layer=norm_layer)
    if small_input_stem is None:
        small_input_stem = image_size < 64
    if small_input_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def check_inception_input(image_size: int, dataset: str = "this dataset") -> None:
    if image_size < INCEPTION_MIN_SIZE:
        raise ValueError(
            f"model=inception_v3 needs images of at least {INCEPTION_MIN_SIZE}x{INCEPTION_MIN_SIZE}, "
            f"{dataset} gives {image_size}x{image_size}; use model=small_cnn, resnet_cifar or "
            "resnet18, or an imagefolder dataset with dataset.image_size>=75"
        )


def inception_v3(num_classes: int, in_channels: int, image_size: int,
                 norm_layer: NormFactory) -> nn.Module:
    check_inception_input(image_size)
    model = torchvision.models.inception_v3(weights=None, num_classes=num_classes,
                                            aux_logits=False, init_weights=True)
    if in_channels != 3:
        old = model.Conv2d_1a_3x3.conv
        model.Conv2d_1a_3x3.conv = nn.Conv2d(in_channels, old.out_channels, 3, 2, bias=False)
    return swap_norm(model, norm_layer)
