"""scripts/migrate_records.py: a record written in format 1 (before 2026-12) is moved to
the directory today's code looks in, and then reads, resumes and is skipped as a run
recorded today is. The format-1 record is made from a real (tiny) run by writing it back
the way format 1 wrote it: its keys spelled norm.type / sampler.type / logger.kind, the
recipe at the top level, the three newer keys absent, its checkpoint without the keys added
since, under a directory name of another hash."""

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_faults import (  # noqa: F401 (autouse fixture)
    _restore_threads,
    assert_matches,
    make_config,
    numbers,
    uninterrupted,
)

from brn_repro.records import RunRecord, identity, read_config, read_membership, write_membership
from brn_repro.train import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_fashion_mnist):
    return uninterrupted(tmp_path_factory.mktemp("reference"), tiny_fashion_mnist)


def migrate(*argv: str) -> int:
    sys.argv = ["migrate_records.py", *argv]
    try:
        runpy.run_path(str(ROOT / "scripts" / "migrate_records.py"), run_name="__main__")
    except SystemExit as done:
        return done.code
    raise AssertionError("the script did not exit")


def as_format_1(record: RunRecord, checkpoint_lacks=("attempt_id",)) -> Path:
    """``record`` rewritten as format 1 wrote it, in a directory of another name; its path.
    Its checkpoint lacks ``checkpoint_lacks`` (the newest key; older ones lacked more)."""
    config = read_config(record.dir)
    old = {k: v for k, v in config.items() if k != "recipe"}
    for group, key in (("norm", "type"), ("sampler", "type"), ("logger", "kind")):
        old[group] = {key: config[group]["name"], **{k: v for k, v in config[group].items() if k != "name"}}
    old.update(norm_momentum=config["recipe"]["norm_momentum"], schedule=config["recipe"]["schedule"],
               noniid_recipe=config["recipe"]["noniid"])
    for group, key, before in (("train", "precision", "float32"), ("data", "train_size", None),
                               ("dataset", "image_size", None)):
        if old[group][key] == before:  # what a record older than the key meant
            old[group] = {k: v for k, v in old[group].items() if k != key}
    (record.dir / "config.yaml").write_text(yaml.safe_dump(old))
    if record.checkpoint_path.exists():
        state = torch.load(record.checkpoint_path, weights_only=True)
        for key in checkpoint_lacks:
            del state[key]
        torch.save(state, record.checkpoint_path)
    return record.dir.rename(record.dir.with_name(record.dir.name[:-10] + "0123456789"))


def test_a_format_1_record_is_moved_where_todays_code_finds_it(tmp_path, tiny_fashion_mnist, reference,
                                                                capsys):
    config = make_config(tmp_path, tiny_fashion_mnist)
    run(make_config(tmp_path, tiny_fashion_mnist, "train.stop_at_step=10"))  # checkpointed at step 10
    stopped = RunRecord(tmp_path, config)
    write_membership(tmp_path, "fig1_baseline", [config])
    plan = tmp_path / "experiments" / "fig1_baseline.json"
    old_dir = as_format_1(stopped)
    planned = json.loads(plan.read_text())
    planned[0].update(run=old_dir.name, config=yaml.safe_load((old_dir / "config.yaml").read_text()))
    plan.write_text(json.dumps(planned))

    assert migrate(str(tmp_path)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "moved 1 runs, rewrote 1 plans, left 0 as they are"
    assert not old_dir.exists() and stopped.dir.is_dir()
    assert identity(read_config(stopped.dir)) == identity(config)
    assert read_membership(tmp_path)["fig1_baseline"][0]["run"] == stopped.dir.name
    state = stopped.load_checkpoint()  # today's keys, naming today's directory
    assert state["step"] == 10 and state["run"] == stopped.dir.name

    run(config)  # resumes from the migrated checkpoint and ends as an uninterrupted run
    assert "resuming" in capsys.readouterr().err
    assert_matches(stopped, reference)
    assert migrate(str(tmp_path)) == 0  # a second call changes nothing
    assert capsys.readouterr().out.splitlines()[-1] == "moved 0 runs, rewrote 0 plans, left 0 as they are"


def test_a_migrated_finished_run_is_not_trained_again(tmp_path, tiny_fashion_mnist, reference, capsys):
    config = make_config(tmp_path, tiny_fashion_mnist)
    run(config)
    record = RunRecord(tmp_path, config)
    before = numbers(record)
    as_format_1(record, checkpoint_lacks=("attempt_id", "eval_seconds", "weight_norm_init"))
    assert migrate(str(tmp_path)) == 0
    state, summary = record.load_checkpoint(), record.summary()  # the summary's values, its attempt
    assert [state[k] for k in ("eval_seconds", "weight_norm_init", "attempt_id")] == [
        summary["eval_seconds"], summary["weight_norm_init"], summary["attempt_id"]]
    assert json.loads(record.summary_path.read_text())["run_dir"] == str(record.dir)
    assert run(config)["status"] == "completed" and "already completed" in capsys.readouterr().err
    assert numbers(record) == before
    assert_matches(record, reference)


@pytest.mark.parametrize("obstacle", ["lock", "taken"])
def test_a_record_that_cannot_move_is_left_as_it_is(tmp_path, tiny_fashion_mnist, obstacle, capsys):
    runs = tmp_path / "runs"
    config = make_config(runs, tiny_fashion_mnist, "train.stop_at_step=10")
    run(config)
    record = RunRecord(runs, make_config(runs, tiny_fashion_mnist))
    todays = shutil.copytree(record.dir, tmp_path / "todays")
    old_dir = as_format_1(record)
    if obstacle == "lock":
        (old_dir / "run.lock").write_text("{}")
    else:  # the same run, trained again in today's format
        todays.rename(record.dir)
    written = {p: p.read_bytes() for p in old_dir.iterdir()}

    assert migrate(str(runs)) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "moved 0 runs, rewrote 0 plans, left 1 as they are"
    why = "it holds run.lock" if obstacle == "lock" else f"{record.dir} exists already"
    assert f"warning: left {old_dir} as it is: {why}" in err
    assert {p: p.read_bytes() for p in old_dir.iterdir()} == written


def test_a_runs_directory_that_is_not_there_is_one_line(tmp_path, capsys):
    assert migrate(str(tmp_path / "nowhere")) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nowhere'} is not a directory; give the runs "
                                       "directory (paths.runs)\n")
