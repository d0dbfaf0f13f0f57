"""MABN (Yan et al. 2020) against a plain, loop-by-loop implementation of its
equations as the reference code states them (megvii-model/MABN, MABN.py)."""

import pytest
import torch
import torch.nn.functional as F

from brn_repro.norm.mabn import CenteredConv2d, MABN2d

EPS = 1e-5


class PlainMABN:
    """Workers ``g`` with their own E[x^2] / E[g z] histories and a shared running_var."""

    def __init__(self, channels, workers, size, warmup, r_warmup, r_max, momentum):
        self.size, self.warmup, self.r_warmup, self.r_max, self.m = size, warmup, r_warmup, r_max, momentum
        self.hist_x2 = [[] for _ in range(workers)]
        self.hist_gz = [[] for _ in range(workers)]
        self.running_var = torch.ones(channels)
        self.iteration = 0

    def step(self, xs, weight, bias, grads):
        """One iteration: per-worker inputs and upstream gradients -> outputs, input
        gradients, and the weight / bias gradients summed over workers."""
        self.iteration += 1
        it = self.iteration
        outs, gxs, gw, gb, variances, saved = [], [], 0, 0, [], []
        for k, x in enumerate(xs):
            x2 = (x * x).mean(dim=(0, 2, 3))
            self.hist_x2[k] = (self.hist_x2[k] + [x2])[-self.size:]
            sma = it > self.size and it >= self.warmup
            var = torch.stack(self.hist_x2[k]).mean(0) if sma else x2
            z = x / (var + EPS).sqrt().view(1, -1, 1, 1)
            r = (var + EPS).sqrt() / (self.running_var + EPS).sqrt()
            r = torch.ones_like(r) if it <= self.r_warmup else r.clamp(1 / self.r_max, self.r_max)
            y = r.view(1, -1, 1, 1) * z
            outs.append(weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1))
            variances.append(var)
            saved.append((z, var, r, y, sma))
        self.running_var = self.m * self.running_var + (1 - self.m) * torch.stack(variances).mean(0)
        for k, (grad, (z, var, r, y, sma)) in enumerate(zip(grads, saved, strict=True)):
            g = grad * weight.view(1, -1, 1, 1) * r.view(1, -1, 1, 1)
            gz = (g * z).mean(dim=(0, 2, 3))
            self.hist_gz[k] = (self.hist_gz[k] + [gz])[-self.size:]
            mean_gz = torch.stack(self.hist_gz[k]).mean(0) if sma else gz
            gxs.append((g - z * mean_gz.view(1, -1, 1, 1)) / (var + EPS).sqrt().view(1, -1, 1, 1))
            gw = gw + (grad * y).sum(dim=(0, 2, 3))
            gb = gb + grad.sum(dim=(0, 2, 3))
        return torch.cat(outs), torch.cat(gxs), gw, gb


@pytest.mark.parametrize("per_worker_batch,batch", [(None, 4), (2, 6), (1, 3)])
def test_mabn_matches_its_equations_through_warmup_sma_and_clipping(per_worker_batch, batch):
    torch.manual_seed(0)
    channels, size = 3, 3
    layer = MABN2d(channels, momentum=0.7, buffer_size=size, warmup_iters=2, r_warmup=5, r_max=1.2,
                   per_worker_batch=per_worker_batch).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    workers = 1 if per_worker_batch is None else batch // per_worker_batch
    plain = PlainMABN(channels, workers, size, warmup=2, r_warmup=5, r_max=1.2, momentum=0.7)
    plain.running_var = plain.running_var.double()
    clipped = 0
    for _ in range(9):  # warm-up (current batch), then SMA; r = 1, then clipped r
        # the scale drifts, so r really leaves [1/1.2, 1.2] after its warm-up
        x = (torch.randn(batch, channels, 3, 3, dtype=torch.double) * (1 + 0.3 * plain.iteration) + 0.2)
        upstream = torch.randn_like(x)
        leaf = x.clone().requires_grad_()
        layer.weight.grad = layer.bias.grad = None
        out = layer(leaf)
        (out * upstream).sum().backward()
        chunk = batch // workers
        want_out, want_gx, want_gw, want_gb = plain.step(
            list(x.split(chunk)), layer.weight.detach(), layer.bias.detach(), list(upstream.split(chunk)))
        torch.testing.assert_close(out.detach(), want_out)
        torch.testing.assert_close(leaf.grad, want_gx)
        torch.testing.assert_close(layer.weight.grad, want_gw)
        torch.testing.assert_close(layer.bias.grad, want_gb)
        torch.testing.assert_close(layer.running_var, plain.running_var)
        if plain.iteration > 5:
            ratio = (out.detach() - layer.bias.view(1, -1, 1, 1)) / layer.weight.view(1, -1, 1, 1)
            clipped += int(not torch.allclose(ratio, x / x.square().mean((0, 2, 3), keepdim=True).sqrt(),
                                              atol=1e-3))
    assert clipped > 0  # the SMA / r path really differs from plain second-moment scaling


def test_mabn_backward_is_not_autograd_of_its_forward():
    """The point of MABN: its gradient uses moving averages; after the warm-up it
    differs from differentiating the forward (which would use the batch's E[g z])."""
    torch.manual_seed(1)
    layer = MABN2d(2, buffer_size=2, warmup_iters=1, r_warmup=100)
    for _ in range(4):
        x = torch.randn(4, 2, 3, 3, requires_grad=True) * (1 + torch.rand(1))
        x.retain_grad()
        layer(x).sum().backward()
    x2 = x.detach().square().mean((0, 2, 3), keepdim=True)
    hist = layer.buffer_x2.mean(0).view(1, -1, 1, 1)
    assert not torch.allclose(x2, hist)  # the SMA is not this batch's second moment


def test_mabn_inference_is_batchnorm_with_zero_mean():
    layer = MABN2d(3)
    with torch.no_grad():
        layer.running_var.copy_(torch.tensor([0.5, 2.0, 4.0]))
        layer.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    layer.eval()
    x = torch.randn(2, 3, 4, 4)
    expected = x / (layer.running_var + EPS).sqrt().view(1, -1, 1, 1) * layer.weight.view(1, -1, 1, 1) \
        + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_mabn_checkpoint_keeps_worker_histories(tmp_path):
    layer = MABN2d(2, per_worker_batch=2, buffer_size=4)
    for _ in range(3):
        layer(torch.randn(6, 2, 3, 3))
    assert layer.buffer_x2.shape == (4, 6)  # 3 workers x 2 channels
    torch.save(layer.state_dict(), tmp_path / "mabn.pt")
    fresh = MABN2d(2, per_worker_batch=2, buffer_size=4)
    fresh.load_state_dict(torch.load(tmp_path / "mabn.pt", weights_only=True))
    torch.testing.assert_close(fresh.buffer_x2, layer.buffer_x2)
    assert fresh._advance_step() == 3  # the schedule goes on from the saved step


def test_centered_conv_subtracts_each_filters_mean():
    torch.manual_seed(2)
    conv = CenteredConv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 5, 5)
    w = conv.weight.detach()
    expected = F.conv2d(x, w - w.mean(dim=(1, 2, 3), keepdim=True), padding=1)
    torch.testing.assert_close(conv(x), expected)
    conv(x).sum().backward()
    # the gradient through the centring sums to zero over each filter
    torch.testing.assert_close(conv.weight.grad.sum(dim=(1, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)


def test_mabn_rejects_bad_values():
    with pytest.raises(ValueError, match="momentum"):
        MABN2d(2, momentum=1.0)
    with pytest.raises(ValueError, match="buffer_size"):
        MABN2d(2, buffer_size=0)
    with pytest.raises(ValueError, match="r_max"):
        MABN2d(2, r_max=0.5)
