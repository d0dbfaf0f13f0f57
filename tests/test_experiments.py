"""Experiment configs compose with every profile; a miniature `make reproduce` end to end."""

import csv
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import brn_repro.config  # noqa: F401  (resolvers)
from brn_repro.config import validate

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
DESIGN = dict(csv.reader((ROOT / "results" / "pilot" / "regime" / "design.csv").open()))
SEEDS = {"fig1_baseline": int(DESIGN["claim1_seeds"]), "fig2_small_batch": int(DESIGN["claim2_seeds"]),
         "fig3_noniid": int(DESIGN["claim3_seeds"]), "moving_average_question": 5, "fig2_paper_batch": 5}
PROFILES = sorted(p.stem for p in (ROOT / "conf" / "profile").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_every_profile(experiment, profile):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        head = compose("config", overrides=[f"experiment={experiment}", f"profile={profile}"],
                       return_hydra_config=True)
        params = OmegaConf.to_container(head.hydra.sweeper.params)
        # the claims' experiments: the seeds the pilot's power analysis asked for
        # (results/pilot/regime/design.csv; claim 4 and claim 2's paper row: 5); the rest: 3
        seeds = len(str(params["seed"]).split(","))
        assert seeds == SEEDS.get(experiment, 3)
        # seeds change no other key: one seed per condition keeps this test to seconds
        axes = [[f"{k}={v}" for v in str(values).split(",")][:1 if k == "seed" else None]
                for k, values in params.items()]
        combos = list(itertools.product(*axes))
        # every point with the default profile; the first and last with the others (speed)
        for combo in combos if profile == "quick" else [combos[0], combos[-1]]:
            cfg = compose("config", overrides=[f"experiment={experiment}", f"profile={profile}", *combo])
            config = OmegaConf.to_container(cfg, resolve=True)
            validate(config)  # every point of every sweep is a valid run
            assert config["experiment"] == experiment and config["profile_name"] == profile
            data = config["data"]
            assert data["workers"] * data["per_worker_batch"] == data["global_batch"]


@pytest.mark.slow  # a minute of training and two sweeps (make test-slow)
def test_miniature_reproduction_runs_aggregates_and_is_idempotent(tmp_path, tiny_fashion_mnist):
    command = [sys.executable, "scripts/reproduce.py", "--profile", "quick", "--jobs", "2",
               "--experiments", "fig2_small_batch fig3_noniid", "--runs", str(tmp_path / "runs"),
               "--out", str(tmp_path / "results"), f"dataset.root={tiny_fashion_mnist}",
               "dataset.download=false", "train.steps=12", "train.eval_every=6", "model.width=4",
               "train.checkpoint_every=6",
               "data.train_eval_size=100", "hydra.sweeper.params.seed=0",
               f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # fig3's i.i.d. runs (bn, brn at 4: 2 labels x 2 images) are fig2's: 4 distinct runs, not 6
    assert "4 runs in 2 experiments, 0 already recorded" in first.stdout
    summaries = list((tmp_path / "runs").glob("*/summary.json"))
    assert len(summaries) == 4
    report = (tmp_path / "results" / "REPORT.md").read_text()
    assert "| 2 | With small normalization batches BRN" in report
    assert "![test_acc_vs_step](fig2_small_batch/test_acc_vs_step.png)" in report
    assert "## Protocol" in report and report.index("## Protocol") < report.index("## Verdicts")
    assert (tmp_path / "results" / "fig2_small_batch" / "summary.csv").read_text().count("\n") == 3
    assert (tmp_path / "results" / "fig3_noniid" / "summary.csv").read_text().count("\n") == 5
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    assert "4 runs in 2 experiments, 4 already recorded" in second.stdout
    assert not list((tmp_path / "runs" / "logs").glob("*.log")) or all(
        p.stat().st_mtime <= max(s.stat().st_mtime for s in summaries) + 1
        for p in (tmp_path / "runs" / "logs").glob("*.log"))


def condition_axes(experiment):
    """The sweep's config-group axes (``+experiment/conditions/<group>: a,b``) as
    {group path: [choices]}."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        head = compose("config", overrides=[f"experiment={experiment}", "profile=quick"],
                       return_hydra_config=True)
    params = OmegaConf.to_container(head.hydra.sweeper.params)
    return {k[1:]: [v.strip() for v in str(vs).split(",")] for k, vs in params.items()
            if k.startswith("+")}


def set_keys(path):
    """Dotted keys a config file sets, with its defaults-list overrides as ``/group`` and
    the keys of the files it includes (beside it)."""
    raw = OmegaConf.to_container(OmegaConf.load(path))
    keys = set()
    for entry in raw.pop("defaults", []):
        if isinstance(entry, str):
            keys |= set_keys(Path(path).parent / f"{entry}.yaml")
        else:
            keys.add(f"/{next(iter(entry)).split()[-1].lstrip('/')}")
    raw.pop("hydra", None)

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                keys.add(f"{prefix}{key}")

    walk(raw, "")
    return keys


def test_condition_groups_live_under_the_experiments_and_every_one_is_swept():
    """The experiments' condition groups are under conf/experiment/conditions/ (so
    ``--help`` lists only the groups a user picks), and each of their options is a point
    of some sweep."""
    swept = {}
    for experiment in EXPERIMENTS:
        for group, choices in condition_axes(experiment).items():
            assert group.startswith("experiment/conditions/"), group
            swept.setdefault(group, set()).update(choices)
    on_disk = {p.parent.relative_to(ROOT / "conf").as_posix()
               for p in (ROOT / "conf" / "experiment" / "conditions").rglob("*.yaml")}
    assert set(swept) == on_disk == {"experiment/conditions/fig3", "experiment/conditions/ma_question",
                                     "experiment/conditions/relax"}
    for group, choices in swept.items():
        assert choices == {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}, group


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_a_sweeps_group_choices_mean_the_same_in_either_order(experiment):
    """A condition (conf/experiment/conditions/) is merged after its experiment's file:
    a key that both set would take the condition's value, and the other merge order
    (a Hydra multirun's ``+experiment=NAME`` once put the experiment last) the file's. It
    did once (fig3_controls' per-worker batch overrode bn_iid_split_size's), so no condition
    sets a key its experiment sets, and every point resolves the same with its overrides
    in either order."""
    axes = condition_axes(experiment)
    if not axes:
        pytest.skip("no config-group choices in this sweep")
    own = set_keys(ROOT / "conf" / "experiment" / f"{experiment}.yaml")
    for group, choices in axes.items():
        for choice in choices:
            both = own & set_keys(ROOT / "conf" / group / f"{choice}.yaml")
            assert not both, f"{group}/{choice} and {experiment} both set {sorted(both)}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for combo in itertools.product(*[[f"+{k}={v}" for v in vs] for k, vs in axes.items()]):
            first = compose("config", overrides=[*combo, f"experiment={experiment}", "profile=quick"])
            last = compose("config", overrides=[f"experiment={experiment}", "profile=quick", *combo])
            assert OmegaConf.to_container(first, resolve=True) == OmegaConf.to_container(last, resolve=True), combo
