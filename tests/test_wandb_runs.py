"""W&B runs are the run records' trainings: one W&B run per record across an interruption,
a new one when the record trains again from step 0, with its group, job type, tags, commit
and the record's identity; a diverged run tagged and failed; per-layer metrics hidden.
Offline runs read back with wandb's own reader (``wandb leet inspect``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_train import make_config
from test_wandb_logger import offline_env, read_final_state, read_records  # noqa: F401 (fixture)

from brn_repro.provenance import ROOT, git_commit
from brn_repro.records import RunRecord, write_membership
from brn_repro.train import run


def offline_runs(run_dir: Path) -> list:
    """(state, records) of each offline W&B run under a run directory, oldest first."""
    out = []
    for sync_dir in (run_dir / "wandb").glob("offline-run-*"):
        (wandb_file,) = sync_dir.glob("run-*.wandb")
        out.append((read_final_state(wandb_file), read_records(wandb_file)))
    return sorted(out, key=lambda run: run[0]["start_time"])  # names sort by id within a second


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_an_interrupted_run_is_one_wandb_run_with_its_group_tags_and_commit(
        offline_env, tiny_fashion_mnist):  # noqa: F811
    git_commit.cache_clear()  # read once per process: HEAD may have moved since an earlier test
    runs = offline_env / "runs"
    config = make_config(runs, tiny_fashion_mnist, "logger=wandb", "train.steps=40",
                         "train.eval_every=10", "train.checkpoint_every=10", "profile=quick",
                         "experiment=fig2_small_batch", "data.per_worker_batch=4",
                         "data.workers=4", "data.global_batch=16", "train.stop_at_step=20")
    assert run(config)["status"] == "stopped"  # interrupted at step 20, checkpointed
    record = RunRecord(runs, config)
    # The reproduction learns that the run also serves fig3_noniid (its i.i.d. arm).
    for name in ("fig2_small_batch", "fig3_noniid"):
        write_membership(runs, name, [config])
    resumed = {**config, "train": {**config["train"], "stop_at_step": None}}
    summary = run(resumed)
    assert summary["status"] == "completed"

    (first, first_records), (second, second_records) = offline_runs(record.dir)
    # the training's id, from its checkpoint on resume, in the summary: not the record's identity
    assert first["run_id"] == second["run_id"] == summary["attempt_id"] != record.dir.name
    assert json.loads(record.summary_path.read_text())["attempt_id"] == summary["attempt_id"]
    for state, records in ((first, first_records), (second, second_records)):
        (run_record,) = [r["run"] for r in records if r["type"] == "run"]
        assert run_record["run_group"] == "quick/fig2_small_batch"
        assert run_record["job_type"] == "train"
        assert state["config"]["git_commit"].split("+")[0] == head_commit()
        assert state["config"]["record"] == record.dir.name  # the record's identity, to find its runs
        assert state["config"]["data"]["per_worker_batch"] == 4  # nested, as W&B wants it
    assert sorted(first["tags"]) == ["fig2_small_batch"]
    assert sorted(second["tags"]) == ["fig2_small_batch", "fig3_noniid"]
    steps = [[r["history"]["step"]["num"] for r in records if r["type"] == "history"]
             for records in (first_records, second_records)]
    assert steps == [[10, 20], [30, 40]]  # together, the record's evaluations, once each
    local = [json.loads(line)["test_acc"] for line in record.metrics_path.read_text().splitlines()]
    assert second["summary"]["test_acc"]["last"] == local[-1]
    assert (first["state"], second["state"]) == ("finished", "finished")
    # the record's own config carries the commit too (not its identity: same directory)
    assert "git_commit: " + head_commit() in record.config_path.read_text()


def test_a_diverged_run_is_tagged_and_failed_and_per_layer_metrics_are_hidden(
        offline_env, tiny_fashion_mnist):  # noqa: F811
    runs = offline_env / "runs"
    config = make_config(runs, tiny_fashion_mnist, "logger=wandb", "norm=brn", "optim.lr=1e12",
                         "optim.weight_decay=0", "train.lr_schedule=constant",
                         "train.eval_every=1", "norm.relax_start=0")
    summary = run(config)
    assert summary["status"] == "diverged" and summary["diverged_step"] > 1  # evaluated first
    ((state, records),) = offline_runs(RunRecord(runs, config).dir)
    assert "diverged" in state["tags"] and state["exit_code"] == 1
    assert state["summary"]["status"] == "diverged"
    metrics = {r["metric"].get("name"): r["metric"] for r in records if r["type"] == "metric"}
    per_layer = [k for k in metrics if k and k.count("/") >= 2 and k.split("/")[1] != "mean"]
    assert per_layer and all(metrics[k].get("options", {}).get("hidden") for k in per_layer)
    means = [k for k in metrics if k and k.startswith(("norm/mean/", "ema_error/mean"))]
    assert not any(metrics[k].get("options", {}).get("hidden") for k in means)


@pytest.mark.slow  # ~90 s: make test-slow (the interrupted-run test above covers the logger)
def test_make_reproduce_wandb_offline_leaves_one_wandb_run_per_record(offline_env, tiny_fashion_mnist):  # noqa: F811
    """`make reproduce WANDB=1` in miniature: fig3_noniid's BN i.i.d. run is fig1's (BN reads
    no BRN schedule; the BRN arms relax on their own), so the two experiments hold 5
    records; each is one offline W&B run tagged with both experiments where it serves
    both, and one sync line covers them and the aggregate."""
    runs, out = offline_env / "runs", offline_env / "results"
    command = [sys.executable, "scripts/reproduce.py", "--profile", "quick", "--jobs", "2", "--wandb",
               "--experiments", "fig1_baseline fig3_noniid", "--runs", str(runs),
               "--out", str(out), f"dataset.root={tiny_fashion_mnist}",
               "dataset.download=false", "train.steps=6", "train.eval_every=3", "model.width=4",
               "train.checkpoint_every=6", "data.train_eval_size=100", "hydra.sweeper.params.seed=0",
               # the tiny data set holds 5 images of its rarest label: a recipe of 8 x 4 (probe 9 x 4)
               "recipe.noniid.labels_per_batch=8", "recipe.noniid.images_per_label=4",
               "recipe.noniid.eval_labels=9", "recipe.noniid.eval_images=4",
               f"hydra.sweep.dir={offline_env / 'multirun'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = sorted(p.parent for p in runs.glob("*/summary.json"))
    assert len(records) == 5
    for record_dir in records:
        ((state, wandb_records),) = offline_runs(record_dir)
        assert state["run_id"] == json.loads((record_dir / "summary.json").read_text())["attempt_id"]
        assert state["config"]["record"] == record_dir.name
        (run_record,) = [r["run"] for r in wandb_records if r["type"] == "run"]
        asked = yaml.safe_load((record_dir / "config.yaml").read_text())["experiment"]
        shared = record_dir.name.startswith("bn-") and "-iid-" in record_dir.name
        assert sorted(state["tags"]) == (["fig1_baseline", "fig3_noniid"] if shared else [asked])
        assert run_record["run_group"] == f"quick/{asked}"
    sync_lines = [line for line in done.stdout.splitlines() if "wandb sync" in line]
    assert sync_lines == [
        f"wandb: 5 training runs and the aggregate are offline; upload them with: wandb sync "
        f"{runs}/*/wandb/offline-run-* {runs}/wandb/offline-run-*  | view in the terminal: "
        f"wandb leet {records[0] / 'wandb'}"]
    assert "would save workspace 'brn-repro quick'" in done.stdout


@pytest.mark.parametrize("how", ["deleted", "damaged"])
def test_a_record_trained_again_from_step_0_is_a_new_wandb_run(offline_env, tiny_fashion_mnist, how):  # noqa: F811
    """A retrain (the record deleted after a code fix, or a damaged checkpoint) never appends
    to the W&B run of the earlier training, which W&B would cut to its steps past the last."""
    runs = offline_env / "runs"
    config = make_config(runs, tiny_fashion_mnist, "logger=wandb", "train.steps=10", "train.eval_every=5",
                         "train.checkpoint_every=5", "train.stop_at_step=5")
    record = RunRecord(runs, config)
    assert run(config)["status"] == "stopped"
    if how == "deleted":  # the record's files; its W&B directory stays, to compare
        for path in (record.metrics_path, record.checkpoint_path, record.config_path):
            path.unlink()
    else:
        record.checkpoint_path.write_bytes(b"not a checkpoint")
    summary = run({**config, "train": {**config["train"], "stop_at_step": None}})
    assert summary["status"] == "completed"
    (first, _), (second, second_records) = offline_runs(record.dir)
    assert first["run_id"] != second["run_id"] == summary["attempt_id"]
    assert first["config"]["record"] == second["config"]["record"] == record.dir.name
    steps = [r["history"]["step"]["num"] for r in second_records if r["type"] == "history"]
    assert steps == [5, 10]  # the new training from step 0, whole


def test_users_logger_tags_group_and_notes_reach_the_wandb_run(offline_env, tiny_fashion_mnist):  # noqa: F811
    """+logger.tags / +logger.group / +logger.notes: the user's, beside the runner's own tags
    (once a TypeError: build_logger got tags twice)."""
    runs = offline_env / "runs"
    config = make_config(runs, tiny_fashion_mnist, "logger=wandb", "train.steps=10", "train.eval_every=10",
                         "train.checkpoint_every=10", "+logger.tags=[mine]", "+logger.group=my_group",
                         "+logger.notes=first try")
    assert run(config)["status"] == "completed"
    ((state, records),) = offline_runs(RunRecord(runs, config).dir)
    assert sorted(state["tags"]) == ["adhoc", "mine"]
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    assert run_record["run_group"] == "my_group" and run_record["notes"] == "first try"


@pytest.mark.parametrize("logger_group", [None, "logger_group"])
def test_the_configs_tags_notes_and_group_reach_the_wandb_run_and_logger_options_win(
        offline_env, tiny_fashion_mnist, logger_group):  # noqa: F811
    """Top-level ``tags`` / ``notes`` / ``group`` of the config, where it has them: tags added to
    the runner's and logger.tags, notes and group used unless logger.notes / logger.group say."""
    from brn_repro.config import validate
    from brn_repro.distributed import SINGLE_PROCESS
    from brn_repro.train import open_logger

    runs = offline_env / "runs"
    config = make_config(runs, tiny_fashion_mnist, "logger=wandb", "+logger.notes=from logger",
                         "+logger.tags=[mine]", *([f"+logger.group={logger_group}"] if logger_group else []))
    record = RunRecord(runs, config)
    record.attempt_id = "attempt0test"  # as RunRecord.start() or resume() leave it
    theirs = {**config, "tags": ["theirs", "mine"], "notes": "from config", "group": "config_group"}
    open_logger(validate(theirs), record, SINGLE_PROCESS).finish()
    ((state, records),) = offline_runs(record.dir)
    assert state["run_id"] == "attempt0test" and state["config"]["record"] == record.dir.name
    assert sorted(state["tags"]) == ["adhoc", "mine", "theirs"]
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    assert run_record["notes"] == "from logger"
    assert run_record["run_group"] == (logger_group or "config_group")


def test_an_unknown_logger_setting_is_one_line_naming_the_allowed_ones(tmp_path, tiny_fashion_mnist):
    from brn_repro.config import ConfigError, validate

    config = make_config(tmp_path, tiny_fashion_mnist, "logger=wandb", "+logger.colour=blue")
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert str(err.value) == ("logger.colour is not a setting of logger=wandb; it takes project, entity, "
                              "mode, tags, group, notes")
    validate(make_config(tmp_path, tiny_fashion_mnist, "logger=none", "+logger.colour=blue"))  # ignored there
