"""brn_repro.loggers: W&B offline runs read back with wandb's own reader, mode resolution, config.

Everything runs offline: credentials are removed from the environment (no
WANDB_API_KEY, HOME and NETRC point into tmp_path), WANDB_MODE=offline, and
only 3 ``wandb.init`` calls are made. The written ``.wandb`` transaction log is
read back with ``wandb leet inspect --json`` (wandb's own reader) so the test
checks what W&B would actually upload, not what our code believes it sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from brn_repro.loggers import (
    NullLogger,
    WandbLogger,
    build_logger,
    offline_hint,
    resolve_wandb_mode,
)
from brn_repro.records import flatten_config

FAKE_API_KEY = "0123456789abcdef0123456789abcdef01234567"
SECRET_VALUES = ("sk-live-SECRET-VALUE-1", "hf_TOKEN_VALUE_2", "hunter2-PASSWORD-3", "s3cr3t-4")

NESTED_CONFIG = {
    "experiment": "brn_small_batch",
    "seed": 3,
    "norm": {"name": "brn", "r_max": 3.0, "d_max": 5.0, "momentum": 0.01},
    "data": {"per_worker_batch": 4, "workers": 8},
    "optim": {"name": "sgd", "lr": 0.1, "nesterov": True},
    "train": {"steps": 20, "step_milestones": [0.5, 0.75], "ema_decay": None},
    "passage": "none",  # near a credential word ("pass"), not one: must stay
    "wandb": {"project": "brn-repro", "api_key": SECRET_VALUES[0], "apiKey": SECRET_VALUES[0]},
    "hub": {"HF_TOKEN": SECRET_VALUES[1], "repo": "x/y"},
    "db": {"password": SECRET_VALUES[2]},
    "secrets": {"anything": SECRET_VALUES[3]},
}
EXPECTED_FLAT = {
    "experiment": "brn_small_batch",
    "seed": 3,
    "norm.name": "brn",
    "norm.r_max": 3.0,
    "norm.d_max": 5.0,
    "norm.momentum": 0.01,
    "data.per_worker_batch": 4,
    "data.workers": 8,
    "optim.name": "sgd",
    "optim.lr": 0.1,
    "optim.nesterov": True,
    "train.steps": 20,
    "train.step_milestones": [0.5, 0.75],
    "train.ema_decay": None,
    "passage": "none",
    "wandb.project": "brn-repro",
    "hub.repo": "x/y",
}
# What W&B holds of NESTED_CONFIG: the same nesting, the secrets left out.
EXPECTED_CONFIG = {**{k: v for k, v in NESTED_CONFIG.items() if k not in ("db", "secrets")},
                   "wandb": {"project": "brn-repro"}, "hub": {"repo": "x/y"}}
# (step, metrics) as the runner would log them: train loss and eval accuracy in separate calls.
LOGGED = [
    (0, {"loss": 2.25}),
    (0, {"test_acc": 0.125}),
    (10, {"loss": 1.5, "test_acc": 0.5}),
    (20, {"loss": 0.75}),
    (20, {"test_acc": 0.375}),
]
# The record's summary; its accuracies are W&B's max / last summaries of the history instead.
FINAL_SUMMARY = {"status": "completed", "test_acc": 0.875, "loss": 0.5, "steps_done": 20}


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """An environment in which wandb can find no credentials and cannot go online."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))  # does not exist
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / ".cache" / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / ".local" / "wandb"))
    # Fast, quiet offline init: no system-stats sampler, git probing, code saving or console capture.
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    yield tmp_path
    if "wandb" in sys.modules:  # drop the wandb service so the next test starts from its own env
        sys.modules["wandb"].teardown()


def leet_inspect(wandb_file: Path, *extra: str) -> str:
    """Run wandb's own reader of the .wandb transaction log."""
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *extra, str(wandb_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"wandb leet inspect failed: {done.stderr}"
    return done.stdout


def read_records(wandb_file: Path) -> list[dict]:
    return [json.loads(line) for line in leet_inspect(wandb_file).splitlines() if line.strip()]


def read_final_state(wandb_file: Path) -> dict:
    return json.loads(leet_inspect(wandb_file, "--summary"))


def the_wandb_file(sync_dir: Path) -> Path:
    (wandb_file,) = sync_dir.glob("run-*.wandb")
    return wandb_file


# ------------------------------------------------------------------- pure functions


def test_flatten_config_gives_dotted_keys_and_drops_secrets():
    assert flatten_config(NESTED_CONFIG) == EXPECTED_FLAT
    assert flatten_config({"a": {"b": {"c": 1}}}, prefix="cfg.") == {"cfg.a.b.c": 1}


def test_flatten_config_scrubs_secrets_inside_lists_and_the_live_api_key(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    cfg = {"callbacks": [{"name": "x", "token": "t0k"}], "notes": f"key={FAKE_API_KEY}", "k": 1}
    assert flatten_config(cfg) == {"callbacks": [{"name": "x"}], "k": 1}


@pytest.mark.parametrize("kind,main", [("none", True), ("wandb", False)])
def test_null_logger_does_not_import_wandb(tmp_path, kind, main):
    """``logger=none``, and any logger off rank 0 (``main=False``): the NullLogger."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from brn_repro.loggers import NullLogger, build_logger\n"
        f"logger = build_logger({kind!r}, main={main}, config={{'a': 1}}, run_dir=Path({str(tmp_path)!r}),"
        " run_name='r', group=None)\n"
        "assert isinstance(logger, NullLogger)\n"
        "logger.log({'loss': 1.0}, step=0); logger.summary({'status': 'ok'}); logger.finish()\n"
        "assert 'wandb' not in sys.modules, 'kind=none imported wandb'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.iterdir())  # and wrote nothing


def test_an_unknown_logger_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="logger.name='tensorboard' is not a logger; use one of wandb, none"):
        build_logger("tensorboard", config={}, run_dir=tmp_path, run_name="r", group=None)


# ----------------------------------------------------------------------- mode resolution


def test_auto_mode_without_credentials_is_offline_with_one_hint_line(
    offline_env, monkeypatch, capsys
):
    monkeypatch.delenv("WANDB_MODE")
    run_dir = offline_env / "runs" / "job0"
    assert resolve_wandb_mode("auto", run_dir=run_dir) == "offline"
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [offline_hint(run_dir, "no credentials")]
    assert captured.err == (
        f"wandb: offline (no credentials); sync later with: wandb sync {run_dir}/wandb/offline-run-*"
        f"  | view now in the terminal: wandb leet {run_dir}/wandb\n"
    )


def test_auto_mode_with_api_key_is_online_and_silent(offline_env, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    assert resolve_wandb_mode("auto", run_dir=offline_env) == "online"
    assert capsys.readouterr().err == ""


def test_auto_mode_with_netrc_entry_is_online(offline_env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    netrc_file = offline_env / "home" / ".netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_API_KEY}\n")
    netrc_file.chmod(0o600)
    assert resolve_wandb_mode("auto", announce=False) == "online"
    netrc_file.write_text(f"machine example.com\n  login user\n  password {FAKE_API_KEY}\n")
    assert resolve_wandb_mode("auto", announce=False) == "offline"


def test_wandb_mode_env_and_explicit_mode_are_honoured(offline_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode("auto", run_dir=offline_env) == "offline"
    assert "(WANDB_MODE=dryrun)" in capsys.readouterr().err
    assert resolve_wandb_mode("online") == "online"  # an explicit argument beats the env
    assert resolve_wandb_mode("OFFLINE", announce=False) == "offline"
    with pytest.raises(ValueError, match="unknown wandb mode"):
        resolve_wandb_mode("cloud")


# ----------------------------------------------------------------- offline W&B runs


def test_offline_run_reads_back_with_wandb_reader(offline_env):
    run_dir = offline_env / "runs" / "brn_small_batch" / "job0"
    logger = build_logger(
        "wandb",
        config=NESTED_CONFIG,
        run_dir=run_dir,
        run_name="brn-b4-s3",
        group="brn_small_batch",
        tags=["brn", "small-batch"],
    )
    assert isinstance(logger, WandbLogger) and not isinstance(logger, NullLogger)
    assert logger.mode == "offline"
    for step, metrics in LOGGED:
        logger.log(metrics, step=step)
    logger.summary(FINAL_SUMMARY)
    logger.finish(exit_code=0)
    logger.finish(exit_code=0)  # idempotent

    assert logger.sync_dir.parent == run_dir / "wandb"
    assert logger.sync_dir.name.startswith("offline-run-")
    wandb_file = the_wandb_file(logger.sync_dir)

    records = read_records(wandb_file)
    history = [
        (
            rec["history"]["step"]["num"],
            {k: v for k, v in rec["history"]["item"].items() if not k.startswith("_")},
        )
        for rec in records
        if rec["type"] == "history"
    ]
    expected_rows: dict[int, dict] = {}
    for step, metrics in LOGGED:
        expected_rows.setdefault(step, {"step": step}).update(metrics)
    assert history == sorted(expected_rows.items())

    # Plots use the training step as their x axis.
    metric_defs = [rec["metric"] for rec in records if rec["type"] == "metric"]
    assert {"glob_name": "*", "step_metric": "step"}.items() <= next(
        m for m in metric_defs if m.get("glob_name") == "*"
    ).items()

    state = read_final_state(wandb_file)
    config = {k: v for k, v in state["config"].items() if not k.startswith("_")}
    assert config == EXPECTED_CONFIG  # nested, as W&B wants it: no dotted keys
    # The final summary wins over the last history row (loss 0.75 logged at step 20); the
    # accuracy keeps its best and last values (define_metric summary="max,last").
    assert {k: state["summary"][k] for k in ("status", "loss", "steps_done")} == {
        "status": "completed", "loss": 0.5, "steps_done": 20}
    assert state["summary"]["test_acc"] == {"max": 0.5, "last": 0.375}
    assert (state["name"], state["project"], state["state"], state["exit_code"]) == (
        "brn-b4-s3",
        "brn-repro",
        "finished",
        0,
    )
    assert sorted(state["tags"]) == ["brn", "small-batch"]
    (run_record,) = [rec["run"] for rec in records if rec["type"] == "run"]
    assert run_record["run_group"] == "brn_small_batch"

    raw = wandb_file.read_bytes()
    for secret in (*SECRET_VALUES, "api_key", "apiKey", "HF_TOKEN", "password", "secrets"):
        assert secret.encode() not in raw, f"{secret!r} leaked into {wandb_file}"


def test_two_runs_in_one_process_are_distinct_offline_runs(offline_env):
    """Hydra multirun runs its jobs in one process: each job must become its own W&B run.

    Job 0 is left unfinished when job 1 starts (as after a crash that skipped
    its ``finish``): job 1 must still get a new run, not job 0's, and job 0's
    late ``finish`` must be harmless.
    """
    run_dir = offline_env / "multirun"  # shared on purpose: separation must come from wandb itself
    loggers = []
    for job in range(2):
        logger = build_logger(
            "wandb", config={"job": job}, run_dir=run_dir, run_name=f"job{job}", group="sweep"
        )
        logger.log({"loss": float(job)}, step=0)
        loggers.append(logger)
    for logger in reversed(loggers):
        logger.finish()

    assert loggers[0].run_id != loggers[1].run_id
    assert loggers[0].sync_dir != loggers[1].sync_dir
    offline_dirs = sorted(p for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())
    assert offline_dirs == sorted(logger.sync_dir for logger in loggers)
    for job, logger in enumerate(loggers):
        state = read_final_state(the_wandb_file(logger.sync_dir))
        assert (state["run_id"], state["name"]) == (logger.run_id, f"job{job}")
        assert state["config"]["job"] == job
        assert state["summary"]["loss"] == float(job)
