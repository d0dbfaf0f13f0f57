"""Issue 21, part 6: SIGTERM (SLURM's preemption) and SIGINT (Ctrl-C). A run stops at its next
step boundary with a checkpoint and one line, exits 143 / 130, and its rerun ends with the
numbers of a run never stopped; scripts/reproduce.py and a ``-m`` sweep pass the signal on,
wait, and leave no process of their tree behind (read from /proc: psutil is no dependency)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import assert_matches, make_config, overrides, reference  # noqa: F401 (a fixture)

from brn_repro.records import RunRecord
from brn_repro.train import run

ROOT = Path(__file__).resolve().parents[1]

# The CLI with the training batch of step ``when`` sending ``signum`` to its own process.
SELF_SIGNAL = r"""
import os, runpy, sys
import brn_repro.data as data_module

signum, when = int(sys.argv.pop(1)), int(sys.argv.pop(1))
original, calls = data_module.TrainingData.train_batch, [0]

def train_batch(self):
    calls[0] += 1
    if calls[0] == when:
        os.kill(os.getpid(), signum)
    return original(self)

data_module.TrainingData.train_batch = train_batch
sys.argv[0] = "brn_repro.train"
runpy.run_module("brn_repro.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_run_at_a_step_with_a_checkpoint_and_the_rerun_matches(
        tmp_path, tiny_fashion_mnist, reference, signum):  # noqa: F811
    runs = tmp_path / "runs"
    command = [sys.executable, "-c", SELF_SIGNAL, str(int(signum)), "13", *overrides(runs, tiny_fashion_mnist),
               f"hydra.run.dir={tmp_path / 'out'}"]
    stopped = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    record = RunRecord(runs, make_config(runs, tiny_fashion_mnist))
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert stopped.stderr.splitlines() == [f"stopped by {signal.Signals(signum).name} at step 13: checkpointed in "
                                           f"{record.dir}; rerun the same command to resume"]
    assert record.load_checkpoint()["step"] == 13 and record.summary() is None
    assert not list(record.dir.glob("run.lock*"))
    run(make_config(runs, tiny_fashion_mnist))
    assert_matches(record, reference)


# --- a reproduction's process tree -------------------------------------------------------


def processes() -> dict[int, tuple[int, int, str]]:
    """The live processes: {pid: (parent pid, session, command line)}."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid, _pgrp, sid = text[text.rindex(")") + 2:].split()[:4]
        if state != "Z":  # a zombie is gone, its parent not yet told
            found[int(stat.parent.name)] = (int(ppid), int(sid), command)
    return found


def tree(top: int) -> dict[int, tuple[int, int, str]]:
    """``top`` and its descendants."""
    table, found = processes(), {}
    level = {top} & table.keys()
    while level:
        found.update({pid: table[pid] for pid in level})
        level = {pid for pid, (ppid, _, _) in table.items() if ppid in level} - found.keys()
    return found


def left(sessions: set[int]) -> dict[int, str]:
    """Live processes of ``sessions`` (an orphan keeps its session when its parent dies)."""
    return {pid: command for pid, (_, sid, command) in processes().items() if sid in sessions}


TINY_LONG = ["profile=quick", "logger=none", "train.steps=100000", "train.eval_every=5", "train.checkpoint_every=1000",
             "model.width=4", "data.train_eval_size=100", "train.compile=false", "train.progress=false",
             "train.eval_batch=300"]


def start(kind: str, tmp_path: Path, data_root: Path) -> subprocess.Popen:
    """A reproduction (scripts/reproduce.py) or a plain sweep (``-m`` on the joblib launcher)
    of fig1_baseline's seed 0 (2 runs) in a session of its own, from a cwd outside the repository."""
    data = [f"dataset.root={data_root}", "dataset.download=false", *TINY_LONG]
    if kind == "reproduce":
        command = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--runs", "runs", "--out", "results",
                   "--experiments", "fig1_baseline", "hydra.sweeper.params.seed=0", *data,
                   f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    else:
        command = [sys.executable, "-m", "brn_repro.train", "-m", "experiment=fig1_baseline", "seed=0",
                   "hydra/launcher=local", "hydra.launcher.n_jobs=2", "train.threads=1",
                   f"paths.runs={tmp_path / 'runs'}", *data, f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    with (tmp_path / "out.txt").open("w") as out:
        return subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


TREES = [("reproduce", signal.SIGTERM, "process"), ("reproduce", signal.SIGINT, "group"),
         ("sweep", signal.SIGTERM, "process"), ("sweep", signal.SIGINT, "group")]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("kind,signum,to", [pytest.param(*t, marks=[] if t[0] == "reproduce" and t[2] == "process"
                                                         else [pytest.mark.slow]) for t in TREES],
                         ids=[f"{k}-{signal.Signals(s).name}-to-{t}" for k, s, t in TREES])
def test_a_signal_to_a_reproduction_leaves_no_process_behind(tmp_path, tiny_fashion_mnist, kind, signum, to):
    """SIGTERM to the top process (SLURM, kill), SIGINT to its process group (Ctrl-C in a
    terminal): the runs stop at their next step with a checkpoint, the top process exits
    128 + signum with one line, and no process of the tree remains."""
    top = start(kind, tmp_path, tiny_fashion_mnist)
    runs, sessions = tmp_path / "runs", {top.pid}
    try:
        until(lambda: len(list(runs.glob("*/metrics.jsonl"))) == 2, 240, "both runs training")
        started = tree(top.pid)
        sessions |= {sid for _, sid, _ in started.values()}
        assert len(started) >= 4, started  # the top, (the sweep,) 2 workers, resource trackers
        os.killpg(top.pid, signum) if to == "group" else top.send_signal(signum)
        assert top.wait(timeout=120) == 128 + signum
        until(lambda: not left(sessions), 20, f"{len(started)} processes gone: {left(sessions)}")
    finally:
        for pid in left(sessions):  # only on failure: what this test started
            os.kill(pid, signal.SIGKILL)
    output = (tmp_path / "out.txt").read_text()
    logs = output + "".join(p.read_text() for p in runs.glob("logs/*.log"))
    assert "Traceback" not in logs and "KeyboardInterrupt" not in logs, logs[-3000:]
    name = signal.Signals(signum).name
    assert logs.count(f"stopped by {name} at step ") == 2, logs[-3000:]
    if kind == "reproduce":
        assert output.rstrip().splitlines()[-1].startswith(f"stopped by {name}: fig1_baseline's runs stopped"), output
    for config in runs.glob("*/config.yaml"):  # both runs, stopped with a checkpoint
        assert (config.parent / "checkpoint.pt").exists() and not (config.parent / "summary.json").exists()
