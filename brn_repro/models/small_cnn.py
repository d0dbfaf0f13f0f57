"""A 5-convolution CNN for CPU-minute experiments on 28x28 or 32x32 images.

conv3x3 -> norm -> ReLU, five times (widths w, w, 2w, 2w, 4w; the 2nd and 4th
convolutions stride 2), global average pool, linear. The scale of PAPER.md's
Fashion-MNIST hints (width 32), where small and non-i.i.d. normalization
batches already change the result.
"""

from __future__ import annotations

from torch import Tensor, nn

from brn_repro.models.classifier import PooledClassifier
from brn_repro.norm.registry import NormFactory, build_norm


class SmallCNN(PooledClassifier):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 norm_layer: NormFactory | None = None):
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"model.width={width!r} must be a positive integer")
        norm_layer = norm_layer or build_norm("bn")
        plan = [(width, 1), (width, 2), (2 * width, 1), (2 * width, 2), (4 * width, 1)]
        layers, channels = [], in_channels
        for out, stride in plan:
            layers += [nn.Conv2d(channels, out, 3, stride, 1, bias=False), norm_layer(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.add_head(channels, num_classes)

    def body(self, x: Tensor) -> Tensor:
        return self.features(x)
