"""The command line as users type it: a two-job Hydra multirun with W&B offline,
a config mistake that stops before training with one line and exit code 2, the
experiment group (``experiment=NAME``), ``--help``, the ``brn-train`` console script
and its shell completion, and what a sweeper gets back from a run."""

import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
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
        assert state["config"]["norm"]["name"] == run_dir.name.split("-")[0]  # nested, as W&B wants it
        assert state["config"]["data"]["per_worker_batch"] == 4
        assert sync_dir.name.endswith(f"-{summary['attempt_id']}")  # the training's id, in its summary
    assert len(ids) == 2


def test_config_mistake_exits_2_with_one_line_and_no_record(tmp_path, tiny_fashion_mnist):
    done = train(tmp_path, tiny_fashion_mnist, "norm=brn", "norm.r_max=0.5", "logger=none")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: norm.r_max=0.5 must be >= 1 (r_max = 1 is plain batchnorm)"]
    assert not (tmp_path / "runs").exists()


def cli(*args, env=None, command=(sys.executable, "-m", "brn_repro.train")):
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def test_experiment_is_a_config_group_chosen_without_a_plus():
    done = cli("experiment=fig1_baseline", "profile=quick", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    config = OmegaConf.create(done.stdout)
    assert config.experiment == "fig1_baseline" and config.profile_name == "quick"
    # conf/experiment/fig1_baseline.yaml's (a plain `experiment` key would leave the defaults)
    raw = OmegaConf.to_container(config)
    assert raw["data"]["workers"] == "${div:${recipe.global_batch},${data.per_worker_batch}}"
    assert raw["recipe"]["schedule"]["relax_start"] == "${recipe.schedule_per_worker_32.relax_start}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert compose("config").experiment == "adhoc"  # no experiment chosen: ad hoc


def test_experiment_group_mistakes_are_one_line_and_exit_2():
    plus = cli("+experiment=fig1_baseline", "--cfg", "job")
    assert plus.returncode == 2 and plus.stderr.splitlines() == [
        "error: +experiment=fig1_baseline: experiment is in the defaults list; "
        "write experiment=fig1_baseline"]
    # the same check, in process (cli() prints its message and exits 2, as above)
    from brn_repro.cli import check_command_line
    from brn_repro.config import ConfigError

    with pytest.raises(ConfigError) as unknown:
        check_command_line(["-m", "experiment=fig1_baseline,nope", "--cfg", "job"])
    assert str(unknown.value).startswith("experiment=nope: conf/experiment/ has no nope.yaml; "
                                         "choose one of: batch_size_sweep, ")
    with pytest.raises(ConfigError) as norm:
        check_command_line(["norm=brm", "--cfg", "job"])
    assert str(norm.value) == ("norm=brm: conf/norm/ has no brm.yaml; choose one of: "
                               + ", ".join(sorted(p.stem for p in (ROOT / "conf" / "norm").glob("*.yaml"))))
    check_command_line(["-m", "experiment=fig1_baseline,fig2_small_batch", "norm=bn,brn"])  # fine


def test_help_lists_the_common_commands_and_only_the_user_facing_groups():
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    assert "brn-train -m experiment=fig2_small_batch " in done.stdout
    listed = dict(re.findall(r"^(\S+): (.+)$", done.stdout.split("== Config groups ==")[1]
                             .split("==")[0], re.MULTILINE))
    assert set(listed) == {"dataset", "experiment", "logger", "model", "norm", "optim",
                           "profile", "sampler"}
    assert listed["experiment"].split(", ") == sorted(
        p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    for internal in ("fig3", "ma_question", "relax", "conditions"):
        assert internal not in done.stdout.replace("fig3_", "").replace("relaxation", ""), internal
    # the experiments' condition groups are nested under conf/experiment/, none beside the rest
    assert {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()} == set(listed) | {"hydra"}


def test_a_resolver_error_is_one_line_and_exit_2(tmp_path, tiny_fashion_mnist):
    """The issue's command: 128 is no multiple of 3 in the experiment's ${div:...}."""
    done = cli("experiment=fig2_small_batch", "data.per_worker_batch=3",
               "logger=none", f"dataset.root={tiny_fashion_mnist}", "dataset.download=false",
               f"paths.runs={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'outputs'}")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: data.workers: recipe.global_batch=128 is not a multiple of data.per_worker_batch=3; "
        "choose a per-worker batch that divides the global batch, or set data.workers"]
    assert not (tmp_path / "runs").exists()


def test_a_run_without_a_final_accuracy_gives_a_sweeper_nan(monkeypatch):
    from brn_repro import train as module

    cfg = OmegaConf.create({"seed": 0})
    for summary, expected in [({"status": "diverged", "test_acc": None}, math.nan),
                              ({"status": "stopped", "test_acc": None}, math.nan),
                              ({"status": "completed", "test_acc": 81.25}, 81.25)]:
        monkeypatch.setattr(module, "run", lambda config, s=summary: s)
        got = module.main(cfg)
        assert isinstance(got, float)
        assert math.isnan(got) if math.isnan(expected) else got == expected


def test_brn_train_is_a_console_script_with_hydras_shell_completion():
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
                if e.name == "brn-train"]
    from brn_repro import console, train

    # brn_repro.console's wrapper calls train.cli (one line where the harness is missing:
    # tests/test_packaging.py); train.cli itself in a venv installed before that wrapper
    assert entry.load() in (console.brn_train, train.cli)
    script = Path(sys.executable).parent / "brn-train"
    assert script.exists(), "pip install -e . installs brn-train"
    # (`brn-train -sc install=bash` prints the script that sends the shell's queries here)
    line = "brn-train experiment=fig"
    query = cli("-sc", "query=bash", command=(str(script),),
                env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert query.stdout.split() == ["experiment=fig1_baseline", "experiment=fig2_paper_batch",
                                    "experiment=fig2_small_batch", "experiment=fig3_controls",
                                    "experiment=fig3_noniid"]


def test_readmes_composed_config_example_prints_what_readme_shows():
    """README's `--cfg job --resolve | grep` example, run as printed (without its comment)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "--cfg job --resolve | grep" in line)
    command, pattern = lines[start].removeprefix("$ python -m brn_repro.train ").split(" | grep -E ")
    shown = []
    for line in lines[start + 1:]:
        if line.startswith("$ "):
            break
        shown.append(re.sub(r"\s+# .*$", "", line))
    done = cli(*command.split())
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if re.search(pattern.strip('"'), line)] == shown


def test_a_sweep_goes_on_past_a_bad_job_and_ends_with_its_summary(tmp_path, tiny_fashion_mnist):
    """Issue 23: job 0's config error fails job 0 only: job 1 trains, job 0's outcome is
    kept with its reason, the sweep's last line counts them, and the exit is non-zero."""
    done = train(tmp_path, tiny_fashion_mnist, "-m", "logger=none", "optim.lr=-1,0.1")
    assert done.returncode == 1, done.stderr[-2000:]
    reason = "optim.lr=-1 must be a finite number in (0, inf)"
    assert done.stderr.splitlines()[-1] == (
        f"sweep: 2 jobs: 1 completed, 0 diverged, 1 failed (#0 optim.lr=-1: {reason})")
    jobs = [json.loads((tmp_path / "multirun" / str(n) / "job.json").read_text()) for n in (0, 1)]
    assert [(j["status"], j["reason"]) for j in jobs] == [("failed", reason), ("completed", None)]
    (run_dir,) = (tmp_path / "runs").iterdir()  # no directory for the failed job
    assert jobs[1]["run"] == str(run_dir) and (run_dir / "summary.json").exists()
    # the job's messages are in Hydra's job log, not only on the console
    assert f"error: {reason}" in (tmp_path / "multirun" / "0" / "train.log").read_text()


def test_an_experiment_without_m_says_what_it_trains_and_how_to_run_all():
    from brn_repro.train import one_run_of_a_sweep

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        small = compose("config", overrides=["experiment=fig2_small_batch"], return_hydra_config=True)
        noniid = compose("config", overrides=["experiment=fig3_noniid"], return_hydra_config=True)
        adhoc = compose("config", overrides=["norm=brn"], return_hydra_config=True)
    assert one_run_of_a_sweep(small, small.hydra.sweeper.params) == (
        "note: experiment=fig2_small_batch is a sweep of 30 runs over norm, seed; without -m this trains "
        "one, norm=bn seed=0; train them all with: brn-train -m experiment=fig2_small_batch")
    assert "(none of experiment/conditions/fig3)" in one_run_of_a_sweep(noniid, noniid.hydra.sweeper.params)
    assert one_run_of_a_sweep(adhoc, adhoc.hydra.sweeper.params) is None


def test_a_sweeps_size_is_counted_as_hydras_sweeper_splits_it():
    from brn_repro.train import one_run_of_a_sweep, sweep_size

    cfg = OmegaConf.create({"experiment": "mine", "seed": 1, "notes": "a,b"})
    note = one_run_of_a_sweep(cfg, {"seed": "range(1,4)", "notes": "'a,b'"})
    assert note.startswith("note: experiment=mine is a sweep of 3 runs over seed, notes;")  # not 2 x 2
    # range() and choice() are sweeps; a quoted comma and a list are one value each
    assert sweep_size({"seed": "range(1,4)", "notes": "'a,b'", "norm": "bn,brn"}) == 6
    assert sweep_size({"optim.lr": "choice(0.1,0.2)", "tags": "[a,b]", "group": 3}) == 2


def test_tags_notes_and_group_are_recorded_but_not_the_runs_identity(tmp_path, tiny_fashion_mnist):
    labelled = train(tmp_path, tiny_fashion_mnist, "logger=none", "tags=[mine,ablation]", "notes=first try",
                     "group=probe")
    assert labelled.returncode == 0, labelled.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    recorded = OmegaConf.load(run_dir / "config.yaml")
    assert list(recorded.tags) == ["mine", "ablation"] and recorded.notes == "first try" and recorded.group == "probe"
    plain = train(tmp_path, tiny_fashion_mnist, "logger=none")
    assert [d.name for d in (tmp_path / "runs").iterdir()] == [run_dir.name]  # the same run
    assert "already completed" in plain.stderr
    unknown = train(tmp_path, tiny_fashion_mnist, "logger=none", "+foo=1")
    assert unknown.returncode == 2 and unknown.stderr.splitlines()[-1].startswith(
        "error: foo is not a key of the config (a typo, or +key=...?)")
