"""The typed config (brn_repro.schema): one view built at the boundary, one spelling for
the key that picks an implementation."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from brn_repro.config import validate
from brn_repro.schema import ConfigError, RunConfig

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


def test_validate_holds_only_rules_that_relate_keys():
    """The schema takes every single-key range; what validate adds relates keys."""
    config = composed("sampler=noniid", "data.per_worker_batch=8", "data.workers=16")
    with pytest.raises(ConfigError, match=r"data.per_worker_batch=8 must equal sampler.labels_per_batch"):
        validate(config)
    config = composed("train.stop_at_step=3600")
    with pytest.raises(ConfigError, match=r"train.stop_at_step=3600 must be a step between 1 and train.steps-1"):
        validate(config)
