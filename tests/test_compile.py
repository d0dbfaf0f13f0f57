"""Compiled training (``train.compile``) against eager, and the plain-ops formulation
of the grouped norms (what the compiler sees) against the fused kernels (eager).

float64 throughout where the claim is "the same computation": the two formulations
sum in different orders, so float32 runs would differ by rounding that the ReLUs
amplify (tests/test_split_equivalence.py measures that); in float64 they agree to
~1e-15. One float32 run states the tolerance a user sees.
"""

import pytest
import torch
import torch.nn.functional as F
from test_train import make_config

import brn_repro.norm._grouped as grouped
from brn_repro.config import ConfigError, validate
from brn_repro.norm import build_norm
from brn_repro.performance import wants_compile
from brn_repro.records import RunRecord
from brn_repro.schema import RunConfig
from brn_repro.train import run

RELAXING_BRN = dict(per_worker_batch=4, momentum=0.3, r_max=3.0, d_max=5.0, relax_start=1,
                    r_max_end_step=3, d_max_end_step=3)  # r and d act from the second step
NORMS = [("bn", dict(per_worker_batch=4)), ("bn", dict(per_worker_batch=1)), ("brn", RELAXING_BRN),
         ("brn", dict(RELAXING_BRN, per_worker_batch=16)), ("moving_average", dict(per_worker_batch=4, momentum=0.3))]


def _train_layer(name, options, layout, steps=4, plain=False, compiled=False):
    """A conv + norm + ReLU stack trained a few SGD steps; losses, state and grads."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1, bias=False),
                                build_norm(name, **options)(6), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(6 * 5 * 5, 3)).double()
    model = model.to(memory_format=layout)
    if compiled:
        torch._dynamo.reset()  # a fresh compiler: no fallback to eager after 8 models
    net = torch.compile(model, dynamic=False) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    generator = torch.Generator().manual_seed(1)
    losses = []
    fused = grouped.fused_kernels
    if plain:
        grouped.fused_kernels = lambda: False
    try:
        for _ in range(steps):
            x = torch.randn(16, 3, 5, 5, generator=generator, dtype=torch.double).contiguous(memory_format=layout)
            y = torch.randint(0, 3, (16,), generator=generator)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        grouped.fused_kernels = fused
    return torch.tensor(losses), model.state_dict()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize(("name", "options"), NORMS, ids=[f"{n}-{o['per_worker_batch']}" for n, o in NORMS])
def test_plain_formulation_equals_fused_kernels(name, options, layout):
    """The formulation the compiler fuses, run eager, against the fused-kernel path:
    the same losses and the same weights, moving statistics and steps after training."""
    losses, state = _train_layer(name, options, layout)
    plain_losses, plain_state = _train_layer(name, options, layout, plain=True)
    torch.testing.assert_close(plain_losses, losses, rtol=1e-12, atol=0)
    for key, value in state.items():
        torch.testing.assert_close(plain_state[key], value, rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize(("name", "options"), [NORMS[2], NORMS[4]], ids=["brn", "moving_average"])
def test_compiled_layer_equals_eager(name, options):
    losses, state = _train_layer(name, options, torch.contiguous_format)
    compiled_losses, compiled_state = _train_layer(name, options, torch.contiguous_format, compiled=True)
    torch.testing.assert_close(compiled_losses, losses, rtol=1e-12, atol=0)
    for key, value in state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-10, atol=1e-12, msg=key)


def test_compiled_moving_average_gradient_uses_this_steps_statistics():
    """Regression: compiled, a buffer updated in place after the forward read it was
    read again by the backward (the input gradient 0.7 off); see ``_grouped.snapshot``."""
    layer = build_norm("moving_average", per_worker_batch=4, momentum=0.3, init_from_batch=False)(3).double()
    with torch.no_grad():
        layer.running_std.fill_(2.0)
        layer.weight.fill_(1.5)
    compiled = torch.compile(layer, dynamic=False)
    for _ in range(2):
        std_used = layer.running_std.clone()
        x = torch.randn(8, 3, 5, 5, dtype=torch.double, requires_grad=True)
        y = compiled(x)
        grad, = torch.autograd.grad(y.square().sum(), [x])
        expected = 2 * y.detach() * (layer.weight.detach() / std_used).view(1, -1, 1, 1)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
        assert not torch.equal(layer.running_std, std_used)  # the update did happen


def test_compiled_brn_one_graph_and_host_step_follows():
    """BRN's relaxing schedule compiles into one graph with no recompilation as the
    step advances (schedules are tensor ops of the step buffer), and an eager call
    after compiled ones continues from the right step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layer = build_norm("brn", **RELAXING_BRN)(4)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)  # fullgraph: a graph break is an error
    for _ in range(5):
        compiled(torch.randn(8, 4, 3, 3))
    assert counters["stats"]["unique_graphs"] == 1
    assert int(layer.step) == 5 and layer._advance_step() == 5
    assert layer.diagnostics()["r_max"] == 3.0  # the limit at step 4, read from the compiled step


def _run_pair(tmp_path, tiny_fashion_mnist, *overrides):
    runs = {}
    for choice in ("false", "true"):
        config = make_config(tmp_path / choice, tiny_fashion_mnist, "train.steps=6", "train.eval_every=3",
                             "train.checkpoint_every=6", f"train.compile={choice}", *overrides)
        summary = run(config)
        runs[choice] = (summary, RunRecord(tmp_path / choice, config).read_metrics())
    return runs


def test_compiled_run_equals_eager_run_float64(tmp_path, tiny_fashion_mnist):
    """The runner, compiled vs eager: BRN relaxing within the run, float64: the losses
    and accuracies at every evaluation agree to 1e-9."""
    runs = _run_pair(tmp_path, tiny_fashion_mnist, "norm=brn", "data.per_worker_batch=4", "data.workers=8",
                     "norm.relax_start=1", "norm.r_max_end_step=4", "norm.d_max_end_step=4",
                     "train.precision=float64")
    (eager, eager_rows), (compiled, compiled_rows) = runs["false"], runs["true"]
    assert not eager["compiled"] and compiled["compiled"] and compiled["compile_seconds"] > 0
    assert eager["compile_seconds"] is None
    for e, c in zip(eager_rows, compiled_rows, strict=True):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-9)
        assert (c["test_acc"], c["train_acc"]) == (e["test_acc"], e["train_acc"])
        assert c["norm/mean/r_max"] == e["norm/mean/r_max"]


def test_compiled_run_equals_eager_run_float32(tmp_path, tiny_fashion_mnist):
    """The same in float32, the default: different summation orders, so after 6 steps
    the loss agrees to 1e-3 relative and accuracy to 2 points (measured: ~1e-6)."""
    runs = _run_pair(tmp_path, tiny_fashion_mnist, "norm=bn", "data.per_worker_batch=8")
    (_, eager_rows), (_, compiled_rows) = runs["false"], runs["true"]
    for e, c in zip(eager_rows, compiled_rows, strict=True):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-3)
        assert abs(c["test_acc"] - e["test_acc"]) <= 2.0


def test_auto_compiles_where_it_pays(tmp_path, tiny_fashion_mnist):
    short = make_config(tmp_path, tiny_fashion_mnist)  # 60 steps x 32
    long = make_config(tmp_path, tiny_fashion_mnist, "train.steps=5000")  # 160k images
    longer = make_config(tmp_path, tiny_fashion_mnist, "train.steps=25000")  # 800k images
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), build_norm("bn")(2))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not wants_compile(RunConfig.parse(short), cpu, 1, model)
    assert wants_compile(RunConfig.parse(long), cpu, 1, model)
    assert not wants_compile(RunConfig.parse(long), cuda, 1, model)  # a GPU pays the compilation back later
    assert wants_compile(RunConfig.parse(longer), cuda, 1, model)
    assert not wants_compile(RunConfig.parse(long), cpu, 2, model)   # several processes: eager
    mabn = torch.nn.Sequential(build_norm("mabn")(2))
    assert not wants_compile(RunConfig.parse(long), cpu, 1, mabn)    # MABN runs eager inside a compiled graph
    forced = make_config(tmp_path, tiny_fashion_mnist, "train.compile=true")
    assert wants_compile(RunConfig.parse(forced), cuda, 2, mabn)


def test_bad_compile_value_is_one_line_error(tmp_path, tiny_fashion_mnist):
    config = make_config(tmp_path, tiny_fashion_mnist, "train.compile=sometimes")
    with pytest.raises(ConfigError, match="train.compile='sometimes' must be auto, true or false"):
        validate(config)
