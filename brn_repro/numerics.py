"""Numerical checks: does a norm compute the same numbers however a global batch is
split, within float32 tolerance of float64? Used by the tests (CPU) and by
``make gpu-check`` (the same checks on a GPU).

What was found (issue 9): torch's CPU batchnorm kernel sums a channels-last batch row
after row, so its float32 statistics are off by ~1e-5 (1e-7 for NCHW input), and a
1-channel image batch is channels-last as far as a convolution can tell. A layer that
normalized its batch as one group ran that kernel through the whole network, where
each ReLU turned the error into sign flips of pre-activations near 0 and the gradient
came out 0.5-2% off float64. ``norm._grouped.batch_stats`` now sums in two cascaded
passes in any layout, and one group takes the same code as many.

Two things no implementation removes, so the checks compare layers, not networks:
- a float32 network's gradient is as far from float64 as its ReLU flips make it
  (1e-5 typically, 1e-3 after an unlucky flip), and a 20-step run drifts by up to
  1e-2 in loss; ``train.precision=float64`` runs agree to 1e-15 however split;
- MABN's weight-centred convolutions give pre-activations that are exactly 0 in exact
  arithmetic on a constant background (21% of the first layer's on Fashion-MNIST at
  init), where ReLU's derivative is decided by rounding.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]

# Config overrides under which every norm's state matters at the compared step: BRN's
# r and d clip from the first step, the moving averages move fast, MABN uses its SMAs.
CHECK_OVERRIDES = {
    "bn": ["norm.momentum=0.3"],
    "brn": ["norm.momentum=0.3", "norm.r_max=1.5", "norm.d_max=0.5", "norm.r_max_end_step=null",
            "norm.d_max_end_step=null"],
    "moving_average": ["norm.momentum=0.3"],
    "mabn": ["norm.warmup_iters=0", "norm.r_warmup=0", "norm.buffer_size=2"],
}


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that see the per-worker split (they carry ``per_worker_batch``)."""
    return [m for m in model.modules() if hasattr(m, "per_worker_batch")]


def layer_cases(model: nn.Module, batch: Batch, warm: Batch | None = None
                ) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """Each norm layer of ``model`` (float64) as it stood before a training step on
    ``batch``, with the real input and upstream gradient it met there. ``warm``: one
    forward before, so the moving statistics have left their init (BRN's r and d)."""
    model = copy.deepcopy(model).double().train()
    if warm is not None:
        with torch.no_grad():
            model(warm[0].double())
    layers = norm_layers(model)
    before = [copy.deepcopy(layer) for layer in layers]
    captured: list[dict[str, Tensor]] = []

    def keep(layer, inputs, output):
        slot = {"x": inputs[0].detach().clone()}
        captured.append(slot)
        output.register_hook(lambda g: slot.__setitem__("grad", g.detach().clone()))

    handles = [layer.register_forward_hook(keep) for layer in layers]
    x, y = batch
    F.cross_entropy(model(x.double()), y).backward()
    for handle in handles:
        handle.remove()
    return [(layer, c["x"], c["grad"]) for layer, c in zip(before, captured, strict=True)]


def layer_step(layer: nn.Module, x: Tensor, upstream: Tensor) -> dict[str, Tensor]:
    """One training step of ``layer``: output, gradients, and its new moving statistics
    (MABN's per-worker SMA histories left out: each worker's own by design)."""
    x = x.detach().requires_grad_()
    out = layer(x)
    out.backward(upstream)
    state = {k: v for k, v in layer.state_dict().items()
             if v.is_floating_point() and not k.startswith("buffer_")}
    return {"out": out.detach(), "grad_x": x.grad, "grad_weight": layer.weight.grad,
            "grad_bias": layer.bias.grad, **state}


def per_worker_step(layer: nn.Module, x: Tensor, upstream: Tensor, workers: int) -> dict[str, Tensor]:
    """A copy of ``layer`` per worker, each on its own part of the batch (one group
    each): what one process per worker computes. Parameter gradients are summed and
    moving statistics averaged, as DDP and ``distributed.MovingStatistics`` do."""
    size = len(x) // workers
    parts = [layer_step(copy.deepcopy(layer), x[i * size:(i + 1) * size], upstream[i * size:(i + 1) * size])
             for i in range(workers)]
    merged = {k: torch.cat([p[k] for p in parts]) for k in ("out", "grad_x")}
    merged.update({k: sum(p[k] for p in parts) for k in ("grad_weight", "grad_bias")})
    merged.update({k: sum(p[k] for p in parts) / workers for k in parts[0] if k not in merged})
    return merged


def relative_errors(got: dict[str, Tensor], want: dict[str, Tensor]) -> dict[str, float]:
    """Per entry, ||got - want|| / ||want|| in float64 on the CPU."""
    errors = {}
    for key, value in want.items():
        value = value.detach().double().cpu()
        diff = got[key].detach().double().cpu() - value
        errors[key] = (diff.norm() / value.norm().clamp_min(1e-30)).item()
    return errors


def split_errors(layer: nn.Module, x: Tensor, upstream: Tensor, workers: int,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
    """The largest relative error against the float64 grouped step of: the float64
    per-worker step (the split alone), and the float32 grouped and per-worker steps on
    ``device`` in NCHW and channels-last layouts (a network has both)."""
    reference = layer_step(copy.deepcopy(layer), x, upstream)
    worst = {"float64 split": max(relative_errors(per_worker_step(layer, x, upstream, workers),
                                                  reference).values())}
    for layout, name in ((torch.contiguous_format, "nchw"), (torch.channels_last, "channels_last")):
        x32 = x.to(device, torch.float32).contiguous(memory_format=layout)
        g32 = upstream.to(device, torch.float32).contiguous(memory_format=layout)
        layer32 = copy.deepcopy(layer).to(device, torch.float32)
        for path, got in (("grouped", layer_step(copy.deepcopy(layer32), x32, g32)),
                          ("per worker", per_worker_step(layer32, x32, g32, workers))):
            for key, error in relative_errors(got, reference).items():
                worst[f"{path} {name} {key}"] = error
    return worst
