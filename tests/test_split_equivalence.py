"""However a global batch is split (groups in one call, or one call per worker as on
one process per worker), every batch-statistics norm computes the same numbers, within
float32 tolerance of a float64 reference, on real Fashion-MNIST batches (issue 9; the
finding is in ``brn_repro.numerics``)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from brn_repro.config import norm_factory
from brn_repro.data import TrainingData
from brn_repro.models import build_model
from brn_repro.norm._grouped import batch_stats
from brn_repro.numerics import CHECK_OVERRIDES, layer_cases, split_errors
from brn_repro.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
PER_WORKER, WORKERS = 8, 2

needs_debian = pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").exists(),
    reason="real Fashion-MNIST not installed (Debian's dataset-fashion-mnist; `make data` installs it)",
)


def _config(norm: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"norm={norm}", *CHECK_OVERRIDES[norm], f"data.per_worker_batch={PER_WORKER}",
            f"data.workers={WORKERS}", f"dataset.root={DEBIAN}", "dataset.download=false",
            "logger=none"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def real_batches():
    """The runner's first two global batches of seed 0 (16 Fashion-MNIST images each)."""
    data = TrainingData(RunConfig.parse(_config("bn")))
    return [data.train_batch() for _ in range(2)]


def _model(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=10, in_channels=1, image_size=28,
                       norm_layer=norm_factory(RunConfig.parse(config)), width=config["model"]["width"])


# float32 rounding gives ~1e-7 for outputs and statistics; torch's batchnorm backward
# kernel sums channels-last gradients row by row (up to 3e-6 here).
def _tolerance(entry: str) -> float:
    return 1e-10 if entry.startswith("float64") else 2e-5 if "grad" in entry else 2e-6


@needs_debian
@pytest.mark.parametrize("norm", ["bn", "brn", "moving_average", "mabn"])
def test_every_split_matches_float64_on_real_batches(real_batches, norm):
    cases = layer_cases(_model(_config(norm)), real_batches[0], warm=real_batches[1])
    assert len(cases) == 5
    for index, (layer, x, upstream) in enumerate(cases):
        for entry, error in split_errors(layer, x, upstream, WORKERS).items():
            assert error < _tolerance(entry), f"{norm} layer {index}: {entry} is {error:.1e} off float64"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_batch_statistics_are_float32_accurate_in_every_layout(layout):
    """torch.batch_norm_update_stats is off by 2e-5 sigma here in channels-last."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(128, 16, 28, 28, generator=generator) * 0.5 + 1.0).contiguous(memory_format=layout)
    mean, var = batch_stats(x)
    x64 = x.double()
    true_mean, true_var = x64.mean((0, 2, 3)), x64.var((0, 2, 3), unbiased=False)
    assert ((mean.double() - true_mean).abs() / true_var.sqrt()).max() < 2e-6
    assert ((var.double() - true_var).abs() / true_var).max() < 2e-6
