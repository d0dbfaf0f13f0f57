"""Run identities are pinned: a refactor of the config (key names, groups, schema) must
not move a recorded run to a new directory, or every recorded result would be retrained.
The names below are directories of real records (``make reproduce`` at 803e9d9, quick profile,
moved to today's identities by scripts/migrate_records.py)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import brn_repro.config  # noqa: F401  (resolvers)
from brn_repro.records import run_dir_name

ROOT = Path(__file__).resolve().parents[1]

PINNED = [
    (['experiment=fig1_baseline', 'norm=bn', 'seed=0'],
     'bn-pwb32x4-iid-s0-6cdc919c94'),
    (['experiment=fig1_baseline', 'norm=brn', 'seed=1'],
     'brn-pwb32x4-iid-s1-a85a185219'),
    (['experiment=fig2_small_batch', 'norm=brn', 'seed=2'],
     'brn-pwb2x64-iid-s2-19c0cc91d0'),
    (['experiment=fig2_small_batch', 'norm=gn', 'seed=0'],
     'gn-gb128-iid-s0-911d0526a0'),
    (['experiment=fig3_noniid', '+experiment/conditions/fig3=bn_noniid', 'seed=0'],
     'bn-pwb32x4-noniid-s0-852da715ab'),
    (['experiment=fig3_controls', '+experiment/conditions/fig3=gn_noniid', 'seed=1'],
     'gn-pwb32x4-noniid-s1-a8bd97d77a'),
    (['experiment=fig3_controls', '+experiment/conditions/fig3=bn_split', 'seed=2'],
     'bn-pwb32x4-noniid_split-s2-c5a827cd2f'),
    (['experiment=moving_average_question', '+experiment/conditions/ma_question=ma_constant_lr', 'seed=3'],
     'moving_average-pwb32x4-iid-s3-100045d31e'),
    (['experiment=moving_average_question', '+experiment/conditions/ma_question=ma_profile', 'seed=4'],
     'moving_average-pwb32x4-iid-s4-b17623342d'),
    (['experiment=relaxation_length', '+experiment/conditions/relax=slow', 'seed=0'],
     'brn-pwb2x64-iid-s0-66af1aa0b6'),
]


@pytest.mark.parametrize(("overrides", "directory"), PINNED, ids=[d for _, d in PINNED])
def test_recorded_run_keeps_its_directory(overrides, directory):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["profile=quick", *overrides])
    assert run_dir_name(OmegaConf.to_container(cfg, resolve=True)) == directory
