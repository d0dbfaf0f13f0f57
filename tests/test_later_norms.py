"""The post-2017 answers (MABN, FRN, EvoNorm-S0, GN + WS): every name builds, swaps
into torchvision models with its convolutions, trains and evaluates."""

import pytest
import timm.layers
import torch
import torch.nn.functional as F
import torchvision
from test_train import make_config
from torch import nn

from brn_repro.models import build_model
from brn_repro.norm import CenteredConv2d, MABN2d, build_norm, swap_norm
from brn_repro.records import RunRecord
from brn_repro.train import run

LATER = ("mabn", "frn", "evonorm_s0", "gn_ws")
LAYER = {"mabn": MABN2d, "frn": timm.layers.FilterResponseNormTlu2d,
         "evonorm_s0": timm.layers.EvoNorm2dS0, "gn_ws": nn.GroupNorm}
CONV = {"mabn": CenteredConv2d, "gn_ws": timm.layers.StdConv2d, "frn": nn.Conv2d, "evonorm_s0": nn.Conv2d}


@pytest.mark.parametrize("name", LATER)
def test_swap_into_resnet18_leaves_no_batchnorm_and_pairs_the_convolutions(name):
    model = torchvision.models.resnet18(num_classes=10)
    convs = sum(type(m) is nn.Conv2d for m in model.modules())
    swap_norm(model, build_norm(name))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(type(m) is LAYER[name] for m in model.modules()) == 20
    assert sum(type(m) is CONV[name] for m in model.modules()) == convs
    out = model.train()(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert torch.isfinite(out).all() and model.conv1.weight.grad is not None


@pytest.mark.parametrize("name", LATER)
def test_each_later_norm_trains_and_evaluates(name):
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=4, in_channels=1, image_size=12,
                        norm_layer=build_norm(name), width=8)
    x = torch.randn(16, 1, 12, 12)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :6].mean((1, 2, 3)) > 0).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]  # it learns
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x[:4])
    # inference of one example does not depend on the rest of the batch (MABN: moving stats)
    torch.testing.assert_close(a[:4], b, rtol=1e-4, atol=1e-5)


def test_gn_ws_standardizes_and_mabn_centres_the_weights():
    x = torch.randn(2, 1, 8, 8)
    for name, check in (("gn_ws", "std"), ("mabn", "mean")):
        model = build_model("small_cnn", num_classes=3, in_channels=1, image_size=8,
                            norm_layer=build_norm(name), width=4)
        conv = model.features[3]
        w = conv.weight.detach()
        if check == "std":
            ws = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), unbiased=False, keepdim=True)
                                                        + conv.eps).sqrt()
        else:
            ws = w - w.mean((1, 2, 3), keepdim=True)
        inner = model.features[:3](x)
        torch.testing.assert_close(conv(inner), F.conv2d(inner, ws, None, conv.stride, conv.padding),
                                   rtol=1e-4, atol=1e-5)


def test_runner_trains_mabn_with_per_worker_groups_and_frn(tmp_path, tiny_fashion_mnist):
    mabn = make_config(tmp_path, tiny_fashion_mnist, "norm=mabn", "data.per_worker_batch=2",
                       "data.workers=8", "train.steps=40", "recipe.schedule.mabn_warmup_iters=5",
                       "recipe.schedule.mabn_r_warmup=20")
    summary = run(mabn)
    assert summary["status"] == "completed" and summary["test_acc"] > 40
    state = RunRecord(tmp_path, mabn).load_checkpoint()["model"]
    assert state["features.1.buffer_x2"].shape == (16, 8 * 8)  # 8 workers x 8 channels, SMA of 16
    frn = make_config(tmp_path, tiny_fashion_mnist, "norm=frn", "train.steps=40")
    assert run(frn)["test_acc"] > 40
