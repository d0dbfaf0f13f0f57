"""What a user of ``BatchRenorm2d(64)`` gets without options: the paper's relaxation,
scaled, counted in the ``step`` buffer (so it survives state_dict and resume); and the
harness, which states its whole schedule, never reads those defaults."""

from pathlib import Path

import pytest
import torch
import yaml

from brn_repro.norm import BatchRenorm2d, build_norm
from brn_repro.norm.batch_renorm import D_MAX_END_STEP, R_MAX_END_STEP, RELAX_START
from brn_repro.schedules import Constant

ROOT = Path(__file__).resolve().parents[1]


def test_default_layer_relaxes_on_the_paper_schedule_scaled():
    layer = BatchRenorm2d(64)
    assert (RELAX_START, R_MAX_END_STEP, D_MAX_END_STEP) == (800, 6400, 4000)  # paper's 5k/40k/25k / 6.25
    assert layer.r_max(0) == layer.r_max(800) == 1.0 and layer.d_max(0) == layer.d_max(800) == 0.0
    assert layer.r_max(3600) == pytest.approx(2.0) and layer.d_max(2400) == pytest.approx(2.5)
    assert layer.r_max(6400) == layer.r_max(10**6) == 3.0 and layer.d_max(4000) == layer.d_max(10**6) == 5.0
    assert layer.momentum(0) == 0.01


def test_given_limits_and_steps():
    layer = BatchRenorm2d(8, r_max=2.0, d_max=1.0, relax_start=10, r_max_end_step=20, d_max_end_step=30)
    assert layer.r_max(10) == 1.0 and layer.r_max(15) == pytest.approx(1.5) and layer.r_max(20) == 2.0
    assert layer.d_max(20) == pytest.approx(0.5) and layer.d_max(30) == 1.0
    constant = BatchRenorm2d(8, r_max=2.0, d_max=1.0, r_max_end_step=None, d_max_end_step=None)
    assert constant.r_max == Constant(2.0) and constant.d_max == Constant(1.0)
    cosine = BatchRenorm2d(8, relax_start=0, r_max_end_step=10, shape="cosine")
    assert cosine.r_max(5) == pytest.approx(2.0) and cosine.r_max(1) < 1.0 + 2.0 * 0.1
    with pytest.raises(ValueError, match="r_max=0.5 must be >= 1"):
        BatchRenorm2d(8, r_max=0.5)
    with pytest.raises(ValueError, match="start_step <= end_step"):
        BatchRenorm2d(8, relax_start=100, r_max_end_step=50)


def test_schedule_position_survives_state_dict_and_resume():
    torch.manual_seed(0)
    layer = BatchRenorm2d(3, relax_start=2, r_max_end_step=6, d_max_end_step=4)
    for _ in range(5):
        layer(torch.randn(8, 3, 4, 4))
    resumed = BatchRenorm2d(3, relax_start=2, r_max_end_step=6, d_max_end_step=4)
    resumed.load_state_dict(layer.state_dict())  # strict, as brn_repro.loop loads checkpoints
    x = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(resumed(x), layer(x))
    assert int(resumed.step) == int(layer.step) == 6
    assert resumed.diagnostics()["r_max"] == layer.diagnostics()["r_max"] == pytest.approx(1.0 + 2.0 * 3 / 4)


def test_state_dict_keys_are_those_of_earlier_checkpoints():
    """No buffer was added for the schedule (the step was already one), so a checkpoint
    written before loads strictly."""
    assert list(BatchRenorm2d(4).state_dict()) == ["weight", "bias", "running_mean", "running_std", "step"]


def test_harness_states_every_schedule_option():
    """conf/norm/brn.yaml names the limits, the three steps and the shape; build_norm
    turns them into schedules itself, so the layer's defaults cannot change a run."""
    conf = yaml.safe_load((ROOT / "conf/norm/brn.yaml").read_text())
    assert {"r_max", "d_max", "relax_start", "r_max_end_step", "d_max_end_step", "shape", "momentum",
            "eps"} <= set(conf)
    # null end steps (the harness's constant limits): constant from step 0, not relaxed
    layer = build_norm("brn", r_max=3.0, d_max=5.0, relax_start=0, r_max_end_step=None, d_max_end_step=None)(4)
    assert layer.r_max == Constant(3.0) and layer.d_max == Constant(5.0)
    bare = build_norm("brn")(4)  # as before this change: constant 3 / 5
    assert bare.r_max == Constant(3.0) and bare.d_max == Constant(5.0)
    relaxed = build_norm("brn", r_max=3.0, d_max=5.0, relax_start=100, r_max_end_step=800, d_max_end_step=500)(4)
    assert relaxed.r_max(100) == 1.0 and relaxed.r_max(800) == 3.0 and relaxed.d_max(500) == 5.0
