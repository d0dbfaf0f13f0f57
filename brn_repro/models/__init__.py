"""Models that take any normalization through a ``norm_layer`` factory."""

from brn_repro.models.resnet_cifar import ResNetCifar

__all__ = ["ResNetCifar"]
