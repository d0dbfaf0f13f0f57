"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of n basic blocks, widths
16/32/64 (times ``width``), depth 6n + 2 (20, 32, 56, ...), with any normalization.

Option A shortcuts of the paper are replaced by 1x1 projection convolutions with
their own norm layer, so every norm layer in the model is the configured one.
"""

from __future__ import annotations

from torch import Tensor, nn

from brn_repro.models.classifier import PooledClassifier
from brn_repro.norm.registry import NormFactory, build_norm


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), norm_layer(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(PooledClassifier):
    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        norm_layer: NormFactory | None = None,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"model.depth={depth} must be 6n + 2 (20, 32, 44, 56, 110)")
        blocks = (depth - 2) // 6
        norm_layer = norm_layer or build_norm("bn")
        widths = [max(1, round(w * width)) for w in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            norm_layer(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, in_planes = [], widths[0]
        for stage, planes in enumerate(widths):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride, norm_layer))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.add_head(in_planes, num_classes)

    def body(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))
