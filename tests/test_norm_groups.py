"""Per-worker groups: a batch of W x b normalized as W independent groups must equal
normalizing each group on its own (the paper's workers), in one vectorized call."""

import pytest
import torch
import torch.nn.functional as F
from reference import brn_reference

from brn_repro.norm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchRenorm1d,
    BatchRenorm2d,
    MovingAverageNorm2d,
)


def assert_same_step(layer, x, y, x_ref, y_ref, weight_ref, bias_ref):
    """``layer``'s output ``y`` of ``x`` equals the reference's, and so do the gradients
    of the input, the scale and the shift for one random upstream gradient."""
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, weight_ref.grad)
    torch.testing.assert_close(layer.bias.grad, bias_ref.grad)


@pytest.mark.parametrize("shape,b", [((12, 3, 4, 4), 4), ((8, 2, 3, 3), 1), ((12, 5), 3), ((6, 2, 5), 2)])
def test_brn_groups_equal_each_group_alone(shape, b):
    eps, alpha = 1e-3, 0.1
    mu = torch.tensor([0.3, -0.2, 0.1, 0.0, 0.5])[: shape[1]].double()
    sigma = torch.tensor([0.8, 1.4, 1.0, 2.0, 0.6])[: shape[1]].double()
    cls = BatchRenorm2d if len(shape) == 4 else BatchRenorm1d
    layer = cls(shape[1], eps=eps, momentum=alpha, r_max=1.5, d_max=0.3, per_worker_batch=b,
                r_max_end_step=None, d_max_end_step=None).double()  # constant limits
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
        layer.running_mean.copy_(mu)
        layer.running_std.copy_(sigma)
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    x = torch.randn(shape, dtype=torch.float64).mul(2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()

    y = layer(x)
    outs, mus, sigmas = [], [], []
    for chunk in x_ref.split(b):
        out, mu_b, sigma_b = brn_reference(chunk, gamma, beta, mu, sigma, 1.5, 0.3, eps)
        outs.append(out)
        mus.append(mu_b)
        sigmas.append(sigma_b)
    assert_same_step(layer, x, y, x_ref, torch.cat(outs), gamma, beta)
    # moving statistics: updated with the mean over groups
    torch.testing.assert_close(layer.running_mean, mu + alpha * (torch.stack(mus).mean(0) - mu))
    torch.testing.assert_close(layer.running_std, sigma + alpha * (torch.stack(sigmas).mean(0) - sigma))


@pytest.mark.parametrize("cls,shape,b", [(BatchNorm2d, (12, 3, 4, 4), 4), (BatchNorm1d, (12, 3), 4),
                                         (BatchNorm2d, (6, 3, 4, 4), 1)])
def test_bn_groups_equal_torch_batchnorm_per_group(cls, shape, b):
    layer = cls(shape[1], momentum=0.2, per_worker_batch=b).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    y = layer(x)
    y_ref = torch.cat([F.batch_norm(c, None, None, w, bias, True, 0.0, layer.eps) for c in x_ref.split(b)])
    assert_same_step(layer, x, y, x_ref, y_ref, w, bias)
    dims = (0,) + tuple(range(2, x.dim()))
    means = torch.stack([c.mean(dims) for c in x_ref.detach().split(b)]).mean(0)
    vars_ = torch.stack([c.var(dims, unbiased=True) for c in x_ref.detach().split(b)]).mean(0)
    torch.testing.assert_close(layer.running_mean, 0.2 * means)
    torch.testing.assert_close(layer.running_var, 0.8 + 0.2 * vars_)


def test_per_worker_batch_1_on_images_normalizes_each_example_over_h_w():
    layer = BatchNorm2d(3, per_worker_batch=1).double()
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.instance_norm(x, eps=layer.eps))


def test_moving_average_norm_normalizes_with_previous_averages_and_no_stat_gradient():
    alpha = 0.1
    layer = MovingAverageNorm2d(2, momentum=alpha, per_worker_batch=2, init_from_batch=False).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0]))
        layer.running_std.copy_(torch.tensor([2.0, 0.5]))
        layer.weight.copy_(torch.tensor([1.5, 0.7]))
    mu, sigma = layer.running_mean.clone(), layer.running_std.clone()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    torch.testing.assert_close(y, v(layer.weight.detach()) * (x.detach() - v(mu)) / v(sigma))
    y.sum().backward()
    # gradient is gamma / sigma everywhere: nothing flows through batch statistics
    torch.testing.assert_close(x.grad, (v(layer.weight.detach()) / v(sigma)).expand_as(x))
    groups = x.detach().split(2)
    mu_b = torch.stack([c.mean((0, 2, 3)) for c in groups]).mean(0)
    sigma_b = torch.stack([torch.sqrt(c.var((0, 2, 3), unbiased=False) + layer.eps) for c in groups]).mean(0)
    torch.testing.assert_close(layer.running_mean, mu + alpha * (mu_b - mu))
    torch.testing.assert_close(layer.running_std, sigma + alpha * (sigma_b - sigma))


def test_moving_average_norm_starts_its_averages_at_the_first_batch():
    """Step 0 normalizes with the first batch's statistics (mean over worker groups,
    sigma = sqrt(var + eps)), not with 0 / 1; step 1 with the averages it left."""
    layer = MovingAverageNorm2d(2, momentum=0.1, per_worker_batch=2, affine=False).double()
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64) * 5 + 3
    groups = x.split(2)
    mu_b = torch.stack([c.mean((0, 2, 3)) for c in groups]).mean(0)
    sigma_b = torch.stack([torch.sqrt(c.var((0, 2, 3), unbiased=False) + layer.eps) for c in groups]).mean(0)
    torch.testing.assert_close(layer(x), (x - v(mu_b)) / v(sigma_b))
    torch.testing.assert_close(layer.running_mean, mu_b)  # lerp of the batch towards itself
    torch.testing.assert_close(layer.running_std, sigma_b)
    x2 = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x2), (x2 - v(mu_b)) / v(sigma_b))  # no re-initialization


def test_moving_average_norm_swapped_into_a_pretrained_model_keeps_its_statistics():
    from brn_repro.norm import build_norm, swap_norm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([1.0, 2.0]))
    swap_norm(model, build_norm("moving_average"))
    model(torch.randn(4, 1, 3, 3))
    assert not model[1].init_from_batch
    assert model[1].running_mean[1] > 1.9  # moved by one update at alpha 0.01, not reset


def test_batch_not_divisible_by_per_worker_batch_names_both_numbers():
    for layer in (BatchRenorm2d(3, per_worker_batch=4), BatchNorm2d(3, per_worker_batch=4),
                  MovingAverageNorm2d(3, per_worker_batch=4)):
        with pytest.raises(ValueError, match=r"per_worker_batch=4 .* batch of 10"):
            layer(torch.randn(10, 3, 2, 2))


def test_per_worker_batch_1_on_2d_input_is_a_clear_error():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchRenorm1d(3, per_worker_batch=1)(torch.randn(4, 3))


def test_groups_run_as_one_vectorized_call(monkeypatch):
    # One statistics call per layer, however many groups: no Python loop over groups.
    from brn_repro.norm import _grouped

    calls = []
    original = _grouped.batch_stats
    monkeypatch.setattr(_grouped, "batch_stats", lambda x: calls.append(x.shape) or original(x))
    BatchRenorm2d(3, per_worker_batch=2)(torch.randn(64, 3, 4, 4))
    assert calls == [(2, 32 * 3, 4, 4)]


@pytest.mark.parametrize("name", ["bn", "brn", "moving_average"])
@pytest.mark.parametrize("b", [1, 2])
def test_grouped_output_takes_inplace_relu_and_trains(name, b):
    from brn_repro.norm import build_norm

    layer = build_norm(name, per_worker_batch=b)(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    y = torch.relu_(layer(x))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
