"""What the CIFAR-scale models share: a convolutional body, then global average
pooling and one linear layer, with He initialization of the convolutions."""

from __future__ import annotations

from torch import Tensor, nn


class PooledClassifier(nn.Module):
    """A subclass builds its body, calls ``add_head``, and says how to run the body."""

    def add_head(self, channels: int, num_classes: int) -> None:
        """The pool and the linear classifier on the body's ``channels``, then He et al.
        (2015) initialization (fan_out, for ReLU) of every convolution of the body. Called
        once the body is built: the random draws, and so the weights of a seed, follow
        the order the layers were made in."""
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def body(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))
