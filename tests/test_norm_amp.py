"""Mixed precision: every batch-statistics norm under ``torch.autocast`` keeps its
statistics and moving averages in float32 and returns the autocast dtype, as torch's
``BatchNorm2d`` does; BRN at r_max = 1, d_max = 0 equals torch's layer under autocast,
and every layer stays within a stated tolerance of its float32 self."""

import pytest
import torch
from torch import nn

from brn_repro.norm import (
    BatchNorm2d,
    BatchRenorm2d,
    MABN2d,
    MovingAverageNorm2d,
)

LOW = [torch.bfloat16, torch.float16]
# Output of a layer under autocast against the same layer in float32, on unit-scale
# activations from a convolution: the input and the output are each rounded once to
# the low-precision type (bf16: 8 significant bits, 2^-8 relative; fp16: 11 bits).
# Measured (torch 2.14, CPU, this test's data, outputs of magnitude <= 4.7): outputs
# max |diff| 0.017-0.025 bf16, 0.0022-0.0030 fp16; moving statistics after 3 steps
# 6e-4-1.1e-3 bf16 (MABN's running_var 8e-3), 8e-5-1.7e-4 fp16 (MABN 9e-4).
OUT_ATOL = {torch.bfloat16: 0.06, torch.float16: 0.008}
STAT_ATOL = {torch.bfloat16: 2e-2, torch.float16: 2.5e-3}
CONSTANT = {"r_max_end_step": None, "d_max_end_step": None}


def layers():
    """Every batch-statistics norm, in the settings where each does its own thing."""
    return {
        "brn": lambda: BatchRenorm2d(6, momentum=0.3, r_max=1.5, d_max=0.5, **CONSTANT),
        "brn_groups": lambda: BatchRenorm2d(6, momentum=0.3, r_max=1.5, d_max=0.5, per_worker_batch=2,
                                            **CONSTANT),
        "bn_groups": lambda: BatchNorm2d(6, momentum=0.3, per_worker_batch=4),
        "moving_average": lambda: MovingAverageNorm2d(6, momentum=0.3, per_worker_batch=2),
        "mabn": lambda: MABN2d(6, warmup_iters=1, r_warmup=1, buffer_size=2, per_worker_batch=4),
    }


def _run(layer_fn, dtype, steps=3, seed=0):
    """Conv -> norm for ``steps`` training steps (autocast ``dtype`` or float32), then
    one inference: outputs, input gradient, parameter gradients, buffers."""
    torch.manual_seed(seed)
    conv, layer = nn.Conv2d(3, 6, 3), layer_fn()
    outs = []
    for step in range(steps + 1):
        if step == steps:
            layer.eval()
        x = torch.randn(8, 3, 7, 7, generator=torch.Generator().manual_seed(step)).mul(2).add(0.5)
        x.requires_grad_()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            h = conv(x)
            y = layer(h)
        outs.append((h.dtype, y))
        if layer.training:
            y.float().square().sum().backward()
    return outs, x, conv, layer


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", list(layers()))
def test_statistics_in_float32_output_in_autocast_dtype(name, dtype):
    outs, _, conv, layer = _run(layers()[name], dtype)
    for h_dtype, y in outs:
        assert h_dtype == dtype and y.dtype == dtype  # a conv's output in, the same dtype out
    floating = [b for b in layer.buffers() if b.is_floating_point()]
    assert floating and all(b.dtype == torch.float32 for b in floating)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters()
               if p.requires_grad)
    assert conv.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", list(layers()))
def test_autocast_within_tolerance_of_float32(name, dtype):
    low, _, _, low_layer = _run(layers()[name], dtype)
    ref, _, _, ref_layer = _run(layers()[name], torch.float32)
    for (_, y), (_, y_ref) in zip(low, ref, strict=True):
        torch.testing.assert_close(y.float(), y_ref, atol=OUT_ATOL[dtype], rtol=0)
    for (key, b), (_, b_ref) in zip(low_layer.state_dict().items(), ref_layer.state_dict().items(), strict=True):
        if b.is_floating_point():
            torch.testing.assert_close(b, b_ref, atol=STAT_ATOL[dtype], rtol=0, msg=key)
        else:
            assert torch.equal(b, b_ref), key


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("groups", [None, 2])
def test_brn_at_r_max_1_d_max_0_equals_torch_batchnorm_under_autocast(dtype, groups):
    """Algorithm 1 with r = 1, d = 0 is batchnorm: under autocast too, output (to the
    rounding of the output dtype), gradients and running mean (float32)."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6) * 2 + 1
    conv = nn.Conv2d(3, 5, 3)
    brn = BatchRenorm2d(5, momentum=0.1, r_max=1.0, d_max=0.0, per_worker_batch=groups, **CONSTANT)
    bn = nn.BatchNorm2d(5, momentum=0.1)
    with torch.no_grad():
        for layer in (brn, bn):
            layer.weight.copy_(torch.linspace(0.5, 1.5, 5))
            layer.bias.copy_(torch.linspace(-1, 1, 5))
    grads = []
    for layer in (brn, bn):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            h = conv(xi)
            if groups:  # torch's layer sees each group on its own
                y = torch.cat([layer(part) for part in h.split(groups)])
            else:
                y = layer(h)
        assert y.dtype == dtype
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append((y.float(), xi.grad, layer.weight.grad, layer.bias.grad))
        conv.zero_grad()
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    (y, gx, gw, gb), (y_bn, gx_bn, gw_bn, gb_bn) = grads
    torch.testing.assert_close(y, y_bn, atol=ulp * 4, rtol=ulp)  # one rounding of |y| <= ~4 apart
    torch.testing.assert_close(gx, gx_bn, atol=2e-2 if dtype == torch.bfloat16 else 3e-3, rtol=0.02)
    torch.testing.assert_close(gw, gw_bn, atol=0.2 if dtype == torch.bfloat16 else 0.03, rtol=0.02)
    torch.testing.assert_close(gb, gb_bn, atol=1e-3, rtol=1e-3)
    if groups is None:  # torch's layer updated once per group with groups
        torch.testing.assert_close(brn.running_mean, bn.running_mean, atol=1e-6, rtol=1e-5)
        assert brn.running_mean.dtype == bn.running_mean.dtype == torch.float32


def test_float32_input_outside_autocast_takes_the_float32_code():
    """No autocast: a float32 layer gives the same bits as before (the harness's runs)."""
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5)
    a = BatchRenorm2d(4, per_worker_batch=4, **CONSTANT)
    b = BatchRenorm2d(4, per_worker_batch=4, **CONSTANT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pass  # leaving autocast leaves nothing behind
    assert torch.equal(a(x), b(x)) and a(x).dtype == torch.float32


def test_whole_model_in_bfloat16():
    """``model.bfloat16()`` (no autocast): bf16 buffers, the statistics cast into them."""
    layer = BatchRenorm2d(4, per_worker_batch=2, **CONSTANT).bfloat16()
    y = layer(torch.randn(8, 4, 5, 5, dtype=torch.bfloat16))
    assert y.dtype == layer.running_mean.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.bfloat16


def _small_net(norm):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), norm(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3))


@pytest.mark.slow  # ~30 s of compilation on 2 cores
@pytest.mark.parametrize("norm", [
    lambda c: BatchRenorm2d(c, momentum=0.3, r_max=1.5, d_max=0.5, per_worker_batch=2, **CONSTANT),
    lambda c: MovingAverageNorm2d(c, momentum=0.3),
], ids=["brn", "moving_average"])
def test_compiled_under_autocast_equals_eager(norm):
    """torch.compile runs the plain-ops path: float32 statistics, bf16 output, and the
    numbers of the eager (fused-kernel) path within bf16 rounding."""
    eager, compiled = _small_net(norm), _small_net(norm)
    step = torch.compile(lambda net, x: net(x))
    for i in range(3):
        x = torch.randn(8, 3, 7, 7, generator=torch.Generator().manual_seed(i))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_eager, y_compiled = eager(x), step(compiled, x)
        assert y_eager.dtype == y_compiled.dtype == torch.bfloat16
        y_eager.float().sum().backward()
        y_compiled.float().sum().backward()
        torch.testing.assert_close(y_compiled.float(), y_eager.float(), atol=0.05, rtol=0.02)
    for (name, b), b_eager in zip(compiled[1].named_buffers(), eager[1].buffers(), strict=True):
        assert b.dtype == b_eager.dtype
        if b.is_floating_point():
            assert b.dtype == torch.float32
            torch.testing.assert_close(b, b_eager, atol=1e-2, rtol=0, msg=name)
    torch.testing.assert_close(compiled[0].weight.grad, eager[0].weight.grad, atol=0.05, rtol=0.05)
