"""Independent references for the tests: Algorithm 1 of Ioffe (2017) written with
plain autograd ops, and the paper's closed-form backward (section 3)."""

from __future__ import annotations

import torch


def reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


def brn_reference(x, gamma, beta, mu, sigma, r_max, d_max, eps):
    """y = gamma * ((x - mu_B) / sigma_B * r + d) + beta, r and d stop-gradient."""
    dims = reduce_dims(x)
    shape = [1, -1] + [1] * (x.dim() - 2)
    mu_b = x.mean(dims)
    sigma_b = torch.sqrt(eps + ((x - mu_b.view(shape)) ** 2).mean(dims))
    r = (sigma_b / sigma).detach().clamp(1 / r_max, r_max)
    d = ((mu_b - mu) / sigma).detach().clamp(-d_max, d_max)
    x_hat = (x - mu_b.view(shape)) / sigma_b.view(shape) * r.view(shape) + d.view(shape)
    return gamma.view(shape) * x_hat + beta.view(shape), mu_b.detach(), sigma_b.detach()


def brn_paper_backward(x, grad_y, gamma, mu, sigma, r_max, d_max, eps):
    """The paper's backward formulas, per channel over m values:
    dl/dxhat = dl/dy * gamma
    dl/dsigma_B = sum dl/dxhat (x - mu_B) (-r / sigma_B^2)
    dl/dmu_B = sum dl/dxhat (-r / sigma_B)
    dl/dx = dl/dxhat r / sigma_B + dl/dsigma_B (x - mu_B) / (m sigma_B) + dl/dmu_B / m
    dl/dgamma = sum dl/dy xhat ; dl/dbeta = sum dl/dy
    """
    dims = reduce_dims(x)
    shape = [1, -1] + [1] * (x.dim() - 2)
    m = x.numel() // x.shape[1]
    mu_b = x.mean(dims)
    sigma_b = torch.sqrt(eps + ((x - mu_b.view(shape)) ** 2).mean(dims))
    r = (sigma_b / sigma).clamp(1 / r_max, r_max)
    d = ((mu_b - mu) / sigma).clamp(-d_max, d_max)
    v = lambda t: t.view(shape)  # noqa: E731
    centered = x - v(mu_b)
    x_hat = centered / v(sigma_b) * v(r) + v(d)
    g_xhat = grad_y * v(gamma)
    g_sigma = (g_xhat * centered * v(-r / sigma_b**2)).sum(dims)
    g_mu = (g_xhat * v(-r / sigma_b)).sum(dims)
    g_x = g_xhat * v(r / sigma_b) + v(g_sigma) * centered / (m * v(sigma_b)) + v(g_mu) / m
    return g_x, (grad_y * x_hat).sum(dims), grad_y.sum(dims)
