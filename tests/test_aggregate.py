"""Aggregation on synthetic run records with known values: summaries, verdicts, figures, report."""

import copy
import json

import pandas as pd
import pytest

from brn_repro.analysis.aggregate import aggregate, condition_summary, load_runs
from brn_repro.analysis.claims import NOT_REPRODUCED, NOT_RUN, REPRODUCED, evaluate_claims
from brn_repro.records import RunRecord, find_records, read_config, write_membership

RELAXED = {"relax_start": 0, "r_max": 3.0, "d_max": 5.0, "r_max_end_step": 100, "d_max_end_step": 100}


def write_run(root, experiment, norm, seed, acc, pwb=32, sampler="iid", status="completed",
              train_acc=None, extra_norm=None, steps=(100, 200)):
    config = {"experiment": experiment, "profile_name": "quick", "seed": seed,
              "dataset": {"name": "fashion_mnist"}, "model": {"name": "small_cnn"},
              "norm": {"name": norm, **(extra_norm or {})}, "sampler": {"name": sampler},
              "data": {"per_worker_batch": pwb, "workers": 64 // pwb},
              "optim": {"weight_decay": 0.0},  # claim 4's primary setting: constant lr, no decay
              "train": {"steps": steps[-1], "lr_schedule": "constant",
                        "note": experiment}}  # distinct runs per experiment
    record = RunRecord(root, config)
    record.start()
    for i, step in enumerate(steps):
        if status == "diverged" and i == len(steps) - 1:
            break
        record.log_metrics({"step": step, "test_acc": acc * (i + 1) / len(steps), "loss": 1.0 / (i + 1),
                            "train_acc": train_acc or acc, "weight_norm": 10.0 + i,
                            "norm/mean/r_clip_frac": 0.1, "norm/mean/d_clip_frac": 0.0})
    record.write_summary({"status": status, "test_acc": acc if status == "completed" else None,
                          "train_acc": train_acc or acc, "minibatch_stats_acc": None,
                          "best_test_acc": acc, "steps_done": steps[-1], "wall_seconds": 1.0,
                          "diverged_step": steps[-1] if status == "diverged" else None,
                          "images_per_second": 100.0, "weight_norm_init": 10.0})


def test_a_later_plan_does_not_rewrite_how_a_recorded_run_ran(tmp_path):
    """The membership holds the last reproduce call's plan (here: no W&B, 2 threads); the
    runs table takes how each run was executed from its record, the conditions from the plan."""
    write_run(tmp_path, "fig1_baseline", "gn", 0, 80.0)
    (run_dir,) = find_records(tmp_path)
    ran = read_config(run_dir)
    ran["logger"] = {"name": "wandb", "project": "brn-repro"}
    ran["train"]["threads"] = 1
    (run_dir / "config.yaml").write_text(json.dumps(ran))  # YAML reads JSON
    planned = copy.deepcopy(ran)
    planned["logger"] = {"name": "none"}
    planned["train"]["threads"] = 2
    planned["data"].update(per_worker_batch=4, workers=16)  # a split-blind condition sharing the run: the plan's
    unstarted = {**copy.deepcopy(planned), "seed": 1}
    write_membership(tmp_path, "fig1_baseline", [planned, unstarted])
    assert RunRecord(tmp_path, planned).dir == run_dir
    runs = load_runs(tmp_path)[0].set_index("seed")
    done, waiting = runs.loc[0], runs.loc[1]
    assert (done["logger.name"], done["logger.project"], done["train.threads"]) == ("wandb", "brn-repro", 1)
    assert done["data.per_worker_batch"] == 4 and done["status"] == "completed"
    assert (waiting["logger.name"], waiting["train.threads"], waiting["status"]) == ("none", 2, "incomplete")


def test_summary_rows_have_known_means_and_count_divergence(tmp_path):
    for seed, acc in enumerate([80.0, 82.0, 84.0]):
        write_run(tmp_path, "fig1_baseline", "bn", seed, acc)
    write_run(tmp_path, "fig1_baseline", "brn", 0, 90.0)
    write_run(tmp_path, "fig1_baseline", "brn", 1, 0.0, status="diverged")
    runs, curves = load_runs(tmp_path)
    assert len(runs) == 5 and len(curves) == 3 * 2 + 2 + 1
    summary = condition_summary(runs, ["norm.name"]).set_index("norm.name")
    assert summary.loc["bn", "test_acc_mean"] == pytest.approx(82.0)
    assert summary.loc["bn", "test_acc_std"] == pytest.approx(2.0)
    assert summary.loc["bn", "n"] == 3 and summary.loc["brn", "n"] == 1
    assert summary.loc["brn", "n_diverged"] == 1 and summary.loc["brn", "diverged_steps"] == "200"


def make_all_experiments(root):
    for seed in range(3):
        jitter = seed * 0.1
        # claim 1: BRN (relaxed from step 0 to r_max 3 / d_max 5 at 100 of 200: the regime
        # passes) - BN = 0.2 on every seed, inside ±0.485 -> equivalent -> reproduced
        write_run(root, "fig1_baseline", "bn", seed, 80 + jitter)
        write_run(root, "fig1_baseline", "brn", seed, 80.2 + jitter, extra_norm=RELAXED)
        # claim 2 at per-worker 2: BN at 32 (80) beats BN at 2 (78) by 2 > 0.546 (the regime
        # passes); BRN 2 below BN -> not reproduced, BN significantly better. At the paper's 4
        # (secondary, fig2_paper_batch) BRN is 0.5 above BN: no say.
        for norm, acc in (("bn", 78), ("brn", 76)):
            write_run(root, "fig2_small_batch", norm, seed, acc + jitter, pwb=2)
        for norm, acc in (("bn", 79), ("brn", 79.5)):
            write_run(root, "fig2_paper_batch", norm, seed, acc + jitter, pwb=4)
            for pwb in (32, 4):  # the batch-size sweep (make reproduce-full)
                write_run(root, "batch_size_sweep", norm, seed, acc + pwb / 32 + jitter, pwb=pwb)
        # claim 3: BN's non-i.i.d. penalty 25 (> 1.08: the regime passes), BRN's 0.2 on every
        # seed (d = 24.8 > 0), BRN non-i.i.d. 0.2 below BRN i.i.d. (equivalent) -> reproduced
        write_run(root, "fig3_noniid", "bn", seed, 60 + jitter, pwb=8, sampler="noniid", train_acc=62)
        write_run(root, "fig3_noniid", "brn", seed, 84.8 + jitter, pwb=8, sampler="noniid")
        write_run(root, "fig3_noniid", "bn", seed, 85 + jitter, pwb=8, sampler="iid", train_acc=88)
        write_run(root, "fig3_noniid", "brn", seed, 85 + jitter, pwb=8, sampler="iid")
        # claim 4: 2 of 3 moving-average runs diverge
        write_run(root, "moving_average_question", "moving_average", seed, 50,
                  status="diverged" if seed < 2 else "completed", extra_norm={"momentum": 0.01})
        write_run(root, "moving_average_question", "bn", seed, 85 + jitter)
        for r_max in (1.0, 3.0):
            for d_max in (0.0, 5.0):
                write_run(root, "rd_schedule_ablation", "brn", seed, 70 + r_max + d_max, pwb=2,
                          extra_norm={"r_max": r_max, "d_max": d_max})


def test_claims_on_synthetic_records_give_the_expected_verdicts(tmp_path):
    make_all_experiments(tmp_path)
    runs, curves = load_runs(tmp_path)
    claims = {c.key: c for c in evaluate_claims(runs, curves)}
    assert claims["1"].verdict == REPRODUCED
    assert claims["1"].regime.verdict == "passes"
    rows = {r.label: r.verdict for r in claims["2"].rows}
    assert rows["BRN > BN at per-worker batch 2"] == "not significant"
    assert rows["BRN > BN at per-worker batch 4 (the paper's)"] == "significant"  # secondary: no say
    assert claims["2"].regime.verdict == "passes"
    assert claims["2"].verdict == f"{NOT_REPRODUCED} (BN significantly better)"
    assert claims["3"].verdict == REPRODUCED
    # seeds 0 and 1 diverge at step 200 (after the start-up window); seed 2 grows 1 like BN
    assert claims["4"].verdict == REPRODUCED and claims["4"].rows[0].ours.startswith("2 of 3 seeds blow up")
    assert claims["4"].rows[0].verdict == "blows up (majority of seeds)"
    empty = evaluate_claims(runs[runs["experiment"] == "fig1_baseline"])
    assert [c.verdict for c in empty[1:]] == [NOT_RUN] * 3


def test_aggregate_writes_summaries_figures_and_report(tmp_path):
    make_all_experiments(tmp_path / "runs")
    report = aggregate(tmp_path / "runs", tmp_path / "results", wall_seconds=123.0)
    text = report.read_text()
    for experiment in ("fig1_baseline", "fig2_small_batch", "fig3_noniid",
                       "moving_average_question", "rd_schedule_ablation"):
        summary = pd.read_csv(tmp_path / "results" / experiment / "summary.csv")
        assert summary["n"].sum() + summary["n_diverged"].sum() > 0
        assert f"![test_acc_vs_step]({experiment}/test_acc_vs_step.png)" in text
        assert (tmp_path / "results" / experiment / "test_acc_vs_step.png").stat().st_size > 5000
    assert (tmp_path / "results" / "rd_schedule_ablation" / "rmax_dmax_heatmap.png").exists()
    assert (tmp_path / "results" / "moving_average_question" / "weight_norm_vs_step.png").exists()
    assert "| 1 | At normal batch sizes BRN matches" in text and "**reproduced**" in text
    # the rules come before the numbers; the old unpaired two-SE rule is gone
    assert text.index("**Verdict rules (pre-registered).**") < text.index("| 1 | At normal")
    assert "two standard errors" not in text and "TOST" in text
    assert "[90% CI +0.20, +0.20], TOST ±0.485: p < 0.0001, n = 3 paired seeds" in text
    assert "2.0 min" in text  # the wall time given
    heat = pd.read_csv(tmp_path / "results" / "rd_schedule_ablation" / "summary.csv")
    cell = heat[(heat["norm.r_max"] == 3.0) & (heat["norm.d_max"] == 5.0)]
    assert cell["test_acc_mean"].iloc[0] == pytest.approx(78.0)


def test_report_sets_the_later_norms_next_to_their_published_rows(tmp_path):
    for seed in (0, 1):
        for norm, acc in (("mabn", 70.0 + seed), ("bn", 50.0 + seed), ("frn", 65.0)):
            write_run(tmp_path / "runs", "batch_size_sweep", norm, seed, acc, pwb=2)
    report = aggregate(tmp_path / "runs", tmp_path / "results", wall_seconds=600.0, runs_trained=4)
    text = report.read_text()
    assert "## Accuracy against the per-worker batch (the Group Norm paper's figure)" in text
    rows = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line
            for line in text.splitlines() if line.startswith("| ") and line.count("|") == 9}
    # b=2 is the 6th column of 32, 16, 8, 4, 2, 1; MABN's published 23.67 error -> 76.3
    assert rows["mabn/MABN paper (ImageNet, 100 - error)"].split("|")[7].strip() == "76.3"
    assert rows["bn/MABN paper (ImageNet, 100 - error)"].split("|")[7].strip() == "64.8"
    assert rows["mabn/ours"].split("|")[7].strip().startswith("70.5 ± 0.7 (n=2)")
    assert "training 4 of the 6 runs" in text and "10.0 min" in text
    assert "The sweep's 6 runs (norms without batch statistics" in text
    summary = pd.read_csv(tmp_path / "results" / "batch_size_sweep" / "summary.csv")
    assert set(summary["norm.name"]) == {"mabn", "bn", "frn"}
    assert (tmp_path / "results" / "batch_size_sweep" / "acc_vs_per_worker_batch.png").exists()


def test_runs_and_curves_tables_alone_reproduce_the_report(tmp_path):
    """results/runs.csv and curves.csv are enough to re-analyse: with the run records
    gone, aggregate reads them and writes the same verdicts, summaries and figures."""
    make_all_experiments(tmp_path / "runs")
    out = tmp_path / "results"
    first = aggregate(tmp_path / "runs", out).read_text()
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns[:6]) == ["experiment", "norm.name", "data.per_worker_batch", "data.workers",
                                      "sampler.name", "seed"]
    assert len(runs) == runs[["experiment", "run_dir"]].drop_duplicates().shape[0] > 0
    curves = pd.read_csv(out / "curves.csv")
    assert {"run_dir", "step", "test_acc"} <= set(curves.columns) and len(curves) > len(runs.run_dir.unique())
    summary = (out / "fig2_small_batch" / "summary.csv").read_text()
    import shutil

    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    second = aggregate(tmp_path / "runs", out).read_text()

    def body(text):  # all but the generation timestamp
        return [line for line in text.splitlines() if not line.startswith("Generated")]

    assert body(second) == body(first)
    assert (out / "fig2_small_batch" / "summary.csv").read_text() == summary


def test_moving_average_question_keeps_its_two_settings_apart():
    """Claim 4's primary (constant lr, no weight decay) and the profile's setting are four
    conditions of 5 seeds, not two norms of 10 pooled runs."""
    from brn_repro.analysis.aggregate import condition_columns

    rows = [{"experiment": "moving_average_question", "norm.name": norm, "train.lr_schedule": lr,
             "optim.weight_decay": decay, "norm.momentum": 0.1, "seed": seed,
             "status": "completed", "test_acc": 80.0 + seed + (5 if lr == "step" else 0),
             "train_acc": None, "minibatch_stats_acc": None, "diverged_step": None}
            for norm in ("bn", "moving_average") for lr, decay in (("constant", 0.0), ("step", 5e-4))
            for seed in range(5)]
    frame = pd.DataFrame(rows)
    summary = condition_summary(frame, condition_columns(frame, "moving_average_question"))
    assert len(summary) == 4 and set(summary["n"]) == {5}
    assert sorted(summary["test_acc_mean"]) == [82.0, 82.0, 87.0, 87.0]
