"""1d / 2d / 3d layers and ``convert_batchnorm``: any model's BatchNorm1d/2d/3d and
SyncBatchNorm become the matching BRN (moving-average, per-worker BN) layer, with
running statistics, affine parameters, device and dtype carried over."""

import pytest
import torch
import torchvision
from torch import nn

from brn_repro.norm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    MovingAverageNorm1d,
    MovingAverageNorm2d,
    MovingAverageNorm3d,
    SyncBatchNorm,
    build_norm,
    convert_batchnorm,
    swap_norm,
)

FAMILIES = {
    "brn": (BatchRenorm1d, BatchRenorm2d, BatchRenorm3d),
    "bn": (BatchNorm1d, BatchNorm2d, BatchNorm3d),
    "moving_average": (MovingAverageNorm1d, MovingAverageNorm2d, MovingAverageNorm3d),
}


def _mixed_model() -> nn.Module:
    """A 3d, a 2d and a 1d batchnorm in one model."""
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Flatten(2), nn.Unflatten(2, (4, 16)),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3),
    )


def _randomize_statistics(model: nn.Module) -> None:
    """As a trained model's: affine parameters and running statistics away from 1 / 0."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("norm", list(FAMILIES))
def test_each_batchnorm_becomes_the_layer_of_its_dimension(norm):
    model = _mixed_model()
    _randomize_statistics(model)
    x = torch.randn(4, 2, 4, 4, 4)
    want = model.eval()(x)
    convert_batchnorm(model, norm, **({"per_worker_batch": 2} if norm != "moving_average" else {}))
    assert [type(m) for m in (model[1], model[6], model[11])] == list(reversed(FAMILIES[norm]))
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) for m in model.modules())
    torch.testing.assert_close(model.eval()(x), want, atol=1e-5, rtol=1e-5)  # inference unchanged
    model.train()(x).sum().backward()  # and it trains: 5D, 4D and 2D input each to its layer


def test_batchnorm1d_model_trains_after_swap_norm_with_a_build_norm_factory():
    """The bug this fixes: swap_norm put BatchRenorm2d where a BatchNorm1d was
    (ValueError 'expects 4D input, got 2D')."""
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    swap_norm(model, build_norm("brn", r_max=2.0, d_max=1.0))
    assert type(model[1]) is BatchRenorm1d and model[1].r_max(0) == 2.0  # the factory's options kept
    model.train()(torch.randn(6, 5)).sum().backward()


def test_torchvision_resnet18_eval_output_unchanged_and_trains():
    model = torchvision.models.resnet18(num_classes=10)
    _randomize_statistics(model)
    x = torch.randn(2, 3, 64, 64)
    want = model.eval()(x)
    assert BatchRenorm2d.convert(model, momentum=0.05) is model
    layers = [m for m in model.modules() if isinstance(m, BatchRenorm2d)]
    assert len(layers) == 20 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.momentum(0) == 0.05 and m.eps == 1e-5 for m in layers)
    torch.testing.assert_close(model.eval()(x), want, atol=1e-5, rtol=1e-5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()(x).logsumexp(1).sum().backward()
    opt.step()
    assert all(int(m.step) == 1 for m in layers)


def test_resnet18_takes_the_class_as_norm_layer():
    model = torchvision.models.resnet18(num_classes=10, norm_layer=BatchRenorm2d)
    assert sum(isinstance(m, BatchRenorm2d) for m in model.modules()) == 20
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()


def test_statistics_parameters_eps_and_affine_are_carried():
    bn = nn.BatchNorm1d(3, eps=1e-3, affine=False)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.running_var.copy_(torch.tensor([4.0, 9.0, 16.0]))
    model = convert_batchnorm(nn.Sequential(nn.Linear(2, 3), bn), "brn")
    layer = model[1]
    assert type(layer) is BatchRenorm1d and layer.eps == 1e-3 and layer.weight is None
    torch.testing.assert_close(layer.running_mean, torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(layer.running_std, (torch.tensor([4.0, 9.0, 16.0]) + 1e-3).sqrt())
    # the caller's options win over the batchnorm's
    assert convert_batchnorm(nn.Sequential(nn.BatchNorm2d(3, eps=1e-3)), "brn", eps=1e-4)[0].eps == 1e-4
    # the per-worker BN keeps every option of the batchnorm
    grouped = convert_batchnorm(nn.Sequential(nn.BatchNorm2d(3, momentum=None)), "bn", per_worker_batch=2)[0]
    assert type(grouped) is BatchNorm2d and grouped.momentum is None and grouped.per_worker_batch == 2


def test_dtype_and_device_are_carried():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    convert_batchnorm(model, "moving_average")
    layer = model[1]
    assert type(layer) is MovingAverageNorm2d
    assert layer.weight.dtype == layer.running_std.dtype == torch.float64 and layer.step.dtype == torch.long
    assert layer.weight.device == model[0].weight.device
    model.train()(torch.randn(2, 3, 6, 6, dtype=torch.float64)).sum().backward()


def test_syncbatchnorm_becomes_the_sync_dim_layer():
    model = nn.SyncBatchNorm.convert_sync_batchnorm(torchvision.models.resnet18(num_classes=10))
    model.layer1[0].bn1 = SyncBatchNorm(64)  # the harness's own SyncBatchNorm as well
    assert sum(isinstance(m, nn.SyncBatchNorm | SyncBatchNorm) for m in model.modules()) == 20
    convert_batchnorm(model, "brn", per_worker_batch=1)
    assert sum(type(m) is BatchRenorm2d for m in model.modules()) == 20
    mlp = convert_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.SyncBatchNorm(4)), "bn", sync_dim=1)
    assert type(mlp[1]) is BatchNorm1d
    mlp.train()(torch.randn(5, 3)).sum().backward()


def test_bad_conversions_say_why():
    with pytest.raises(ValueError, match="convert_batchnorm takes one of"):
        convert_batchnorm(nn.Sequential(nn.BatchNorm2d(2)), "gn")
    with pytest.raises(ValueError, match="sync_dim"):
        convert_batchnorm(nn.Sequential(nn.BatchNorm2d(2)), "brn", sync_dim=4)
    with pytest.raises(ValueError, match="norm=mabn is for .N, C, H, W. feature maps, not dim=1"):
        swap_norm(nn.Sequential(nn.BatchNorm1d(2)), build_norm("mabn"))


@pytest.mark.parametrize("norm", list(FAMILIES))
def test_3d_layers_equal_their_2d_layer_on_flattened_depth(norm):
    """Same semantics in every dimension: (N, C, D, H, W) normalizes over N, D, H, W as
    the 2d layer does over N, H, W of (N, C, D*H, W) -- per-worker groups included."""
    options = {"per_worker_batch": 2} if norm != "moving_average" else {}
    if norm == "brn":
        options.update(r_max=1.2, d_max=0.2, r_max_end_step=None, d_max_end_step=None)
    layer3, layer2 = (FAMILIES[norm][i](3, momentum=0.2, **options).double() for i in (2, 1))
    for step in range(3):
        x = torch.randn(4, 3, 2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(step)) * 2 + 1
        x3, x2 = x.clone().requires_grad_(), x.reshape(4, 3, 6, 5).clone().requires_grad_()
        y3, y2 = layer3(x3), layer2(x2)
        torch.testing.assert_close(y3.reshape(y2.shape), y2, atol=1e-12, rtol=1e-12)
        (y3.reshape(y2.shape) * y2.detach()).sum().backward()
        (y2 * y2.detach()).sum().backward()
        torch.testing.assert_close(x3.grad.reshape(x2.shape), x2.grad, atol=1e-12, rtol=1e-12)
    for b3, b2 in zip(layer3.buffers(), layer2.buffers(), strict=True):
        torch.testing.assert_close(b3, b2, atol=1e-12, rtol=1e-12)


def test_for_dim_and_input_checks():
    assert BatchRenorm2d.for_dim(3) is BatchRenorm3d and BatchRenorm3d.for_dim(1) is BatchRenorm1d
    assert MovingAverageNorm1d.for_dim(3) is MovingAverageNorm3d and BatchNorm2d.for_dim(3) is BatchNorm3d
    with pytest.raises(ValueError, match="expects 5D input"):
        BatchRenorm3d(3)(torch.randn(4, 3, 5, 5))
    with pytest.raises(ValueError, match="no 4d layer"):
        BatchRenorm2d.for_dim(4)
    assert type(build_norm("brn", dim=3)(4)) is BatchRenorm3d
    assert type(build_norm("in").for_dim(1)(4)) is nn.InstanceNorm1d
