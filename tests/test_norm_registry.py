import pytest
import timm.layers
import torch
import torchvision
from torch import nn

from brn_repro.norm import (
    NORM_NAMES,
    BatchNorm2d,
    BatchRenorm2d,
    MABN2d,
    MovingAverageNorm2d,
    SyncBatchNorm,
    build_norm,
    norm_diagnostics,
    swap_norm,
)

EXPECTED = {
    "bn": nn.BatchNorm2d, "brn": BatchRenorm2d, "moving_average": MovingAverageNorm2d,
    "gn": nn.GroupNorm, "ln": nn.GroupNorm, "in": nn.InstanceNorm2d,
    "syncbn": SyncBatchNorm, "none": nn.Identity, "mabn": MABN2d,
    "frn": timm.layers.FilterResponseNormTlu2d, "evonorm_s0": timm.layers.EvoNorm2dS0,
    "gn_ws": nn.GroupNorm,
}


@pytest.mark.parametrize("name", NORM_NAMES)
def test_every_name_builds_a_working_layer(name):
    layer = build_norm(name)(16)
    assert type(layer) is EXPECTED[name]
    x = torch.randn(4, 16, 5, 5)
    y = layer(x)
    assert y.shape == x.shape
    if name in ("ln", "in", "gn", "frn", "evonorm_s0", "gn_ws"):
        # per-example normalizations: one example's output does not depend on another
        torch.testing.assert_close(layer(x[:1]), y[:1])


def test_norm_semantics_of_gn_ln_in():
    x = torch.randn(3, 16, 5, 5) * 4 + 2
    ln = build_norm("ln", affine=False)(16)(x)
    torch.testing.assert_close(ln.mean((1, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    gn = build_norm("gn", num_groups=32)(16)
    assert gn.num_groups == 16  # the largest count dividing the width
    inorm = build_norm("in", affine=False)(16)(x)
    torch.testing.assert_close(inorm.mean((2, 3)), torch.zeros(3, 16), atol=1e-5, rtol=0)


def test_syncbn_outside_distributed_equals_batchnorm():
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(build_norm("syncbn")(4)(x), nn.BatchNorm2d(4)(x))


def test_bn_with_groups_is_the_grouped_layer():
    assert type(build_norm("bn", per_worker_batch=4)(8)) is BatchNorm2d
    assert type(build_norm("bn", per_worker_batch=None)(8)) is nn.BatchNorm2d


@pytest.mark.parametrize("name,options,field", [
    ("brn", {"r_max": 0.5}, "r_max=0.5"),
    ("brn", {"d_max": -1.0}, "d_max=-1.0"),
    ("brn", {"momentum": 0.0}, "momentum=0.0"),
    ("moving_average", {"momentum": 1.5}, "momentum=1.5"),
    ("bn", {"momentum": -0.1}, "momentum=-0.1"),
    ("brn", {"eps": 0.0}, "eps=0.0"),
    ("gn", {"eps": -1e-5}, "eps=-1e-05"),
    ("brn", {"per_worker_batch": 0}, "per_worker_batch=0"),
    ("gn", {"r_max": 2.0}, "norm.r_max"),
    ("batchnorm", {}, "norm.name='batchnorm'"),
])
def test_bad_values_raise_value_error_naming_the_field(name, options, field):
    with pytest.raises(ValueError) as err:
        build_norm(name, **options)(8)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_swap_leaves_no_batchnorm_in_torchvision_resnet18():
    model = torchvision.models.resnet18(num_classes=10)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        model.bn1.weight.fill_(0.5)
        model.bn1.running_var.fill_(4.0)
    swap_norm(model, build_norm("brn", r_max=2.0, d_max=1.0))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, BatchRenorm2d) for m in model.modules()) == before == 20
    assert torch.all(model.bn1.weight == 0.5)  # affine parameters carried over
    torch.testing.assert_close(model.bn1.running_std, torch.full((64,), (4.0 + 1e-5) ** 0.5))
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    diag = norm_diagnostics(model)
    assert diag["norm/mean/r_max"] == 2.0 and 0.0 <= diag["norm/mean/r_clip_frac"] <= 1.0
    assert "norm/layer1.0.bn1/d_clip_frac" in diag


def test_torchvision_norm_layer_argument_takes_the_factory():
    model = torchvision.models.resnet18(num_classes=10, norm_layer=build_norm("brn"))
    assert sum(isinstance(m, BatchRenorm2d) for m in model.modules()) == 20


def test_diagnostics_count_clipped_r_and_d():
    layer = BatchRenorm2d(4, r_max=2.0, d_max=0.5, r_max_end_step=None, d_max_end_step=None)
    with torch.no_grad():
        layer.running_std.copy_(torch.tensor([0.1, 1.0, 1.0, 10.0]))  # r raw: ~10, 1, 1, 0.1
        layer.running_mean.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))
    x = torch.randn(64, 4, 8, 8)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), unbiased=False, keepdim=True)
    layer(x)
    diag = layer.diagnostics()
    assert diag["r_clip_frac"] == 0.5  # channels 0 and 3
    assert diag["d_clip_frac"] == 0.25  # channel 2: d raw = -3 -> clipped to -0.5
    assert abs(diag["d_abs_mean"] - 0.5 / 4) < 1e-4
    assert abs(diag["r_dev_mean"] - (1.0 + 0.5) / 4) < 1e-3  # |2 - 1| and |0.5 - 1|
