"""The rules of the BN-only pilot stage that fixed the current protocol
(scripts/pilot_protocol.py, stage regime), checked against the paper's own numbers and
against the committed design table."""

import csv
from pathlib import Path

import pytest
from script_modules import load_script

from brn_repro.analysis import claims
from brn_repro.analysis.stats import effect_for_power, power_superiority

ROOT = Path(__file__).resolve().parents[1]


def load_pilot():
    return load_script("pilot_protocol")


def test_relaxation_keeps_the_papers_proportions_and_holds_the_last_third():
    relaxation = load_pilot().relaxation
    # the paper: 5k, d_max at 25k, r_max at 40k of a 130k-step run (5 : 25 : 40)
    assert relaxation(5000, 130_000) == {"relax_start": 5000, "d_max_end_step": 25000, "r_max_end_step": 40000}
    # small batches here: the averages beat a worker's batch by step 75 -> 100, 500, 800
    assert relaxation(75, 3600) == {"relax_start": 100, "d_max_end_step": 500, "r_max_end_step": 800}
    # per-worker 32 from 1875: 8 x 1900 lies past 2/3 of 3600 -> r_max at 2400, d_max 20/35 of the way
    assert relaxation(1875, 3600) == {"relax_start": 1900, "d_max_end_step": 2200, "r_max_end_step": 2400}


def test_the_claims_rules_hold_the_numbers_of_the_committed_design():
    design = dict(csv.reader((ROOT / "results" / "pilot" / "regime" / "design.csv").open()))
    assert claims.MATCH_MARGIN == pytest.approx(float(design["equivalence_margin"]), abs=5e-4)
    assert claims.SMALL_BATCH_MARGIN == pytest.approx(float(design["claim2_regime_margin"]), abs=5e-4)
    assert claims.NONIID_MARGIN == pytest.approx(float(design["claim3_regime_margin"]), abs=5e-3)
    assert claims.PILOT_SD_SMALL_BATCH == pytest.approx(float(design["paired_sd_small_batch"]), abs=5e-4)
    assert claims.PILOT_SD_DID == pytest.approx(float(design["paired_sd_did"]), abs=5e-4)
    # the margin is the penalty at which claim 2's test has 80% power for the paper's share
    n, sd = int(design["claim2_seeds"]), float(design["paired_sd_small_batch"])
    margin = float(design["claim2_regime_margin"])
    assert power_superiority(margin * 2.3 / 4.1, sd, n) == pytest.approx(0.8, abs=1e-3)
    assert effect_for_power(sd, n) / (2.3 / 4.1) == pytest.approx(margin, abs=5e-4)


def test_the_profile_holds_the_designs_schedules_and_recipe():
    from hydra import compose, initialize_config_dir

    design = dict(csv.reader((ROOT / "results" / "pilot" / "regime" / "design.csv").open()))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        recipe = compose("config", overrides=["profile=quick"]).recipe
    for claim, schedule in (("claim1", recipe.schedule_per_worker_32), ("claim2", recipe.schedule),
                            ("claim3", recipe.schedule_noniid)):
        for key in ("relax_start", "d_max_end_step", "r_max_end_step"):
            assert schedule[key] == int(design[f"{claim}_{key}"]), (claim, key)
    assert f"{recipe.noniid.labels_per_batch} x {recipe.noniid.images_per_label}" == design["claim3_recipe"]


def test_the_committed_regime_tables_and_design_recompute_from_the_pilots_runs(tmp_path, capsys):
    """Stage regime's tables and design.csv, recomputed from its committed runs and curves,
    are the committed files byte for byte (a refactor of the stage cannot move them)."""
    import pandas as pd
    from script_modules import load_script

    pilot = load_script("pilot_protocol")
    committed = ROOT / "results" / "pilot" / "regime"
    pilot.regime(pd.read_csv(committed / "pilot_runs.csv"), pd.read_csv(committed / "pilot_curves.csv"), tmp_path)
    for name in ("small_batch.csv", "noniid.csv", "crossing.csv", "weight_growth.csv", "design.csv"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
