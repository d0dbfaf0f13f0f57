import pytest
import torch
from torch import nn

from brn_repro.models import MODEL_NAMES, build_model, check_model_input
from brn_repro.norm import BatchRenorm2d, build_norm

SMALL = {"small_cnn": {"width": 4}, "resnet_cifar": {"depth": 8, "width": 0.5}}


@pytest.mark.parametrize("name", ["small_cnn", "resnet_cifar", "resnet18", "resnet50"])
def test_models_take_fashion_mnist_with_brn_and_keep_no_batchnorm(name):
    model = build_model(name, num_classes=10, in_channels=1, image_size=28,
                        norm_layer=build_norm("brn"), **SMALL.get(name, {})).train()
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(isinstance(m, BatchRenorm2d) for m in model.modules()) == convs


def test_none_norm_builds_a_model_without_norm_layers():
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28,
                        norm_layer=build_norm("none"), width=4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm | BatchRenorm2d) for m in model.modules())
    assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()


def test_inception_v3_refuses_small_images_in_one_line_and_takes_75():
    with pytest.raises(ValueError) as err:
        check_model_input("inception_v3", image_size=28, in_channels=1, dataset="fashion_mnist")
    assert "inception_v3" in str(err.value) and "28x28" in str(err.value) and "\n" not in str(err.value)
    model = build_model("inception_v3", num_classes=5, in_channels=3, image_size=75,
                        norm_layer=build_norm("brn"))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model.train()(torch.randn(2, 3, 75, 75)).shape == (2, 5)


def test_unknown_model_and_option_are_named():
    with pytest.raises(ValueError, match="model='vgg'.*small_cnn"):
        build_model("vgg", num_classes=10, in_channels=1, image_size=28, norm_layer=build_norm("bn"))
    with pytest.raises(ValueError, match="model.depth is not an option of model=small_cnn"):
        check_model_input("small_cnn", image_size=28, in_channels=1, depth=20)
    assert set(MODEL_NAMES) == {"small_cnn", "resnet_cifar", "resnet18", "resnet50", "inception_v3"}


def test_small_cnn_trains():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28,
                        norm_layer=build_norm("bn"), width=8)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
