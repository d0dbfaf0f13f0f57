"""Batch Renorm against independent references: Algorithm 1 in plain autograd,
the paper's backward formulas, and torch's own batchnorm where they must agree."""

import pytest
import torch
import torch.nn.functional as F
from reference import brn_paper_backward, brn_reference

from brn_repro.norm import BatchRenorm1d, BatchRenorm2d

SHAPES = [(16, 5), (8, 4, 7), (6, 3, 5, 5), (2, 4, 3, 3)]


def make_layer(shape, r_max, d_max, running_mean, running_std, eps=1e-3, momentum=0.1):
    cls = BatchRenorm2d if len(shape) == 4 else BatchRenorm1d
    # constant limits from the first step (the layer's default relaxes them from step 800)
    layer = cls(shape[1], eps=eps, momentum=momentum, r_max=r_max, d_max=d_max,
                r_max_end_step=None, d_max_end_step=None).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
        layer.running_mean.copy_(running_mean)
        layer.running_std.copy_(running_std)
    return layer


def clip_state(x, mu, sigma, r_max, d_max, eps):
    dims = (0,) + tuple(range(2, x.dim()))
    sigma_b = torch.sqrt(x.var(dims, unbiased=False) + eps)
    r_raw, d_raw = sigma_b / sigma, (x.mean(dims) - mu) / sigma
    return bool(((r_raw > r_max) | (r_raw < 1 / r_max)).any()), bool((d_raw.abs() > d_max).any())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clipping", ["active", "inactive"])
def test_forward_and_gradients_match_algorithm_1(shape, clipping):
    c = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    if clipping == "active":
        # Moving averages far from the batch: both r and d hit their limits.
        mu, sigma, r_max, d_max = torch.full((c,), -3.0), torch.full((c,), 0.2), 1.5, 0.5
    else:
        dims = (0,) + tuple(range(2, x.dim()))
        mu = x.detach().mean(dims) + 0.05
        sigma = x.detach().std(dims) * 1.1
        r_max, d_max = 3.0, 5.0
    mu, sigma = mu.double(), sigma.double()
    eps = 1e-3
    assert clip_state(x.detach(), mu, sigma, r_max, d_max, eps) == (
        (True, True) if clipping == "active" else (False, False)
    )
    layer = make_layer(shape, r_max, d_max, mu, sigma, eps)
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()

    y = layer(x)
    y_ref, _, _ = brn_reference(x_ref, gamma, beta, mu, sigma, r_max, d_max, eps)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)

    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    y_ref.backward(grad_y)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.weight.grad, gamma.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.bias.grad, beta.grad, rtol=1e-9, atol=1e-10)

    g_x, g_gamma, g_beta = brn_paper_backward(
        x.detach(), grad_y, gamma.detach(), mu, sigma, r_max, d_max, eps
    )
    torch.testing.assert_close(x.grad, g_x, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.weight.grad, g_gamma, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.bias.grad, g_beta, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_r_max_1_d_max_0_is_exactly_batchnorm(shape, dtype):
    layer = make_layer(shape, 1.0, 0.0, torch.full((shape[1],), 7.0), torch.full((shape[1],), 9.0),
                       eps=1e-5).to(dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    x_bn = x.detach().clone().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    y = layer(x)
    y_bn = F.batch_norm(x_bn, None, None, w, b, True, 0.0, 1e-5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, y_bn, **tol)
    g = torch.randn_like(y)
    y.backward(g)
    y_bn.backward(g)
    torch.testing.assert_close(x.grad, x_bn.grad, **tol)
    torch.testing.assert_close(layer.weight.grad, w.grad, **tol)
    torch.testing.assert_close(layer.bias.grad, b.grad, **tol)


def test_inference_is_batchnorm_with_the_same_statistics():
    layer = make_layer((6, 3, 4, 4), 3.0, 5.0, torch.tensor([0.1, -0.2, 0.3]),
                       torch.tensor([1.5, 0.7, 2.0]), eps=1e-3).eval()
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    bn = torch.nn.BatchNorm2d(3, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.weight.copy_(layer.weight)
        bn.bias.copy_(layer.bias)
        bn.running_mean.copy_(layer.running_mean)
        bn.running_var.copy_(layer.running_std**2 - 1e-3)  # sigma = sqrt(var + eps)
    torch.testing.assert_close(layer(x), bn(x), rtol=1e-12, atol=1e-12)
    # and the paper's formula directly: y = gamma (x - mu) / sigma + beta
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    expected = v(layer.weight) * (x - v(layer.running_mean)) / v(layer.running_std) + v(layer.bias)
    torch.testing.assert_close(layer(x), expected.detach())
    assert int(layer.step) == 0  # inference does not advance the schedule


def test_moving_averages_after_k_steps_match_hand_computation():
    alpha, eps = 0.05, 1e-3
    layer = BatchRenorm2d(3, eps=eps, momentum=alpha, r_max=2.0, d_max=1.0,
                          r_max_end_step=None, d_max_end_step=None).double()
    mu, sigma = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for _ in range(7):
        x = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 3 + 1
        layer(x)
        mu_b = x.mean((0, 2, 3))
        sigma_b = torch.sqrt(x.var((0, 2, 3), unbiased=False) + eps)
        mu = mu + alpha * (mu_b - mu)
        sigma = sigma + alpha * (sigma_b - sigma)  # a moving std, not a variance
    torch.testing.assert_close(layer.running_mean, mu)
    torch.testing.assert_close(layer.running_std, sigma)
    assert int(layer.step) == 7


def test_no_gradient_flows_into_r_and_d():
    # If r, d carried gradient, d(y)/d(x) would gain terms through sigma_B/sigma and
    # mu_B/sigma; compare against the reference where they are detached vs not.
    x = torch.randn(8, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    mu, sigma = torch.tensor([0.1, 0.2]).double(), torch.tensor([1.3, 0.9]).double()
    layer = make_layer(tuple(x.shape), 3.0, 5.0, mu, sigma)
    layer(x).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    dims = (0, 2, 3)
    mu_b, sigma_b = x2.mean(dims), torch.sqrt(1e-3 + x2.var(dims, unbiased=False))
    r, d = sigma_b / sigma, (mu_b - mu) / sigma  # NOT detached
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    y = v(layer.weight.detach()) * ((x2 - v(mu_b)) / v(sigma_b) * v(r) + v(d))
    y.sum().backward()
    assert (x.grad - x2.grad).abs().max() > 1e-3
