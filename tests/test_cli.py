"""The command line as users type it: a two-job Hydra multirun with W&B offline,
and a config mistake that stops before training with one line and exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_wandb_logger import read_final_state, read_records

ROOT = Path(__file__).resolve().parents[1]


def offline_env(tmp_path):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_MODE="offline",
               WANDB_CONFIG_DIR=str(home / ".config"), WANDB_CACHE_DIR=str(home / ".cache"),
               WANDB_DATA_DIR=str(home / ".data"))
    return env


def train(tmp_path, root, *args):
    command = [sys.executable, "-m", "brn_repro.train", *args, f"dataset.root={root}",
               "dataset.download=false", f"paths.runs={tmp_path / 'runs'}", "train.progress=false",
               "train.steps=10", "train.eval_every=5", "data.per_worker_batch=4", "data.workers=4",
               "model.width=4", "data.train_eval_size=100", f"hydra.sweep.dir={tmp_path / 'multirun'}",
               f"hydra.run.dir={tmp_path / 'outputs'}"]
    return subprocess.run(command, cwd=ROOT, env=offline_env(tmp_path), capture_output=True,
                          text=True, timeout=300)


def test_two_job_multirun_gives_two_records_and_two_wandb_runs_equal_to_them(tmp_path, tiny_fashion_mnist):
    done = train(tmp_path, tiny_fashion_mnist, "-m", "norm=bn,brn", "logger=wandb")
    assert done.returncode == 0, done.stderr[-2000:]
    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert [d.name.split("-")[0] for d in run_dirs] == ["bn", "brn"]
    ids = set()
    for run_dir in run_dirs:
        (sync_dir,) = (run_dir / "wandb").glob("offline-run-*")
        ids.add(sync_dir.name.rsplit("-", 1)[-1])
        (wandb_file,) = sync_dir.glob("run-*.wandb")
        local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        history = [r["history"] for r in read_records(wandb_file) if r["type"] == "history"]
        logged = [{k: v for k, v in h["item"].items() if not k.startswith("_")} for h in history]
        assert [row["step"] for row in logged] == [row["step"] for row in local] == [5, 10]
        for mine, theirs in zip(local, logged, strict=True):
            for key in ("test_acc", "train_acc", "loss", "weight_norm"):
                assert theirs[key] == mine[key]
        state = read_final_state(wandb_file)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert state["summary"]["test_acc"]["last"] == summary["test_acc"]
        assert state["config"]["norm.type"] == run_dir.name.split("-")[0]
        assert state["config"]["data.per_worker_batch"] == 4
    assert len(ids) == 2


def test_config_mistake_exits_2_with_one_line_and_no_record(tmp_path, tiny_fashion_mnist):
    done = train(tmp_path, tiny_fashion_mnist, "norm=brn", "norm.r_max=0.5", "logger=none")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: norm.r_max=0.5 must be >= 1 (r_max = 1 is plain batchnorm)"]
    assert not (tmp_path / "runs").exists()
