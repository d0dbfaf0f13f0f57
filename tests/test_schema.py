"""The typed config (brn_repro.schema): one view built at the boundary, one spelling for
the key that picks an implementation, and record format 1 (norm.type ...) still read."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from brn_repro.cli import upgrade_command_line
from brn_repro.config import validate
from brn_repro.records import read_config, run_dir_name
from brn_repro.schema import ConfigError, RunConfig, upgrade

ROOT = Path(__file__).resolve().parents[1]


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=["profile=quick", *overrides]),
                                      resolve=True)


def test_the_typed_view_reads_attributes_of_the_right_types():
    cfg = validate(composed("norm=brn", "sampler=noniid", "data.per_worker_batch=32", "data.workers=4"))
    assert isinstance(cfg, RunConfig)
    assert (cfg.train.steps, cfg.norm.name, cfg.sampler.name, cfg.logger.name) == (3600, "brn", "noniid", "none")
    assert (cfg.sampler.labels_per_batch, cfg.sampler.images_per_label) == (4, 8)  # the quick recipe
    assert cfg.norm.options["r_max"] == 3.0 and "name" not in cfg.norm.options
    assert isinstance(cfg.optim.lr, float) and cfg.dataset.augment.crop_padding == 0


@pytest.mark.parametrize(("change", "message"), [
    (("train", "foo", 1), "train.foo is not a key of train; it takes steps, eval_every"),
    (("train", "lr_schedule", "sometimes"),
     "train.lr_schedule='sometimes' is not a schedule; use one of cosine, step, constant"),
    (("train", "compile", 1), "train.compile=1 must be auto, true or false"),  # 1 is not true
    (("train", "warmup_steps", -1), "train.warmup_steps=-1 must be an integer >= 0"),
    (("train", "step_milestones", [0.5, 1.5]), "train.step_milestones[]=1.5 must be a finite number in (0, 1]"),
    (("optim", "name", "lion"), "optim.name='lion' is not an optimizer; use one of sgd, rmsprop, adam"),
    (("dataset", "augment", {"crop_padding": -2}), "dataset.augment.crop_padding=-2 must be an integer >= 0"),
    (("sampler", "name", "shuffled"), "sampler.name='shuffled' is not a sampler; use one of iid, noniid"),
    (("norm", "name", "bnx"), "norm.name='bnx' is not a normalization; use one of bn, brn"),
    (("logger", "name", "tensorboard"), "logger.name='tensorboard' is not a logger; use one of wandb, none"),
])
def test_a_bad_value_is_one_line_naming_its_key(change, message):
    config = composed()
    group, key, value = change
    config[group][key] = value
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def format_1(config: dict) -> dict:
    """``config`` as a record written before this format: type / kind keys, the recipe
    values at the top level."""
    old = {k: v for k, v in config.items() if k != "recipe"}
    old["norm"] = {"type": config["norm"]["name"], **{k: v for k, v in config["norm"].items() if k != "name"}}
    old["sampler"] = {"type": config["sampler"]["name"],
                      **{k: v for k, v in config["sampler"].items() if k != "name"}}
    old["logger"] = {"kind": config["logger"]["name"]}
    old.update(norm_momentum=config["recipe"]["norm_momentum"], schedule=config["recipe"]["schedule"],
               noniid_recipe=config["recipe"]["noniid"])
    return old


def test_a_format_1_record_reads_as_this_format_and_keeps_its_directory(tmp_path):
    config = composed("experiment=fig3_noniid", "+experiment/conditions/fig3=bn_noniid")
    old = format_1(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    # format 1 knew one BRN schedule: the per-regime ones (recipe, outside the identity) are newer
    newer = {**config, "recipe": {k: v for k, v in config["recipe"].items()
                                  if k not in ("schedule_per_worker_32", "schedule_noniid", "global_batch")}}
    assert read_config(tmp_path) == upgrade(old) == newer
    assert run_dir_name(newer) == run_dir_name(config) == "bn-pwb32x4-noniid-s0-3990f717c0"


def test_format_1_keys_on_the_command_line_are_upgraded_with_a_note():
    argv, notes = upgrade_command_line(["-m", "norm.type=bn,brn", "+noniid_recipe.eval_labels=5",
                                        "schedule.relax_start=7", "norm_momentum=0.1", "seed=1"])
    assert argv == ["-m", "norm.name=bn,brn", "+recipe.noniid.eval_labels=5",
                    "recipe.schedule.relax_start=7", "recipe.norm_momentum=0.1", "seed=1"]
    assert notes[0] == ("note: norm.type is now norm.name; write norm.name=bn,brn "
                        "(the old key works until the next release)")
    assert len(notes) == 4


def test_the_old_key_still_trains_the_same_config_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "brn_repro.train", "profile=quick", "logger.kind=none",
                           "sampler.type=iid", "--cfg", "job"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: logger.kind is now logger.name" in done.stderr
    job = yaml.safe_load(done.stdout)
    assert job["logger"]["name"] == "none" and job["sampler"]["name"] == "iid" and "kind" not in job["logger"]


def test_validate_holds_only_rules_that_relate_keys():
    """The schema takes every single-key range; what validate adds relates keys."""
    config = composed("sampler=noniid", "data.per_worker_batch=8", "data.workers=16")
    with pytest.raises(ConfigError, match=r"data.per_worker_batch=8 must equal sampler.labels_per_batch"):
        validate(config)
    config = composed("train.stop_at_step=3600")
    with pytest.raises(ConfigError, match=r"train.stop_at_step=3600 must be a step between 1 and train.steps-1"):
        validate(config)


def test_a_config_file_of_ones_own_in_format_1_still_composes(tmp_path, capsys):
    """A user's conf/norm/<name>.yaml written with ``type:`` (the README taught it): read
    with a note, as if it said ``name:``."""
    from brn_repro.config import resolve

    (tmp_path / "norm").mkdir()
    (tmp_path / "norm" / "my_bn.yaml").write_text("type: bn\neps: 1.0e-3\nmomentum: 0.1\n")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "profile=quick",
                                           "norm=my_bn"])
    config = resolve(cfg)
    assert config["norm"] == {"name": "bn", "eps": 1e-3, "momentum": 0.1}
    assert "note: norm.type is now norm.name" in capsys.readouterr().err
    assert validate(config).norm.name == "bn"
