"""Evaluation: inference-mode accuracy, and the paper's Fig 3 control.

- ``accuracy``: the model in eval mode (moving statistics), over given batches.
- ``minibatch_stats_accuracy``: the paper's control for non-i.i.d. training: the
  model normalizes with the statistics of each test batch (every batch-statistics
  norm replaced by plain batch normalization over the whole batch, its affine
  parameters kept; no r/d correction, no moving average), test batches drawn the
  non-i.i.d. way (paper: 25 labels x 2 images). Run on a copy so no moving
  statistic or schedule step of the real model changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from brn_repro.models import as_layout
from brn_repro.norm._grouped import batch_stats, layout_of, normalize


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _to_model(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """Moves an input batch to ``model``'s device and dtype, in the layout of its first
    4D weight (batches follow the weights, as in training)."""
    first = next(model.parameters(), torch.empty(0))
    weight = next((p for p in model.parameters() if p.dim() == 4), first)
    layout = layout_of(weight)
    return lambda x: as_layout(x.to(first.device, first.dtype, non_blocking=True), layout)


@torch.inference_mode()
def accuracy_counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> list[float]:
    """[correct, total, summed cross-entropy] of ``model`` in eval mode: sums, so the
    shards of a multi-process evaluation add up (``brn_repro.distributed``)."""
    was_training = model.training
    model.eval()
    device, to_model = _device(model), _to_model(model)
    # Accumulated on the device: one host sync at the end, not one per batch.
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    for x, y in batches:
        y = y.to(device, non_blocking=True)
        logits = model(to_model(x))
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        total += y.numel()
    model.train(was_training)
    return [float(correct.item()), float(total), loss_sum.item()]


def accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of ``model`` in eval mode."""
    return percent(accuracy_counts(model, batches))


def percent(counts: list[float]) -> tuple[float, float]:
    """(accuracy in %, mean loss) from ``[correct, total, loss sum]``."""
    correct, total, loss_sum = counts
    return 100.0 * correct / max(total, 1), loss_sum / max(total, 1)


class _MinibatchNorm(nn.Module):
    """Normalize with the statistics of the batch at hand, whatever the layer did in
    training (BN, BRN, the moving-average norm, MABN): the probe's norm layer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.weight, self.bias, self.eps = layer.weight, layer.bias, layer.eps

    def forward(self, x: Tensor) -> Tensor:
        mean, var = batch_stats(x)  # torch's training kernel is off by 1e-5 on channels-last
        return normalize(x, mean, var, self.weight, self.bias, self.eps)


def minibatch_stats_probe(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose batch-statistics norms normalize each batch with its own
    mean and variance (one group: the whole batch); the model itself is untouched."""
    probe = copy.deepcopy(model).eval()
    targets = [(name, m) for name, m in probe.named_modules()
               if name and (isinstance(m, nn.modules.batchnorm._BatchNorm) or hasattr(m, "per_worker_batch"))]
    for name, layer in targets:
        probe.set_submodule(name, _MinibatchNorm(layer))
    return probe


@torch.inference_mode()
def minibatch_stats_counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> list[float]:
    """[correct, total, 0] with every norm layer using the statistics of the test batch itself."""
    probe = minibatch_stats_probe(model)
    device, to_model = _device(probe), _to_model(probe)
    correct, total = torch.zeros((), dtype=torch.long, device=device), 0
    for x, y in batches:
        y = y.to(device, non_blocking=True)
        correct += (probe(to_model(x)).argmax(1) == y).sum()
        total += y.numel()
    return [float(correct.item()), float(total), 0.0]


def minibatch_stats_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Accuracy (%) with every norm layer using the statistics of the test batch itself."""
    return percent(minibatch_stats_counts(model, batches))[0]


class WeightEMA:
    """Exponential moving average of all parameters and floating buffers (the paper
    evaluates with moving averages of the parameters, mu and sigma included)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay={decay!r} must lie in (0, 1)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(live[name], 1.0 - self.decay)
            else:
                value.copy_(live[name])

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)
