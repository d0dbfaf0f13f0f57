"""The norm table is the one home of what the harness knows about a norm: a throwaway
norm, defined here (a layer, a table entry, a config file), is built, validated, named
and averaged across processes without touching any other module; and the table says
what the lists it replaced said, so no norm changed its per_worker_batch, run identity,
report row or all-reduced buffers."""

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from brn_repro import config as config_module
from brn_repro import distributed, evaluate, records
from brn_repro.analysis import report
from brn_repro.config import ConfigError, norm_options, resolve, validate
from brn_repro.norm import NORM_NAMES, NormSpec, build_norm, norm_spec, register_norm
from brn_repro.norm.registry import TABLE, batch_statistics_layer, moving_statistics
from brn_repro.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]


class RmsNorm(nn.Module):
    """A throwaway norm: x / the moving RMS of its batches (per channel)."""

    def __init__(self, num_features: int, eps: float = 1e-5, per_worker_batch: int | None = None):
        super().__init__()
        self.eps, self.per_worker_batch = eps, per_worker_batch
        self.register_buffer("running_ms", torch.ones(num_features))  # a moving statistic
        self.register_buffer("calls", torch.zeros(()))  # not one: each process counts its own

    def forward(self, x):
        if self.training:
            self.running_ms.lerp_(x.detach().square().mean((0, 2, 3)), 0.1)
        return x / (self.running_ms + self.eps).sqrt().view(1, -1, 1, 1)


class ExampleRmsNorm(nn.Module):
    """A throwaway split-blind norm: each example divided by its own RMS."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x / (x.square().mean((1, 2, 3), keepdim=True) + self.eps).sqrt()


def rms_spec(name: str, batch_statistics: bool) -> NormSpec:
    """``rms`` (RmsNorm, per worker) or ``rms_blind`` (ExampleRmsNorm)."""
    if not batch_statistics:
        return NormSpec(name, lambda options, dim: partial(ExampleRmsNorm, **options), frozenset({"eps"}),
                        "x / its own RMS (a test's throwaway)")
    return NormSpec(name, lambda options, dim: partial(RmsNorm, **options), frozenset({"eps", "per_worker_batch"}),
                    "x / moving RMS (a test's throwaway)", batch_statistics=True,
                    moving_statistics=("running_ms",), layers=(RmsNorm,))


@pytest.fixture
def throwaway_norms(tmp_path):
    """Two entries (one per batch, one split-blind) and their conf/norm files in a
    search path of their own: nothing in the repository is touched."""
    specs = [rms_spec("rms", True), rms_spec("rms_blind", False)]
    (tmp_path / "norm").mkdir()
    for spec in specs:
        (tmp_path / "norm" / f"{spec.name}.yaml").write_text(f"name: {spec.name}\neps: 1.0e-3\n")
    yield tmp_path
    for spec in specs:
        TABLE.pop(spec.name, None)


def compose_config(search_path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{search_path}]", "profile=quick",
                                           *overrides])
    return resolve(cfg)


def test_a_norm_added_as_one_entry_is_built_checked_named_and_averaged(throwaway_norms):
    split = ["data.global_batch=64", "data.per_worker_batch=8", "data.workers=8"]
    config = compose_config(throwaway_norms, "norm=rms", *split)
    with pytest.raises(ConfigError, match="norm.name='rms' is not a normalization"):
        validate(config)  # before its entry: unknown
    for name in ("rms", "rms_blind"):
        register_norm(rms_spec(name, name == "rms"))
    validate(config)
    layer = config_module.norm_factory(RunConfig.parse(config))(3)
    assert type(layer) is RmsNorm and layer.eps == 1e-3 and layer.per_worker_batch == 8
    with pytest.raises(ValueError, match=r"norm.affine is not an option of norm=rms; it takes \['eps', "):
        build_norm("rms", affine=True)
    with pytest.raises(ValueError, match="already in the table"):
        register_norm(rms_spec("rms", True))
    with pytest.raises(ValueError, match="rms_again: its layers RmsNorm are norm=rms's"):
        register_norm(NormSpec("rms_again", rms_spec("rms", True).build, frozenset(), "", layers=(RmsNorm,)))

    # run identity: a batch-statistics norm keeps its split, a split-blind one only the global batch
    other_split = ["data.global_batch=64", "data.per_worker_batch=16", "data.workers=4"]
    names = {(norm, tuple(s)): records.run_dir_name(compose_config(throwaway_norms, f"norm={norm}", *s))
             for norm in ("rms", "rms_blind") for s in (split, other_split)}
    assert names[("rms", tuple(split))].startswith("rms-pwb8x8-iid-s0-")
    assert names[("rms", tuple(split))] != names[("rms", tuple(other_split))]
    assert names[("rms_blind", tuple(split))].startswith("rms_blind-gb64-iid-s0-")
    assert names[("rms_blind", tuple(split))] == names[("rms_blind", tuple(other_split))]
    assert "per_worker_batch" not in norm_options(RunConfig.parse(compose_config(throwaway_norms, "norm=rms_blind")))

    # across processes: its moving statistic is averaged, its counter is not
    model = nn.Sequential(nn.Conv2d(1, 3, 1), build_norm("rms")(3), nn.BatchNorm2d(3))
    averaged = distributed.MovingStatistics(model, distributed.Context()).buffers
    assert [id(b) for b in averaged] == [id(model[1].running_ms), id(model[2].running_mean),
                                         id(model[2].running_var)]
    # the evaluation probe replaces it with a minibatch-statistics norm
    assert batch_statistics_layer(model[1]) and not batch_statistics_layer(build_norm("rms_blind")(3))


# What the modules held before the table (config.BATCH_NORMS, records.SPLIT_BLIND_NORMS,
# report.LATER_NORMS, the factories' conv attributes): the table must say the same.
OLD_BATCH_NORMS = {"bn", "brn", "moving_average", "mabn"}
OLD_SPLIT_BLIND = {"gn", "ln", "in", "none", "frn", "evonorm_s0", "gn_ws"}
OLD_LATER = ("bn", "brn", "gn", "mabn", "frn", "evonorm_s0", "gn_ws")
OLD_CONV = {"mabn": "centered", "gn_ws": "standardized"}
OLD_STAT_BUFFERS = ("running_mean", "running_var", "running_std")


def test_table_says_what_the_old_lists_said():
    assert NORM_NAMES == ("bn", "brn", "moving_average", "gn", "ln", "in", "syncbn", "none",
                          "mabn", "frn", "evonorm_s0", "gn_ws")
    assert {n for n in NORM_NAMES if norm_spec(n).per_worker} == OLD_BATCH_NORMS
    assert {n for n in NORM_NAMES if norm_spec(n).split_blind} == OLD_SPLIT_BLIND
    assert not norm_spec("syncbn").per_worker and not norm_spec("syncbn").split_blind
    assert report.LATER_NORMS == OLD_LATER
    assert {n: norm_spec(n).conv for n in NORM_NAMES if norm_spec(n).conv} == OLD_CONV
    for name in NORM_NAMES:
        assert getattr(build_norm(name), "conv", None) == OLD_CONV.get(name)


@pytest.mark.parametrize("name", NORM_NAMES)
@pytest.mark.parametrize("per_worker_batch", [None, 2])
def test_averaged_buffers_and_probe_layers_are_the_old_ones(name, per_worker_batch):
    """distributed's old name filter and evaluate's old hasattr check, on every norm's model."""
    options = {"per_worker_batch": per_worker_batch} if norm_spec(name).per_worker else {}
    model = nn.Sequential(nn.Conv2d(1, 4, 3), build_norm(name, **options)(4), nn.ReLU())
    old = [b for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in OLD_STAT_BUFFERS
           and b.is_floating_point()]
    assert [id(b) for b in moving_statistics(model)] == [id(b) for b in old]
    was_probed = isinstance(model[1], nn.modules.batchnorm._BatchNorm) or hasattr(model[1], "per_worker_batch")
    assert batch_statistics_layer(model[1]) == was_probed == norm_spec(name).batch_statistics
    probe = evaluate.minibatch_stats_probe(model)
    assert (type(probe[1]) is not type(model[1])) == was_probed
