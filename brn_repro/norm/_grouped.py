"""The shared core: batch statistics over per-worker groups, and a fused batchnorm
whose affine parameters may change every step.

Per-worker ("virtual worker") normalization: a batch of N = W x b examples is
normalized as W independent groups of b, as the paper's 50 workers x 32 (or its
microbatches of 4) were. Rather than loop over groups, the batch is laid out as
(b, W*C, ...) - each (group, channel) pair becomes one "channel" - so torch's own
batchnorm kernels do every group at once. One copy in and one out is far cheaper
than the normalization itself (measured in ``make bench``).

The fused path: Batch Renorm's r and d are constants for the step, so its output
is batchnorm with weight gamma*r and bias gamma*d + beta (PAPER.md). The
statistics are computed once, the output comes from torch's inference kernel fed
with the batch statistics, and the backward is torch's own training-mode
batchnorm backward - so gradients flow through mu_B and sigma_B exactly as in BN,
and the cost matches ``nn.BatchNorm2d``.

The plain path: under ``torch.compile`` the same layer is written in plain tensor
ops on a (G, b, C, *S) view of the batch (no copy, any memory layout), its
gradients through the statistics left to autograd, so the compiler fuses the
statistics, the normalization and the bookkeeping into the surrounding kernels.
Eager mode keeps the fused kernels, which are faster there; which path runs is
``fused_kernels()`` (tests/test_compile.py holds the two to the same numbers).

Mixed precision (``torch.autocast``, or a float16 / bfloat16 input): as torch's
``BatchNorm2d``, the statistics, r and d and the moving averages are float32
(``stats_dtype``), the output and the input gradient are in the input's dtype.
The fused path feeds the half-precision input with float32 statistics to torch's
mixed-type batchnorm kernels; the plain path computes in float32 and casts the
output back. A float32 or float64 input takes exactly the code it took before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def check_per_worker_batch(value: int | None, field: str = "per_worker_batch") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} must be a positive integer (or null for no groups)")
    return value


def num_groups(x: Tensor, per_worker_batch: int | None) -> int:
    """How many per-worker groups the batch holds; raises when b does not divide N."""
    batch = x.shape[0]
    if per_worker_batch is None or per_worker_batch == batch:
        return 1
    if batch % per_worker_batch:
        raise ValueError(
            f"per_worker_batch={per_worker_batch} does not divide the batch of {batch} examples; "
            f"use a batch that is a multiple of {per_worker_batch}"
        )
    return batch // per_worker_batch


def layout_of(x: Tensor) -> torch.memory_format:
    """The memory format to give tensors that meet ``x`` in one kernel."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def to_groups(x: Tensor, groups: int) -> Tensor:
    """(G*b, C, *S) -> (b, G*C, *S), a copy in ``x``'s layout; channel index = g*C + c."""
    if groups == 1:
        return x
    batch, channels, *spatial = x.shape
    b = batch // groups
    if layout_of(x) == torch.channels_last:  # (N, H, W, C) in memory: keep it that way
        height, width = spatial
        nhwc = x.permute(0, 2, 3, 1).reshape(groups, b, height, width, channels)
        return nhwc.permute(1, 2, 3, 0, 4).reshape(b, height, width, groups * channels).permute(0, 3, 1, 2)
    return x.reshape(groups, b, channels, *spatial).transpose(0, 1).reshape(
        b, groups * channels, *spatial
    )


def from_groups(y: Tensor, groups: int, channels: int) -> Tensor:
    """Inverse of ``to_groups``."""
    if groups == 1:
        return y
    b, _, *spatial = y.shape
    if layout_of(y) == torch.channels_last:
        height, width = spatial
        nhwc = y.permute(0, 2, 3, 1).reshape(b, height, width, groups, channels)
        return nhwc.permute(3, 0, 1, 2, 4).reshape(b * groups, height, width, channels).permute(0, 3, 1, 2)
    return y.reshape(b, groups, channels, *spatial).transpose(0, 1).reshape(
        b * groups, channels, *spatial
    )


LOW_PRECISION = (torch.float16, torch.bfloat16)


def stats_dtype(x: Tensor) -> torch.dtype:
    """The dtype batch statistics of ``x`` are kept in: float32 for float16 / bfloat16
    input (autocast), else ``x``'s own (float32, float64)."""
    return torch.float32 if x.dtype in LOW_PRECISION else x.dtype


def for_stats(x: Tensor) -> Tensor:
    """``x`` in ``stats_dtype``: itself for float32 / float64, a float32 copy otherwise."""
    return x if x.dtype not in LOW_PRECISION else x.float()


def values_per_channel(x_grouped: Tensor) -> int:
    return x_grouped.numel() // x_grouped.shape[1]


def check_values_per_channel(n: int, x: Tensor, where: str) -> None:
    if n < 2:
        raise ValueError(
            f"batch statistics need more than 1 value per channel, got {n} (input shape "
            f"{tuple(x.shape)} {where}); use a larger per_worker_batch, or a norm without "
            "batch statistics (gn, ln, in) for 2D input"
        )


def reduce_dims(x: Tensor) -> tuple[int, ...]:
    """Every dimension but the channels'."""
    return (0, *range(2, x.dim()))


def batch_stats(x_grouped: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance, accurate in float32 in any memory layout.

    On the CPU, ``torch.batch_norm_update_stats`` sums a channels-last batch's N*H*W
    rows one after another, so its float32 mean is off by up to 2e-5 sigma and its
    variance by 3e-5 (measured at 128 x 16 x 28 x 28; 1e-7 for NCHW input). A
    1-channel image batch (Fashion-MNIST) is channels-last as far as a convolution
    can tell, so a network whose layers normalized their batch as one group ran that
    kernel throughout, and the ReLUs turned the 1e-5 into sign flips and gradients
    0.5-2% off float64 (issue 9, ``brn_repro.numerics``). Channels-last input on the
    CPU therefore takes two passes of torch's cascaded summation (~1e-7); everything
    else keeps torch's kernel, accurate there and faster on small batches with
    several threads (two passes cost BRN's ResNet-20 step 2.6% at batch 4).
    Half-precision input is read in float32 (``for_stats``): float32 statistics.
    """
    x_grouped = for_stats(x_grouped)
    n = values_per_channel(x_grouped)
    check_values_per_channel(n, x_grouped, "in per-worker layout")
    if x_grouped.is_cuda or layout_of(x_grouped) != torch.channels_last:
        return torch.batch_norm_update_stats(x_grouped, None, None, 0.0)
    dims = reduce_dims(x_grouped)
    mean = x_grouped.sum(dims).div_(n)
    shape = (1, -1) + (1,) * (x_grouped.dim() - 2)
    var = (x_grouped - mean.view(shape)).square_().sum(dims).div_(n)
    return mean, var


def normalize(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
              eps: float = 0.0) -> Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` per channel, eps = 0 allowed
    (BRN's and the moving-average norm's sigma already hold eps). Eager: torch's
    fused kernel (``F.batch_norm`` refuses eps = 0 in some releases, 2.11). Compiling:
    plain ops, whose gradients the compiler gets right (its inference-batchnorm
    backward did not: 0.7 off in float64, torch 2.14, tests/test_compile.py)."""
    if fused_kernels():  # half-precision x with float32 statistics: torch's mixed-type kernel
        return torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    y = (for_stats(x) - mean.view(shape)) * scale.view(shape)
    y = y if bias is None else y + bias.view(shape)
    return y.to(x.dtype)


def sqrt(t: Tensor) -> Tensor:
    """``t.sqrt()``, but on a CPU in eager mode by ATen's own vector kernels: there
    ``Tensor.sqrt`` goes to MKL's VML, whose last bit depends on the CPU even with the
    kernels pinned (brn_repro.kernels; results/kernels/emulated.csv). 1 / rsqrt is within
    an ulp and the same on every x86 CPU at one instruction set."""
    if t.is_cuda or torch.compiler.is_compiling():
        return t.sqrt()
    return t.rsqrt().reciprocal_()


def fused_kernels() -> bool:
    """Eager: torch's fused batchnorm kernels. Compiling: plain ops the compiler fuses."""
    return not torch.compiler.is_compiling()


@torch.library.custom_op("brn_repro::snapshot", mutates_args=())
def snapshot(t: Tensor) -> Tensor:
    """A copy of a buffer the layer then updates in place, for use in the forward.

    Compiled, a ``clone()`` is elided and pointwise ops of a buffer are recomputed
    in the backward from the buffer, by then updated: the moving-average norm's
    input gradient came out 0.7 off in float64 (torch 2.14, silently). An opaque op
    can be neither elided nor recomputed, so the backward sees this step's values.
    """
    return t.clone()


@snapshot.register_fake
def _(t: Tensor) -> Tensor:
    return torch.empty_like(t)


def moving_stats(*buffers: Tensor) -> tuple[Tensor, ...]:
    """The values of moving-statistics buffers for this step's forward (see ``snapshot``)."""
    if fused_kernels():
        return tuple(b.clone() for b in buffers)
    return tuple(snapshot(b) for b in buffers)


def grouped_view(x: Tensor, groups: int) -> Tensor:
    """(G*b, C, *S) -> (G, b, C, *S): a view in either memory layout."""
    return x.view(groups, x.shape[0] // groups, *x.shape[1:])


def plain_batch_stats(x: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """The grouped view, and per-(group, channel) mean and biased variance shaped
    (G, 1, C, 1, ...) for broadcasting; two passes, as ``batch_stats``. The view is
    in ``stats_dtype`` (a float32 copy of half-precision input)."""
    xg = grouped_view(for_stats(x), groups)
    dims = (1, *range(3, xg.dim()))
    check_values_per_channel(xg.numel() // (groups * xg.shape[2]), x, f"in {groups} groups")
    mean = xg.mean(dims, keepdim=True)
    var = (xg - mean).square().mean(dims, keepdim=True)
    return xg, mean, var


def _plain_grouped_batch_norm(x, weight, bias, groups, eps, adjust):
    """``_GroupedBatchNormFn`` in plain ops (see the module docstring); same ``adjust``."""
    xg, mean, var = plain_batch_stats(x, groups)
    invstd = (var + eps).rsqrt()
    with torch.no_grad():
        flat_var = var.detach().reshape(-1)
        factors = adjust(mean.detach().reshape(-1), flat_var, (flat_var + eps).sqrt())
    channels = x.shape[1]
    shape = (-1, 1, channels) + (1,) * (x.dim() - 2)  # (group or 1, example, channel, *space)
    gamma = None if weight is None else weight.view(1, channels)
    beta = None if bias is None else bias.view(1, channels)
    if factors is None:
        scale, shift = gamma, beta
    else:
        r, d = (f.view(groups, channels) for f in factors)
        scale = r if gamma is None else gamma * r
        shift = d if gamma is None else torch.addcmul(beta, gamma, d)
    y = (xg - mean) * invstd
    if scale is not None:
        y = y * scale.reshape(shape)
    if shift is not None:
        y = y + shift.reshape(shape)
    return y.reshape(x.shape).to(x.dtype)


class _GroupedBatchNormFn(torch.autograd.Function):
    """Training-mode batchnorm over per-worker groups with per-step affine factors.

    forward(x, weight, bias, groups, eps, adjust): the batch statistics are computed
    once; ``adjust(mean, var, std)`` (the layer's own bookkeeping: running averages,
    BRN's r and d) returns per-(group, channel) factors ``(r, d)`` or ``None``; the
    output is ``gamma*r * x_hat + (gamma*d + beta)`` computed by torch's inference
    kernel, and the backward is torch's training-mode batchnorm backward (gradients
    through the batch statistics) with r and d held constant, as Algorithm 1 says.
    One autograd node per layer keeps small batches cheap.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, adjust):
        channels = x.shape[1]
        x_grouped = to_groups(x, groups)
        mean, var = batch_stats(x_grouped)
        var_eps = var + eps
        std = sqrt(var_eps)
        factors = adjust(mean, var, std)
        gamma = repeat_groups(weight, groups)
        beta = repeat_groups(bias, groups)
        if factors is None:
            r = d = None
            w_eff, b_eff = gamma, beta
        else:
            r, d = factors
            w_eff = r if gamma is None else gamma * r
            b_eff = d if gamma is None else torch.addcmul(beta, gamma, d)
        y = torch.native_batch_norm(x_grouped, w_eff, b_eff, mean, var, False, 0.0, eps)[0]
        ctx.save_for_backward(x_grouped, w_eff, mean, var_eps.rsqrt_(), r, d)
        ctx.groups, ctx.channels, ctx.eps = groups, channels, eps
        out = from_groups(y, groups, channels)
        # With one example per group the layout change is a view of y, and autograd
        # forbids in-place ops (ReLU(inplace=True)) on views made inside a Function.
        return out.clone() if out._base is not None else out

    @staticmethod
    def backward(ctx, grad_out):
        x_grouped, w_eff, mean, invstd, r, d = ctx.saved_tensors
        groups, channels = ctx.groups, ctx.channels
        # The native kernel's fast path wants the gradient in the input's layout.
        grad_grouped = to_groups(grad_out, groups).contiguous(memory_format=layout_of(x_grouped))
        need_params = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_grouped, x_grouped, w_eff, None, None, mean, invstd, True, ctx.eps,
            [ctx.needs_input_grad[0], need_params, need_params],
        )
        if gx is not None:
            gx = from_groups(gx, groups, channels)
        grad_weight = grad_bias = None
        if need_params:
            # d(loss)/d(gamma) = sum over groups of r * dL/dw_eff + d * dL/db_eff.
            if r is not None:
                gw = torch.addcmul(gw * r, gb, d)
            grad_weight = gw if groups == 1 else gw.view(groups, channels).sum(0)
            grad_bias = gb if groups == 1 else gb.view(groups, channels).sum(0)
        return gx, grad_weight, grad_bias, None, None, None


def grouped_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
    adjust: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor] | None],
) -> Tensor:
    """See ``_GroupedBatchNormFn``. ``adjust`` runs inside the forward, without autograd;
    under ``torch.compile`` the plain-ops formulation runs instead."""
    if fused_kernels():
        return _GroupedBatchNormFn.apply(x, weight, bias, groups, eps, adjust)
    return _plain_grouped_batch_norm(x, weight, bias, groups, eps, adjust)


def repeat_groups(t: Tensor | None, groups: int) -> Tensor | None:
    if t is None or groups == 1:
        return t
    return t.repeat(groups)


def check_input_dim(x: Tensor, allowed: tuple[int, ...], layer: str) -> None:
    if x.dim() not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"{layer} expects {want} input, got {x.dim()}D of shape {tuple(x.shape)}")
