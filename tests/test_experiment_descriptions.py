"""Each experiment is one config (conf/experiment/<name>.yaml) and one description
(brn_repro.analysis.experiments): the two sets match, the descriptions name real figures, claims and
config columns, and an experiment added as one config + one description is planned by
the driver and summarized by its own conditions."""

import itertools
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from script_modules import load_script

import brn_repro.config  # noqa: F401  (resolvers)
from brn_repro.analysis import experiments
from brn_repro.analysis.aggregate import condition_columns, condition_summary, load_runs
from brn_repro.analysis.claims import CLAIMS
from brn_repro.analysis.dashboard import PANELS
from brn_repro.analysis.experiments import EXPERIMENTS, Experiment, check_described, configured
from brn_repro.analysis.plots import FIGURES
from brn_repro.records import RunRecord, flatten_config

ROOT = Path(__file__).resolve().parents[1]


def load_driver():
    return load_script("reproduce")


def test_every_experiment_config_has_a_description_and_every_description_a_config():
    on_disk = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    assert set(configured()) == on_disk
    missing, orphans = on_disk - set(EXPERIMENTS), set(EXPERIMENTS) - on_disk
    assert not missing, f"experiment configs without a description: {sorted(missing)}"
    assert not orphans, f"descriptions without an experiment config: {sorted(orphans)}"
    check_described()


def test_a_config_or_a_description_alone_is_named(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "experiment" / "undescribed.yaml").write_text("# @package _global_\n")
    with pytest.raises(ValueError, match=r"conf/experiment/undescribed\.yaml: no description"):
        check_described(conf)
    monkeypatch.setitem(EXPERIMENTS, "unconfigured", Experiment("unconfigured", "t", ("seed",)))
    with pytest.raises(ValueError, match="unconfigured in brn_repro.analysis.experiments.EXPERIMENTS: no config"):
        check_described(ROOT / "conf")


def test_the_default_reproduction_is_what_the_claims_read():
    """`make reproduce`: the experiments that decide a claim (45 minutes on 2 cores);
    `make reproduce-full` adds the secondary rows' experiments and the sweeps no claim reads."""
    driver = load_driver()
    assert driver.planned(None, False) == ["fig1_baseline", "fig2_small_batch", "fig3_noniid",
                                          "moving_average_question"]
    assert driver.planned(None, True) == [
        "fig1_baseline", "fig2_small_batch", "fig3_noniid", "moving_average_question", "fig2_paper_batch",
        "fig3_controls", "batch_size_sweep", "rd_schedule_ablation", "relaxation_length",
        "moving_average_schedules"]
    assert driver.planned(["fig2_small_batch"], False) == ["fig2_small_batch"]
    assert experiments.claim_experiments() == {"1": "fig1_baseline", "2": "fig2_small_batch",
                                               "3": "fig3_noniid", "4": "moving_average_question"}


def test_descriptions_name_real_figures_claims_and_config_columns():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, description in EXPERIMENTS.items():
            assert description.name == name
            assert set(description.all_figures) <= set(FIGURES), name
            assert description.claim_figure in description.all_figures, name
            assert {*description.supports, description.decides} - {None} <= set(CLAIMS)
            # each condition column is a key of the experiment's composed runs (the sweep's
            # first and last points: a condition's own keys, such as norm.momentum_start)
            head = compose("config", overrides=[f"experiment={name}", "profile=quick"],
                           return_hydra_config=True)
            params = OmegaConf.to_container(head.hydra.sweeper.params)
            keys = set()
            for end in (0, -1):
                point = [f"{k}={str(v).split(',')[end].strip()}" for k, v in params.items()]
                config = compose("config", overrides=[*point, f"experiment={name}", "profile=quick"])
                keys |= set(flatten_config(OmegaConf.to_container(config, resolve=True)))
            assert set(description.conditions) <= set(keys), (name, set(description.conditions) - set(keys))
    assert set(PANELS) <= set(FIGURES)
    # each claim names experiments that are described (and so configured: check_described)
    for claim in CLAIMS.values():
        assert {claim.experiment, *claim.secondary} <= set(EXPERIMENTS), claim.key


PROBE = """# @package _global_
# A throwaway experiment: two norms x two learning rates at per-worker 8.
experiment: lr_probe
data:
  per_worker_batch: 8
hydra:
  sweeper:
    params:
      norm: bn,gn
      optim.lr: 0.05,0.1
      seed: 0,1
"""


def accuracy(config):
    return 50.0 + 10.0 * (config["norm"]["name"] == "gn") + 100.0 * config["optim"]["lr"] + config["seed"]


def test_adding_an_experiment_is_one_config_and_one_description(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "experiment" / "lr_probe.yaml").write_text(PROBE)
    driver = load_driver()
    with pytest.raises(ValueError, match="lr_probe"):  # the config alone: the driver says what is missing
        driver.planned(None, True, conf)
    monkeypatch.setitem(EXPERIMENTS, "lr_probe",
                        Experiment("lr_probe", "Learning-rate probe", ("norm.name", "optim.lr")))
    # no claim reads it: `make reproduce-full` runs it, `make reproduce` does not
    assert "lr_probe" not in driver.planned(None, False, conf)
    assert driver.planned(None, True, conf)[-1] == "lr_probe"
    configs = driver.expand("lr_probe", ["profile=quick"], conf)
    assert sorted((c["norm"]["name"], c["optim"]["lr"], c["seed"]) for c in configs) == sorted(
        itertools.product(["bn", "gn"], [0.05, 0.1], [0, 1]))
    for config in configs:  # the shared settings came with it: the global batch fixed
        assert config["experiment"] == "lr_probe" and config["data"]["per_worker_batch"] == 8
        assert config["data"]["workers"] * 8 == config["data"]["global_batch"]
        record = RunRecord(tmp_path / "runs", config)
        record.start()
        acc = accuracy(config)
        record.write_summary({"status": "completed", "test_acc": acc, "train_acc": acc,
                              "minibatch_stats_acc": None, "best_test_acc": acc, "steps_done": 1,
                              "wall_seconds": 1.0, "diverged_step": None, "images_per_second": 1.0})
    runs, _ = load_runs(tmp_path / "runs")
    frame = runs[runs["experiment"] == "lr_probe"]
    by = condition_columns(frame, "lr_probe")
    assert by == ["norm.name", "optim.lr"]  # its description's, not every column that varies
    summary = condition_summary(frame, by).set_index(by)
    assert len(summary) == 4 and (summary["n"] == 2).all()
    for (norm, lr), row in summary.iterrows():
        expected = 50.0 + 10.0 * (norm == "gn") + 100.0 * lr + 0.5  # mean over seeds 0 and 1
        assert row["test_acc_mean"] == pytest.approx(expected), (norm, lr)
