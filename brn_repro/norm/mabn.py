"""Moving Average Batch Normalization (MABN; Yan et al., "Towards Stabilizing Batch
Statistics in Backward Propagation of Batch Normalization", ICLR 2020; reference
code: github.com/megvii-model/MABN, ``MABN.py``).

A later answer to the question behind Batch Renorm. MABN argues that at small
batches it is not only the two forward statistics (mean, variance) that are noisy
but also the two *backward* statistics batchnorm's gradient uses: the means of
``g`` and of ``g * z`` over the batch. It therefore

- drops the mean: normalizes by the uncentered second moment ``E[x^2]`` (the
  convolutions before it are weight-centralized, ``CenteredConv2d``, which keeps
  the activations' mean near zero), and drops the ``mean(g)`` term of the backward;
- replaces the batch's ``E[x^2]`` in the forward, and the batch's ``E[g * z]`` in
  the backward, with simple moving averages over the last ``buffer_size``
  iterations (the SMA "simulates" a batch ``buffer_size`` times larger), after a
  warm-up of ``warmup_iters`` iterations that uses the current batch;
- renormalizes like BRN toward an exponential moving average ``running_var`` of the
  variance it used: ``y = gamma * r * x / sqrt(var + eps) + beta`` with
  ``r = sqrt(var + eps) / sqrt(running_var + eps)`` held at 1 for the first
  ``r_warmup`` iterations (the reference code: ``max(1000, warmup_iters)``), then
  clipped to ``[1 / r_max, r_max]`` (reference: 5), and no gradient through r.

Inference is ``gamma * x / sqrt(running_var + eps) + beta``: torch's batchnorm
kernel with a zero mean, the cost of BN. With ``per_worker_batch``, each worker's
statistics (and their moving-average buffers) are its own, as on a real worker;
``running_var`` takes the mean over workers.

``momentum`` here follows the reference code's convention, a *decay*:
``running_var = momentum * running_var + (1 - momentum) * var`` (reference: 0.98).

Under ``torch.autocast`` (float16 / bfloat16 input) training runs on a float32 copy
of the input, so the statistics, their buffers and the backward are float32, and the
output is cast back to the input's dtype; inference is torch's mixed-type kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brn_repro.norm._common import StepCounter, check_eps
from brn_repro.norm._grouped import (
    LOW_PRECISION,
    check_input_dim,
    check_per_worker_batch,
    from_groups,
    num_groups,
    reduce_dims,
    repeat_groups,
    sqrt,
    to_groups,
)


def _per_channel(t: Tensor, like: Tensor) -> Tensor:
    return t.view(1, -1, *([1] * (like.dim() - 2)))


class _MABNFunction(torch.autograd.Function):
    """Forward and backward of MABN on the per-worker layout (b, G*C, *S)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer: MABN2d, groups: int, iteration: int):
        channels = x.shape[1]
        xg = to_groups(x, groups)
        size = layer.buffer_size
        x2 = xg.square().mean(reduce_dims(xg))
        buffer_x2, buffer_gz = layer._buffers_for(groups * channels)
        slot = iteration % size
        buffer_x2[slot] = x2
        use_sma = iteration > size and iteration >= layer.warmup_iters
        var = buffer_x2.mean(0) if use_sma else x2
        std = sqrt(var + layer.eps)
        running_std = sqrt(repeat_groups(layer.running_var, groups) + layer.eps)
        if iteration <= layer.r_warmup:
            r = torch.ones_like(std)
        else:
            r = (std / running_std).clamp_(1.0 / layer.r_max, layer.r_max)
        z = xg / _per_channel(std, xg)
        gamma = repeat_groups(weight, groups)
        beta = repeat_groups(bias, groups)
        y = z * _per_channel(gamma * r, xg) + _per_channel(beta, xg)
        with torch.no_grad():
            m = layer.momentum
            layer.running_var.mul_(m).add_(var.view(groups, channels).mean(0), alpha=1 - m)
        ctx.save_for_backward(z, std, gamma, r)
        ctx.groups, ctx.channels, ctx.slot, ctx.use_sma = groups, channels, slot, use_sma
        ctx.buffer_gz = buffer_gz
        out = from_groups(y, groups, channels)
        return out.clone() if out._base is not None else out

    @staticmethod
    def backward(ctx, grad_out):
        z, std, gamma, r = ctx.saved_tensors
        groups, channels = ctx.groups, ctx.channels
        grad = to_groups(grad_out.contiguous(), groups)
        g = grad * _per_channel(gamma * r, grad)
        gz = (g * z).mean(reduce_dims(z))
        ctx.buffer_gz[ctx.slot] = gz
        mean_gz = ctx.buffer_gz.mean(0) if ctx.use_sma else gz
        gx = (g - z * _per_channel(mean_gz, z)) / _per_channel(std, z)
        dims = reduce_dims(z)
        grad_weight = (grad * z).sum(dims) * r
        grad_bias = grad.sum(dims)
        if groups > 1:
            grad_weight = grad_weight.view(groups, channels).sum(0)
            grad_bias = grad_bias.view(groups, channels).sum(0)
        return from_groups(gx, groups, channels), grad_weight, grad_bias, None, None, None


class MABN2d(StepCounter):
    """MABN for (N, C, H, W) input (see the module docstring).

    ``buffer_size``: iterations in the moving averages (the reference: real_B / B,
    the batch size to simulate over the batch size per worker); ``warmup_iters``:
    iterations using the current batch's statistics (reference: 100).

    Not written for the compiler: its backward keeps a history of gradient
    statistics and its warm-ups branch on the step, so under ``torch.compile`` the
    layer runs eager (a graph break at each MABN layer) and ``train.compile=auto``
    leaves MABN models eager."""

    compiles = False  # read by brn_repro.performance.wants_compile

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.98,
                 buffer_size: int = 16, warmup_iters: int = 100, r_warmup: int | None = None,
                 r_max: float = 5.0, per_worker_batch: int | None = None, affine: bool = True):
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} must lie in (0, 1) (MABN's decay; the reference uses 0.98)")
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size!r} must be a positive integer")
        if r_max < 1:
            raise ValueError(f"r_max={r_max!r} must be >= 1")
        self.num_features, self.eps, self.momentum = num_features, check_eps(eps), float(momentum)
        self.buffer_size, self.warmup_iters, self.r_max = buffer_size, int(warmup_iters), float(r_max)
        self.r_warmup = max(1000, self.warmup_iters) if r_warmup is None else int(r_warmup)
        self.per_worker_batch = check_per_worker_batch(per_worker_batch)
        self.affine = affine
        # The reference has no affine switch; without it gamma = 1, beta = 0 (frozen).
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=affine)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=affine)
        self.register_buffer("running_var", torch.ones(num_features))
        # One column per (worker, channel); resized on the first step with groups.
        self.register_buffer("buffer_x2", torch.zeros(buffer_size, num_features))
        self.register_buffer("buffer_gz", torch.zeros(buffer_size, num_features))
        self._init_step()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"buffer_size={self.buffer_size}, warmup_iters={self.warmup_iters}, "
                f"r_warmup={self.r_warmup}, r_max={self.r_max}, per_worker_batch={self.per_worker_batch}")

    def _buffers_for(self, columns: int) -> tuple[Tensor, Tensor]:
        if self.buffer_x2.shape[1] != columns:  # a new number of workers: fresh histories
            self.buffer_x2 = self.buffer_x2.new_zeros(self.buffer_size, columns)
            self.buffer_gz = self.buffer_gz.new_zeros(self.buffer_size, columns)
        return self.buffer_x2, self.buffer_gz

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("buffer_x2", "buffer_gz"):  # take the saved number of workers
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.compiler.disable
    def forward(self, x: Tensor) -> Tensor:
        check_input_dim(x, (4,), type(self).__name__)
        if not self.training:
            return F.batch_norm(x, torch.zeros_like(self.running_var), self.running_var,
                                self.weight, self.bias, False, 0.0, self.eps)
        groups = num_groups(x, self.per_worker_batch)
        iteration = self._advance_step() + 1  # the reference counts from 1
        if x.dtype in LOW_PRECISION:  # autocast: float32 statistics and buffers, output in x's dtype
            y = _MABNFunction.apply(x.to(self.running_var.dtype), self.weight, self.bias, self, groups, iteration)
            return y.to(x.dtype)
        return _MABNFunction.apply(x, self.weight, self.bias, self, groups, iteration)


class CenteredConv2d(nn.Conv2d):
    """Conv2d with weight centralization (MABN's CenConv2d): each filter's weights
    have their mean subtracted before the convolution, so activations stay centred
    and MABN may normalize by the second moment alone."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        return self._conv_forward(x, w - w.mean(dim=(1, 2, 3), keepdim=True), self.bias)
