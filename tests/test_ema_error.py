"""The moving averages' error against population statistics (``moving_average_errors``),
checked against a hand computation from the layers' inputs, and its place in the
training run's metrics and the figures."""

import copy
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from test_train import make_config
from torch import Tensor, nn

from brn_repro.analysis import plots
from brn_repro.analysis.plots import ema_error_figure
from brn_repro.evaluate import moving_average_errors
from brn_repro.norm import BatchNorm2d, BatchRenorm2d, MABN2d, MovingAverageNorm1d
from brn_repro.records import RunRecord
from brn_repro.train import run

EPS = 1e-5


def make_model(bn: type[nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """Conv -> BN -> ReLU -> Conv -> BRN -> pool -> Linear -> moving-average norm (1d):
    every kind of layer the metric covers, 4D and 2D inputs; moving statistics set by
    hand, away from the population's."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), bn(4, eps=EPS), nn.ReLU(), nn.Conv2d(4, 5, 3), BatchRenorm2d(5, eps=EPS),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 6), MovingAverageNorm1d(6, eps=EPS),
    )
    with torch.no_grad():
        for layer in (model[1], model[4], model[8]):
            layer.running_mean.copy_(torch.randn(layer.num_features))
            std = 0.5 + torch.rand(layer.num_features)
            if hasattr(layer, "running_var"):
                layer.running_var.copy_(std.square())
            else:
                layer.running_std.copy_(std)
    return model


def make_batches(sizes: tuple[int, ...] = (5, 7, 3), seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(2.0 * torch.randn(n, 3, 9, 9, generator=generator) + 0.5, torch.zeros(n, dtype=torch.long))
            for n in sizes]


def layer_batches(model: nn.Sequential, batches) -> dict[int, list[Tensor]]:
    """The inputs of layers 1, 4 and 8 in eval mode, batch by batch, computed by
    running the Sequential's children one by one (no hooks)."""
    was_training = model.training
    model.eval()
    weight = model[0].weight
    layout = torch.contiguous_format if weight.is_contiguous() else torch.channels_last
    inputs: dict[int, list[Tensor]] = {1: [], 4: [], 8: []}
    with torch.no_grad():
        for x, _ in batches:
            x = x.contiguous(memory_format=layout)
            for i, child in enumerate(model):
                if i in inputs:
                    inputs[i].append(x)
                x = child(x)
    model.train(was_training)
    return inputs


def layer_inputs(model: nn.Sequential, batches) -> dict[int, Tensor]:
    """The inputs of layers 1, 4 and 8 in eval mode, all batches together."""
    return {i: torch.cat(xs) for i, xs in layer_batches(model, batches).items()}


def expected_errors(model: nn.Sequential, batches) -> dict[str, float]:
    """The definition, with plain torch ops: population mean and biased variance per
    channel in float64, sigma = sqrt(var + eps), channel means of the two errors."""
    out = {}
    for i, x in layer_inputs(model, batches).items():
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        mu = x.double().mean(dims)
        sigma = (x.double().var(dims, unbiased=False) + EPS).sqrt()
        layer = model[i]
        if hasattr(layer, "running_var"):
            sigma_ema = (layer.running_var.double() + EPS).sqrt()
        else:
            sigma_ema = layer.running_std.double()
        out[f"ema_error/{i}/mean"] = ((layer.running_mean.double() - mu).abs() / sigma).mean().item()
        out[f"ema_error/{i}/std"] = (sigma_ema / sigma - 1).abs().mean().item()
    out["ema_error/mean"] = sum(out[f"ema_error/{i}/mean"] for i in (1, 4, 8)) / 3
    out["ema_error/std"] = sum(out[f"ema_error/{i}/std"] for i in (1, 4, 8)) / 3
    return out


@pytest.mark.parametrize(("bn", "channels_last"), [(nn.BatchNorm2d, False), (BatchNorm2d, True)])
def test_errors_match_a_hand_computation(bn, channels_last):
    model = make_model(bn)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batches = make_batches()
    expected = expected_errors(model, batches)
    got = moving_average_errors(model, batches)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6, rel=1e-6), key
    # Set away from the population, so a wrong statistic could not pass as ~0.
    assert min(expected.values()) > 0.05


def test_shards_summed_by_all_reduce_equal_one_pass():
    """Two processes' shards: the sums add up before the errors are taken, so the
    result equals one pass over all the batches (not a mean of per-shard errors)."""
    model, first, second = make_model(), make_batches((5, 7), seed=1), make_batches((3, 8), seed=2)
    shard: list[Tensor] = []
    moving_average_errors(model, second, all_reduce=lambda t: shard.append(t.clone()))
    summed = moving_average_errors(model, first, all_reduce=lambda t: t.add_(shard[0]))
    whole = moving_average_errors(model, first + second)
    assert summed == pytest.approx(whole, abs=1e-9)
    assert moving_average_errors(model, first) != pytest.approx(whole, abs=1e-6)


def expected_noise(model: nn.Sequential, batches, group_size: int) -> dict[str, float]:
    """The batch noise by its definition, group by group with plain torch ops: each
    batch cut into consecutive groups of ``group_size`` (a smaller remainder left out),
    each group's mean and sigma_B = sqrt(biased var + eps) against the population of
    all the batches (the remainder included), means over groups and channels."""
    out = {}
    for i, xs in layer_batches(model, batches).items():
        dims = (0, 2, 3) if xs[0].dim() == 4 else (0,)
        population = torch.cat(xs).double()
        mu = population.mean(dims)
        sigma = (population.var(dims, unbiased=False) + EPS).sqrt()
        mean_errors, std_errors = [], []
        for x in xs:
            for start in range(0, x.shape[0] - group_size + 1, group_size):
                group = x[start:start + group_size].double()
                sigma_b = (group.var(dims, unbiased=False) + EPS).sqrt()
                mean_errors.append((group.mean(dims) - mu).abs() / sigma)
                std_errors.append((sigma_b / sigma - 1).abs())
        out[f"batch_noise/{i}/mean"] = torch.cat(mean_errors).mean().item()
        out[f"batch_noise/{i}/std"] = torch.cat(std_errors).mean().item()
    out["batch_noise/mean"] = sum(out[f"batch_noise/{i}/mean"] for i in (1, 4, 8)) / 3
    out["batch_noise/std"] = sum(out[f"batch_noise/{i}/std"] for i in (1, 4, 8)) / 3
    return out


@pytest.mark.parametrize(("bn", "channels_last"), [(nn.BatchNorm2d, False), (BatchNorm2d, True)])
@pytest.mark.parametrize("sizes", [(6, 6, 6), (5, 5, 5)])
def test_batch_noise_matches_a_hand_computation(bn, channels_last, sizes):
    """Groups of 2 out of batches of 6, and of 5: the fifth example of each batch is
    in no group but in the population, for the noise and for the moving averages' error."""
    model = make_model(bn)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batches = make_batches(sizes)
    expected = expected_errors(model, batches) | expected_noise(model, batches, 2)
    got = moving_average_errors(model, batches, group_size=2)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6, rel=1e-6), key
    assert min(v for k, v in expected.items() if k.startswith("batch_noise/")) > 0.01
    if sizes[0] % 2:  # the remainder changes the population, so leaving it out would show
        cut = [(x[:4], y[:4]) for x, y in batches]
        assert moving_average_errors(model, cut, group_size=2)["batch_noise/mean"] != pytest.approx(
            got["batch_noise/mean"], rel=1e-3)


def test_smaller_groups_are_noisier_and_groups_larger_than_the_batches_give_no_noise():
    model, batches = make_model(), make_batches((6, 6, 6))
    plain = moving_average_errors(model, batches)
    assert not any(k.startswith("batch_noise/") for k in plain)
    assert moving_average_errors(model, batches, group_size=None) == plain
    pairs, whole = (moving_average_errors(model, batches, group_size=g) for g in (2, 6))
    for kind in ("mean", "std"):
        assert pairs[f"batch_noise/{kind}"] > 1.2 * whole[f"batch_noise/{kind}"] > 0
    # No batch holds a group of 7: no noise, the moving averages' error unchanged.
    assert moving_average_errors(model, batches, group_size=7) == plain
    with pytest.raises(ValueError, match="group_size"):
        moving_average_errors(model, batches, group_size=0)


def run_shards(model: nn.Module, shards: list[list[tuple[Tensor, Tensor]]],
               group_size: int | None) -> tuple[list[dict[str, float]], list[int]]:
    """One thread per process, each with its own copy of the model and its shard of
    the batches; ``all_reduce`` sums in place across them as torch.distributed's does
    (every call a collective: the barrier breaks if the processes' calls differ)."""
    n = len(shards)
    barrier, slots, calls = threading.Barrier(n, timeout=60), [None] * n, [0] * n

    def process(rank: int) -> dict[str, float]:
        def all_reduce(t: Tensor) -> None:
            calls[rank] += 1
            slots[rank] = t.clone()
            barrier.wait()
            total = torch.stack(slots).sum(0)
            barrier.wait()  # all have read before any writes its next call's slot
            t.copy_(total)
        return moving_average_errors(copy.deepcopy(model), shards[rank], all_reduce, group_size=group_size)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(process, range(n))), calls


@pytest.mark.parametrize("second_sizes", [(3, 8), (1,)])
@pytest.mark.parametrize("group_size", [2, None])
def test_batch_noise_of_shards_equals_one_pass(second_sizes, group_size):
    """Each process takes its groups against the population of all shards, then the
    error sums and group counts add up: every process gets the one-pass result, also
    one whose shard held no group (batch of 1), and both make the same calls."""
    model, first, second = make_model(), make_batches((5, 7), seed=1), make_batches(second_sizes, seed=2)
    results, calls = run_shards(model, [first, second], group_size)
    whole = moving_average_errors(model, first + second, group_size=group_size)
    assert calls == [1 if group_size is None else 2] * 2
    assert ("batch_noise/mean" in whole) == (group_size is not None)
    for got in results:
        assert got == pytest.approx(whole, abs=1e-9)
    if group_size is not None:  # against its own shard's population the noise differs
        alone = moving_average_errors(model, first, group_size=group_size)
        assert alone["batch_noise/mean"] != pytest.approx(whole["batch_noise/mean"], abs=1e-6)


def test_moving_statistics_equal_to_the_population_give_zero():
    model, batches = make_model(), make_batches()
    # Layer by layer: each one's statistics change the next one's population.
    for i in (1, 4, 8):
        x = layer_inputs(model, batches)[i].double()
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        layer, var = model[i], x.var(dims, unbiased=False)
        layer.running_mean.copy_(x.mean(dims))
        if hasattr(layer, "running_var"):
            layer.running_var.copy_(var)
        else:
            layer.running_std.copy_((var + EPS).sqrt())
    got = moving_average_errors(model, batches)
    assert len(got) == 8
    assert max(got.values()) < 1e-6


def test_mabn_groupnorm_and_untracked_batchnorm_are_ignored():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 3), MABN2d(4),
                          nn.BatchNorm2d(4, track_running_stats=False))
    assert moving_average_errors(plain, make_batches()) == {}
    mixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 3), MABN2d(4),
                          nn.BatchNorm2d(4))
    assert set(moving_average_errors(mixed, make_batches())) == {
        "ema_error/mean", "ema_error/std", "ema_error/4/mean", "ema_error/4/std"}


def test_a_layer_the_forward_never_reaches_is_left_out():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.spare = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    got = moving_average_errors(Unused(), make_batches())
    assert set(got) == {"ema_error/mean", "ema_error/std", "ema_error/bn/mean", "ema_error/bn/std"}
    assert all(math.isfinite(v) for v in got.values())


@pytest.mark.parametrize("training", [True, False])
def test_training_flags_and_moving_statistics_are_restored(training):
    model = make_model().train(training)
    model[4].eval()  # a mixed model keeps its mix
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    moving_average_errors(model, make_batches())
    assert [m.training for m in model.modules()] == flags
    # Evaluated in eval mode: no moving statistic or step counter moved.
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_short_run_logs_the_error_in_every_evaluation(tmp_path, tiny_fashion_mnist):
    config = make_config(tmp_path, tiny_fashion_mnist, "norm=bn", "train.steps=20", "train.eval_every=10",
                         "train.checkpoint_every=20")
    run(config)
    rows = RunRecord(tmp_path, config).read_metrics()
    assert [r["step"] for r in rows] == [10, 20]
    for row in rows:
        layers = [k for k in row if k.startswith("ema_error/") and k.endswith("/mean") and k != "ema_error/mean"]
        assert layers, row
        assert 0.0 <= row["ema_error/mean"] < 10.0 and 0.0 <= row["ema_error/std"] < 10.0
        assert row["ema_error/mean"] == pytest.approx(sum(row[k] for k in layers) / len(layers))
        # The reference: groups of the per-worker batch (8) out of the 200 training examples.
        noise = [k.replace("ema_error/", "batch_noise/") for k in layers]
        assert set(noise) == {k for k in row if k.startswith("batch_noise/") and k.count("/") == 2
                              and k.endswith("/mean")}
        assert 0.0 < row["batch_noise/mean"] < 10.0 and 0.0 < row["batch_noise/std"] < 10.0
        assert row["batch_noise/mean"] == pytest.approx(sum(row[k] for k in noise) / len(noise))


def test_figure_draws_the_norms_with_moving_statistics(tmp_path):
    frame = pd.DataFrame({"run_dir": ["a", "b", "c"], "status": ["completed", "diverged", "completed"],
                          "diverged_step": [None, 20, None], "norm.name": ["brn", "brn", "gn"]})
    curves = pd.DataFrame({"run_dir": ["a", "a", "b", "c", "c"], "step": [10, 20, 10, 10, 20],
                           "ema_error/mean": [0.5, 0.1, 0.7, None, None],
                           "ema_error/std": [0.2, 0.05, 0.3, None, None]})
    path = ema_error_figure(frame, curves, ["norm.name"], tmp_path / "ema.png", "t")
    assert path == tmp_path / "ema.png" and path.stat().st_size > 5000
    assert ema_error_figure(frame, curves.drop(columns=["ema_error/std"]), ["norm.name"],
                            tmp_path / "none.png", "t") is None
    only_gn = curves[curves["run_dir"] == "c"]
    assert ema_error_figure(frame, only_gn, ["norm.name"], tmp_path / "gn.png", "t") is None


def test_figure_draws_the_batch_noise_dashed_in_each_conditions_colour(tmp_path, monkeypatch):
    frame = pd.DataFrame({"run_dir": ["a", "b", "c"], "status": ["completed"] * 3,
                          "diverged_step": [None] * 3, "norm.name": ["bn", "brn", "brn"]})
    curves = pd.DataFrame({"run_dir": ["a", "a", "b", "b", "c", "c"], "step": [10, 20] * 3,
                           "ema_error/mean": [0.5, 0.1, 0.7, 0.2, 0.6, 0.3],
                           "ema_error/std": [0.2, 0.05, 0.3, 0.1, 0.4, 0.2],
                           "batch_noise/mean": [0.3, 0.3, 0.4, 0.4, 0.6, 0.6],
                           "batch_noise/std": [0.1, 0.1, 0.2, 0.2, 0.4, 0.4]})
    seen: list[list[tuple]] = []
    save = plots._save

    def spy(fig, path):
        seen.extend([[(line.get_linestyle(), line.get_color(), list(line.get_xdata()), list(line.get_ydata()))
                      for line in ax.get_lines() if len(line.get_xdata())] for ax in fig.axes])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    assert ema_error_figure(frame, curves, ["norm.name"], tmp_path / "ema.png", "t") is not None
    assert len(seen) == 2
    for lines, kind in zip(seen, ("mean", "std"), strict=True):
        solid = [color for style, color, _, _ in lines if style == "-"]
        dashed = [(color, ys) for style, color, xs, ys in lines if style == "--" and xs == [10, 20]]
        assert len(solid) == 2 and len(set(solid)) == 2
        # bn, then brn (mean over runs b and c), each in its own solid line's colour.
        noise = curves.groupby(frame.set_index("run_dir").loc[curves["run_dir"], "norm.name"].to_numpy())
        means = noise[f"batch_noise/{kind}"].mean()
        assert [color for color, _ in dashed] == solid
        assert [ys for _, ys in dashed] == [pytest.approx([means["bn"]] * 2), pytest.approx([means["brn"]] * 2)]
    plt.close("all")
    seen.clear()
    ema_error_figure(frame, curves.drop(columns=["batch_noise/mean", "batch_noise/std"]), ["norm.name"],
                     tmp_path / "plain.png", "t")
    assert all(style != "--" for lines in seen for style, *_ in lines)


def test_brn_corrections_figure_draws_sizes_beside_clip_fractions(tmp_path, monkeypatch):
    frame = pd.DataFrame({"run_dir": ["a", "b"], "status": ["completed"] * 2,
                          "diverged_step": [None] * 2, "norm.name": ["brn", "brn"]})
    values = {"r_clip_frac": [0.0, 0.2], "d_clip_frac": [0.0, 0.1], "r_dev_mean": [0.0, 0.4],
              "d_abs_mean": [0.0, 0.8]}
    curves = pd.DataFrame({"run_dir": ["a", "a", "b", "b"], "step": [10, 20] * 2,
                           **{f"norm/mean/{k}": v * 2 for k, v in values.items()}})
    seen: dict[str, list] = {}
    save = plots._save

    def spy(fig, path):
        for ax in fig.axes:
            seen[ax.get_title()] = [list(line.get_ydata()) for line in ax.get_lines()]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    assert plots.brn_corrections_figure(frame, curves, ["norm.name"], tmp_path / "c.png", "t") is not None
    # one panel per quantity: the mean over the two (equal) runs at each step
    assert seen == {name: [pytest.approx(values[key])]
                    for key, name in plots.BRN_CORRECTIONS}
    assert plots.brn_corrections_figure(frame, curves.drop(columns=["norm/mean/d_abs_mean"]), ["norm.name"],
                                        tmp_path / "none.png", "t") is None
    plt.close("all")
