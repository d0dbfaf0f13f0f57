"""Issue 21, parts 5, 7 and 8: which runs the report reads. A reproduction's membership
survives moving, copying and another cwd, two reproductions never lose each other's
experiments, runs are found by their config whoever trained them, every run left out is
named with its reason, and bad input to the driver or the aggregator is one line, exit 2.

The driver (scripts/reproduce.py) runs in this process with its sweeps replaced by
``FakeSweep`` (nothing trains): the records are written beforehand, as a sweep leaves them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from script_modules import load_script

from brn_repro.analysis import aggregate as aggregate_module
from brn_repro.analysis.aggregate import load_runs
from brn_repro.records import RunRecord

ROOT = Path(__file__).resolve().parents[1]
ONE_SEED = "hydra.sweeper.params.seed=0"  # 2 runs per experiment: bn and brn


def load_driver():
    return load_script("reproduce")


driver = load_driver()


class FakeSweep:
    """Stands in for the sweeps' subprocess.Popen: notes the command, trains nothing."""

    commands: list[list[str]] = []

    def __init__(self, command, **kwargs):
        self.args, self.pid, self.returncode = command, os.getpid(), 0
        FakeSweep.commands.append(command)

    def wait(self, timeout=None):
        return 0

    def poll(self):
        return 0

    def communicate(self, input=None, timeout=None):
        return None, None

    def kill(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def reproduce(argv, monkeypatch, capsys, aggregate=False):
    """scripts/reproduce.py ``argv`` in this process: (exit code, stdout, stderr lines)."""
    FakeSweep.commands = []
    monkeypatch.setattr(subprocess, "Popen", FakeSweep)
    if not aggregate:
        monkeypatch.setattr(aggregate_module, "aggregate", lambda *a, **k: Path("REPORT.md"))
    monkeypatch.setattr(sys, "argv", ["reproduce.py", *argv])
    capsys.readouterr()
    code = 0
    try:
        driver.main()
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def record(root, config, acc=80.0):
    """A completed record of ``config``, as its run leaves it."""
    run = RunRecord(root, config)
    run.start()
    step = config["train"]["eval_every"]  # its first evaluation: a record that reads back up to there
    run.log_metrics({"step": step, "loss": 1.0, "test_acc": acc, "train_acc": acc})
    run.write_summary({"status": "completed", "test_acc": acc, "train_acc": acc, "minibatch_stats_acc": None,
                       "best_test_acc": acc, "steps_done": step, "wall_seconds": 1.0, "diverged_step": None,
                       "images_per_second": 1.0})
    return run


@pytest.fixture(scope="module")
def plans():
    """What a sweep of each experiment trains (one seed): the configs Hydra's multirun composes."""
    return {name: driver.expand(name, ["profile=quick", ONE_SEED]) for name in ("fig1_baseline", "fig2_small_batch")}


def recorded(root, plans, *names):
    for name in names or plans:
        for config in plans[name]:
            record(root, config)


def statuses(runs_root):
    runs = load_runs(runs_root)[0]
    return {(row.experiment, row["norm.name"]): row.status for _, row in runs.iterrows()}


ALL_DONE = {(e, n): "completed" for e in ("fig1_baseline", "fig2_small_batch") for n in ("bn", "brn")}


def test_a_moved_runs_directory_keeps_its_runs(tmp_path, plans, monkeypatch, capsys):
    recorded(tmp_path / "runs", plans)
    code, out, _ = reproduce(["--runs", str(tmp_path / "runs"), "--experiments", "fig1_baseline fig2_small_batch",
                              ONE_SEED], monkeypatch, capsys)
    assert code == 0 and "4 runs in 2 experiments, 4 already recorded" in out
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    assert statuses(tmp_path / "moved") == ALL_DONE


def test_a_copied_runs_directory_reads_its_own_records(tmp_path, plans, monkeypatch, capsys):
    recorded(tmp_path / "runs", plans)
    reproduce(["--runs", str(tmp_path / "runs"), "--experiments", "fig1_baseline", ONE_SEED], monkeypatch, capsys)
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")
    changed = record(tmp_path / "copy", plans["fig1_baseline"][0], acc=12.5)
    runs = load_runs(tmp_path / "copy")[0]
    assert set(runs["run_dir"].map(lambda d: Path(d).parent)) == {tmp_path / "copy"}
    assert runs.set_index("run_dir").loc[str(changed.dir), "test_acc"] == 12.5


def test_a_relative_runs_directory_reads_the_same_from_another_cwd(tmp_path, plans, monkeypatch, capsys):
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    recorded(tmp_path / "here" / "runs" / "quick", plans)
    monkeypatch.chdir(tmp_path / "here")
    reproduce(["--runs", "runs/quick", "--experiments", "fig1_baseline fig2_small_batch", ONE_SEED],
              monkeypatch, capsys)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert statuses(tmp_path / "here" / "runs" / "quick") == ALL_DONE


# Two drivers of different experiments on one runs directory, each held just before it
# writes its membership until the other is there too (a slow shared filesystem): then
# each writes and stops (nothing else is under test).
TWO_WRITERS = r"""
import os, runpy, sys, time
from pathlib import Path
import brn_repro.files as files

barrier = Path(sys.argv.pop(1))
real = files.write_atomic

def held(path, data):
    path = Path(path)
    if path.parent.name != "experiments":
        return real(path, data)
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 120
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    real(path, data)
    os._exit(0)

files.write_atomic = held
sys.argv[0] = "scripts/reproduce.py"
runpy.run_path("scripts/reproduce.py", run_name="__main__")
"""


def test_two_reproductions_of_different_experiments_keep_both(tmp_path):
    from brn_repro.records import read_membership

    (tmp_path / "barrier").mkdir()
    drivers = [subprocess.Popen([sys.executable, "-c", TWO_WRITERS, str(tmp_path / "barrier"), "--runs",
                                 str(tmp_path / "runs"), "--experiments", name, ONE_SEED],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in ("fig1_baseline", "fig2_small_batch")]
    for process in drivers:
        out = process.communicate(timeout=300)[0]
        assert process.returncode == 0, out[-3000:]
    assert sorted(read_membership(tmp_path / "runs")) == ["fig1_baseline", "fig2_small_batch"]


def test_runs_a_plain_sweep_trained_into_a_reproduction_count(tmp_path, plans, monkeypatch, capsys):
    """``python -m brn_repro.train -m experiment=fig2_small_batch`` into a runs directory whose
    reproduction ran fig1_baseline only: its runs are fig2_small_batch's."""
    recorded(tmp_path / "runs", plans, "fig1_baseline")
    reproduce(["--runs", str(tmp_path / "runs"), "--experiments", "fig1_baseline", ONE_SEED], monkeypatch, capsys)
    recorded(tmp_path / "runs", plans, "fig2_small_batch")  # the -m sweep
    assert statuses(tmp_path / "runs") == ALL_DONE


def left_out(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]


def test_every_run_the_report_leaves_out_is_named_with_its_reason(tmp_path, plans, monkeypatch, capsys):
    root = tmp_path / "runs"
    recorded(root, plans)
    reproduce(["--runs", str(root), "--experiments", "fig1_baseline fig2_small_batch", ONE_SEED], monkeypatch, capsys)
    other = json.loads(json.dumps(plans["fig2_small_batch"][0]))
    other["train"]["steps"] = 40  # trained for fig2_small_batch, not as its plan says
    stray = record(root, other)
    lost = record(root, {**plans["fig1_baseline"][0], "seed": 7})
    lost.config_path.unlink()  # a completed run without its config.yaml
    planned = RunRecord(root, plans["fig1_baseline"][1])
    planned.config_path.unlink()  # a planned member: its directory name is its identity
    capsys.readouterr()
    assert statuses(root) == ALL_DONE
    warnings = left_out(capsys)
    assert len(warnings) == 2, warnings
    (stray_line,) = [w for w in warnings if stray.dir.name in w]
    assert "fig2_small_batch" in stray_line and "train.steps=40" in stray_line
    (lost_line,) = [w for w in warnings if lost.dir.name in w]
    assert "config.yaml is missing" in lost_line


def test_a_completed_run_without_config_yaml_is_named(tmp_path, plans, capsys):
    lost = record(tmp_path, plans["fig1_baseline"][0])
    record(tmp_path, plans["fig1_baseline"][1])
    lost.config_path.unlink()
    capsys.readouterr()
    runs = load_runs(tmp_path)[0]
    assert list(runs["norm.name"]) == ["brn"]
    (warning,) = left_out(capsys)
    assert lost.dir.name in warning and "config.yaml is missing" in warning


def test_a_damaged_summary_is_not_recorded_and_its_sweep_runs(tmp_path, plans, monkeypatch, capsys):
    recorded(tmp_path / "runs", plans, "fig1_baseline")
    RunRecord(tmp_path / "runs", plans["fig1_baseline"][0]).summary_path.write_text('{"status": "compl')
    code, out, _ = reproduce(["--runs", str(tmp_path / "runs"), "--experiments", "fig1_baseline", ONE_SEED],
                             monkeypatch, capsys)
    assert code == 0 and "2 runs in 1 experiments, 1 already recorded" in out
    assert len(FakeSweep.commands) == 1 and "experiment=fig1_baseline" in FakeSweep.commands[0]


def test_an_experiment_name_that_is_a_path_writes_nothing_outside_out(tmp_path, plans, capsys):
    config = json.loads(json.dumps(plans["fig1_baseline"][0]))
    config["experiment"] = "../../escaped"
    bad = record(tmp_path / "runs", config)
    record(tmp_path / "runs", plans["fig1_baseline"][1])
    capsys.readouterr()
    aggregate_module.aggregate(tmp_path / "runs", tmp_path / "a" / "b" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "runs"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
    (warning,) = left_out(capsys)
    assert bad.dir.name in warning and "'../../escaped'" in warning


def aggregate_main(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["aggregate", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        aggregate_module.main()
    return exit_.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_damaged_membership_is_one_line_and_exit_2(tmp_path, plans, monkeypatch, capsys):
    root = tmp_path / "runs"
    recorded(root, plans)
    reproduce(["--runs", str(root), "--experiments", "fig1_baseline fig2_small_batch", ONE_SEED], monkeypatch, capsys)
    (damaged,) = root.glob("experiments/fig2_small_batch.json")
    damaged.write_text(damaged.read_text()[:100])
    monkeypatch.undo()  # the aggregation itself
    code, lines = aggregate_main(["--runs", str(root), "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(damaged) in lines[0], lines
    assert "--experiments fig2_small_batch" in lines[0]
    # the driver of another experiment aggregates them all: the same line
    code, _, lines = reproduce(["--runs", str(root), "--out", str(tmp_path / "out"), "--experiments",
                                "fig1_baseline", ONE_SEED], monkeypatch, capsys, aggregate=True)
    assert code == 2 and len(lines) == 1 and str(damaged) in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_aggregate_out_that_is_a_file_is_one_line_and_exit_2(tmp_path, plans, monkeypatch, capsys):
    recorded(tmp_path / "runs", plans, "fig1_baseline")
    (tmp_path / "afile").write_text("x")
    code, lines = aggregate_main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "afile")],
                                 monkeypatch, capsys)
    assert code == 2 and lines == [f"error: --out={tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a "
                                   "directory; point --out at a directory"]


def test_an_unknown_experiment_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    code, _, lines = reproduce(["--runs", str(tmp_path / "runs"), "--experiments", "nosuch"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "nosuch" in lines[0], lines
    assert "fig1_baseline" in lines[0]  # the choices
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["a,b", "ünïcode runs"])
def test_a_runs_directory_with_a_comma_or_unicode_is_quoted_for_hydra(tmp_path, plans, monkeypatch, capsys, name):
    root = tmp_path / name
    recorded(root, plans, "fig1_baseline")
    code, out, lines = reproduce(["--runs", str(root), "--experiments", "fig1_baseline", ONE_SEED],
                                 monkeypatch, capsys)
    assert code == 0 and "2 runs in 1 experiments, 2 already recorded" in out, lines
    assert statuses(root) == {("fig1_baseline", "bn"): "completed", ("fig1_baseline", "brn"): "completed"}


PROBE = """# @package _global_
experiment: probe
data:
  per_worker_batch: 8
hydra:
  sweeper:
    params:
      seed: range(1,4)
      paths.data: "'/d/a,b',/d/c"
"""


def test_a_sweep_is_split_as_hydra_splits_it(tmp_path):
    """``range()`` and a quoted comma in an experiment's sweep: Hydra's override parser, not a split on commas."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "experiment" / "probe.yaml").write_text(PROBE)
    configs = driver.expand("probe", ["profile=quick"], conf)
    assert sorted((c["seed"], c["paths"]["data"]) for c in configs) == [
        (seed, data) for seed in (1, 2, 3) for data in ("/d/a,b", "/d/c")]
