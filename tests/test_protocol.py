"""The Protocol section: the converged-reference check and the per-claim rows, on
synthetic run frames whose numbers are worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from brn_repro.analysis.protocol import converged_reference, protocol_section


def frame(rows):
    base = {"dataset.name": "fashion_mnist", "model.name": "small_cnn", "model.width": 8,
            "optim.name": "sgd", "optim.lr": 0.1, "optim.weight_decay": 5e-4,
            "train.lr_schedule": "cosine", "train.eval_every": 100, "train.eval_test_size": None,
            "recipe.norm_momentum": 0.1, "train.steps": 400, "data.train_size": None, "status": "completed",
            "sampler.name": "iid", "data.workers": 4, "data.per_worker_batch": 32,
            "norm.relax_start": 100, "norm.r_max": 3.0, "norm.d_max": 5.0,
            "norm.r_max_end_step": 800, "norm.d_max_end_step": 500}
    return pd.DataFrame([{**base, **r} for r in rows])


def curve(run_dir, accs, steps=(100, 200, 300, 400), ema=None, noise=None):
    return [{"run_dir": run_dir, "step": s, "test_acc": a,
             "ema_error/mean": (ema or [0.1] * 4)[i], "batch_noise/mean": (noise or [0.2] * 4)[i]}
            for i, (s, a) in enumerate(zip(steps, accs, strict=True))]


def test_converged_reference_is_the_mean_last_quarter_gain_of_bn_at_32():
    runs = frame([{"experiment": "fig1_baseline", "norm.name": "bn", "seed": 0, "run_dir": "a"},
                  {"experiment": "fig1_baseline", "norm.name": "bn", "seed": 1, "run_dir": "b"},
                  {"experiment": "fig1_baseline", "norm.name": "brn", "seed": 0, "run_dir": "c"}])
    # 3/4 of 400 is step 300: gains 0.2 and 0.6 -> mean 0.4 < 0.5; BRN's +5 is not read
    curves = pd.DataFrame(curve("a", [70, 80, 85.0, 85.2]) + curve("b", [70, 80, 84.0, 84.6])
                          + curve("c", [70, 80, 80.0, 85.0]))
    check = converged_reference(runs, curves)
    assert (check.start, check.end, check.gains) == (300, 400, {0: pytest.approx(0.2), 1: pytest.approx(0.6)})
    assert check.gain == pytest.approx(0.4) and check.passes
    assert "+0.40 points" in check.text() and "**passes**" in check.text()
    curves.loc[(curves["run_dir"] == "b") & (curves["step"] == 400), "test_acc"] = 85.0  # gain 1.0
    check = converged_reference(runs, curves)
    assert check.gain == pytest.approx(0.6) and not check.passes and "**FAILS**" in check.text()


def test_protocol_section_reads_the_runs_configs():
    runs = frame([{"experiment": "fig1_baseline", "norm.name": n, "seed": s, "run_dir": f"{n}{s}"}
                  for n in ("bn", "brn") for s in (0, 1)])
    # the averages: above the batch noise at step 100, below from 200 on
    curves = pd.DataFrame([row for n in ("bn", "brn") for s in (0, 1)
                           for row in curve(f"{n}{s}", [70, 80, 85.0, 85.1], ema=[0.3, 0.1, 0.05, 0.02])])
    text = "\n".join(protocol_section(runs, curves))
    # 400 x 128 = 51,200 images of 60,000: 0.9 epochs
    assert "400 steps x global batch 128 = 51,200 images = 0.9 epochs of fashion_mnist" in text
    assert "+0.10 points" in text and "**passes**" in text
    assert "alpha = 0.1 for every norm (time constant 10 steps)" in text
    # BRN at the last step 400: r_max 1 + 2 x 300/700 = 1.86, d_max 5 x 300/400 = 3.75
    assert "100 -> 500 / 800 (r_max 1.86, d_max 3.75)" in text
    assert "bn iid 4 x 32 (2); brn iid 4 x 32 (2)" in text
    assert "from step 200 (at the end 0.020 vs 0.200)" in text
    assert "| 2 | fig2_small_batch | not run |" in text


def test_protocol_section_names_what_the_configs_lack():
    runs = frame([{"experiment": "fig1_baseline", "norm.name": "bn", "seed": 0, "run_dir": "a"}])
    text = "\n".join(protocol_section(runs.drop(columns=["optim.lr"]), None))
    assert "lack optim.lr" in text


def test_deviations_table_puts_the_papers_setup_beside_the_runs_own():
    from brn_repro.analysis.protocol import PAPER_SETUP, deviations_section

    runs = frame([{"experiment": "fig1_baseline", "norm.name": n, "seed": s, "run_dir": f"{n}{s}",
                   "dataset.image_size": 14, "train.ema_decay": None, "norm.relax_start": 1900,
                   "norm.d_max_end_step": 2200, "norm.r_max_end_step": 2400}
                  for n in ("bn", "brn") for s in (0, 1, 2)]
                 + [{"experiment": "fig3_noniid", "norm.name": "bn", "seed": 0, "run_dir": "x",
                     "sampler.name": "noniid", "sampler.labels_per_batch": 4, "sampler.images_per_label": 8}])
    lines = deviations_section(runs)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and " | " in line}
    assert set(PAPER_SETUP) <= set(rows)  # every row of the paper's setup has ours beside it
    assert "| image size | 299 x 299 | 14 x 14 |" in lines
    assert "| run length | 130k-210k steps of 1600 = 160-260 epochs | 400 steps of 128 = 0.9 epochs |" in lines
    assert "4 labels x 8 images, of 10 classes" in rows["non-i.i.d. recipe"]
    assert "claim 1: r_max 1, d_max 0 to 1900; d_max 5 at 2200, r_max 3 at 2400" in rows["BRN schedule"]
    assert "claim 1: 4 x 32" in rows["workers x per-worker batch"]
    assert "paired seeds per condition: claim 1 3; claim 2 0; claim 3 1" in rows["seeds"]
    assert "no parameter averaging" in rows["evaluation"]
    assert deviations_section(runs.iloc[0:0].assign(experiment=[])) == []


def test_the_report_carries_the_hand_written_protocol_history(tmp_path):
    from brn_repro.analysis.report import HISTORY, _history

    assert _history(tmp_path) == []  # none written: no section
    (tmp_path / HISTORY).write_text("# Protocol history\n\n| protocol | verdicts |\n|---|---|\n| A | x |\n")
    lines = _history(tmp_path)
    assert lines[0] == "## Protocol history" and "| A | x |" in lines
    assert "# Protocol history" not in lines  # its own title is the section's
    committed = Path(__file__).resolve().parents[1] / "results" / HISTORY
    text = committed.read_text()
    for commit in ("38cec92", "eeced40", "c320186", "9c08e14", "32d0927", "cfc23c2", "fc6f994", "91ff14d",
                   "357dc19", "04e403b"):
        assert commit in text, commit  # every earlier protocol's commits, and the pilot's


def test_a_noniid_claims_crossing_is_read_against_its_recipes_batches():
    runs = frame([{"experiment": "fig3_noniid", "norm.name": n, "seed": 0, "run_dir": f"{n}-{s}",
                   "sampler.name": s} for n in ("bn", "brn") for s in ("iid", "noniid")])
    rows = [r for n in ("bn", "brn") for s in ("iid", "noniid") for r in curve(f"{n}-{s}", [70, 80, 85.0, 85.1],
                                                                           ema=[0.3, 0.2, 0.1, 0.05])]
    curves = pd.DataFrame(rows)
    # i.i.d. noise 0.2 everywhere; non-i.i.d. noise 0.25: the averages are below it from step 200
    curves["batch_noise_noniid/mean"] = 0.25
    text = "\n".join(protocol_section(runs, curves))
    assert "| 3 | fig3_noniid |" in text
    assert "from step 200 (at the end 0.050 vs 0.250) (non-i.i.d. batches)" in text
