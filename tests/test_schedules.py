import math

import pytest
import torch

from brn_repro.norm import BatchRenorm2d, build_norm
from brn_repro.schedules import Constant, Cosine, Linear, as_schedule, paper_d_max, paper_r_max


def test_paper_schedule_values():
    r, d = paper_r_max(), paper_d_max()
    # r_max = 1, d_max = 0 for 5k steps, then linear to 3 at 40k and 5 at 25k
    assert [r(s) for s in (0, 5_000, 22_500, 40_000, 90_000)] == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert [d(s) for s in (0, 5_000, 15_000, 25_000, 90_000)] == [0.0, 0.0, 2.5, 5.0, 5.0]


def test_cosine_and_constant_shapes():
    c = Cosine(1.0, 3.0, 100, 300)
    assert c(100) == 1.0 and c(300) == 3.0 and math.isclose(c(200), 2.0)
    assert c(150) < Linear(1.0, 3.0, 100, 300)(150)  # gentle start
    assert Constant(2.5)(10**9) == 2.5


def test_as_schedule_from_config_mapping():
    s = as_schedule({"shape": "cosine", "start": 0.5, "end": 0.01, "start_step": 0, "end_step": 10})
    assert isinstance(s, Cosine) and s(10) == 0.01
    with pytest.raises(ValueError, match="shape='step'"):
        as_schedule({"shape": "step"}, "norm.r_max")
    with pytest.raises(ValueError, match="end_step"):
        Linear(1, 3, 10, 5)


def test_build_norm_relaxes_limits_like_the_paper():
    layer = build_norm("brn", r_max=3.0, d_max=5.0, relax_start=50, r_max_end_step=400,
                       d_max_end_step=250)(4)
    assert layer.r_max == Linear(1.0, 3.0, 50, 400) and layer.d_max == Linear(0.0, 5.0, 50, 250)
    constant = build_norm("brn", r_max=1.5, d_max=0.5)(4)
    assert constant.r_max == Constant(1.5) and constant.d_max == Constant(0.5)


def test_layer_follows_schedule_and_checkpoint_continues_it():
    def make():
        return BatchRenorm2d(2, r_max=Linear(1.0, 3.0, 2, 10), d_max=Linear(0.0, 4.0, 2, 6))

    layer = make()
    x = torch.randn(4, 2, 3, 3)
    seen = []
    for _ in range(6):
        layer(x)
        seen.append(layer.diagnostics()["r_max"])
    assert seen == [1.0, 1.0, 1.0, 1.25, 1.5, 1.75]
    state = layer.state_dict()
    assert int(state["step"]) == 6
    restored = make()
    restored.load_state_dict(state)
    restored(x)
    layer(x)
    assert restored.diagnostics() == layer.diagnostics()
    assert restored.diagnostics()["r_max"] == 2.0 and restored.diagnostics()["d_max"] == 4.0
    torch.testing.assert_close(restored.running_std, layer.running_std)
