"""Issue 9, part 2: the run lock (``brn_repro.lease``) on a shared filesystem. A lock
from another node, another container's PID namespace or a live process here makes a
run wait and time out in one line; a dead holder's lock is taken over, and the run
then ends with the numbers of one that never met a lock (``test_faults.reference``)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import (  # noqa: F401 (autouse fixture)
    ROOT,
    _restore_threads,
    assert_matches,
    main,
    make_config,
    overrides,
    uninterrupted,
)

from brn_repro.lease import HOST, PID_NAMESPACE, Lease, LockError
from brn_repro.records import RunRecord
from brn_repro.train import run


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_fashion_mnist):
    return uninterrupted(tmp_path_factory.mktemp("reference"), tiny_fashion_mnist)


def plant_lock(record: RunRecord, age: float, text: str | None = None, **holder) -> None:
    """A lock file as another process leaves it, its heartbeat ``age`` seconds old."""
    record.dir.mkdir(parents=True, exist_ok=True)
    lock = record.dir / "run.lock"
    lock.write_text(text or json.dumps({"host": "node-b", "pid_namespace": "pid:[1]", "pid": 4_000_000,
                                        "token": "theirs", **holder}))
    os.utime(lock, (time.time() - age, time.time() - age))


@pytest.mark.parametrize("holder", [
    {},                                                       # another node of a shared filesystem
    {"host": HOST},                                           # another container (PID namespace) here
    {"host": HOST, "pid_namespace": PID_NAMESPACE, "pid": os.getpid()},  # a live process here
])
def test_a_live_lock_makes_a_run_wait_then_time_out_in_one_line(tmp_path, tiny_fashion_mnist, monkeypatch,
                                                                capsys, holder):
    argv = overrides(tmp_path / "runs", tiny_fashion_mnist, "paths.lock_timeout=1")
    record = RunRecord(tmp_path / "runs", make_config(tmp_path / "runs", tiny_fashion_mnist))
    plant_lock(record, age=0, **holder)
    started = time.monotonic()
    code, lines = main(argv, monkeypatch, capsys)
    who = f"pid {holder.get('pid', 4_000_000)} on host {holder.get('host', 'node-b')}"
    assert code == 2 and len(lines) == 2 and 1 <= time.monotonic() - started < 10
    assert re.fullmatch(rf"waiting for {record.dir / 'run.lock'}: held by {who}, heartbeat \d+s ago; "
                        r"waiting up to 1s \(paths.lock_timeout\)", lines[0]), lines[0]
    assert lines[1].startswith(f"error: {record.dir} is being trained by {who}")
    assert "paths.lock_timeout" in lines[1]
    assert json.loads((record.dir / "run.lock").read_text())["token"] == "theirs"  # left alone
    assert not record.metrics_path.exists() and not record.checkpoint_path.exists()


@pytest.mark.parametrize("holder,age", [
    ({}, 3600),                                                    # a node whose heartbeat stopped
    ({"host": HOST, "pid_namespace": PID_NAMESPACE, "pid": os.getpid()}, 3600),  # PID reused since
    ({"host": HOST, "pid_namespace": PID_NAMESPACE, "pid": 4_000_000}, 0),  # killed here: PID gone
    ("12345", 3600),                                               # an old PID-only lock
])
def test_a_dead_holders_lock_is_taken_over(tmp_path, tiny_fashion_mnist, reference, capsys, holder, age):
    config = make_config(tmp_path, tiny_fashion_mnist)
    record = RunRecord(tmp_path, config)
    plant_lock(record, age=age, **holder) if isinstance(holder, dict) else plant_lock(record, age, text=holder)
    capsys.readouterr()
    run(config)
    assert f"note: taking over {record.dir / 'run.lock'}" in capsys.readouterr().err
    assert_matches(record, reference)


def test_a_holder_that_loses_its_lock_stops_before_writing(tmp_path):
    lease = Lease(tmp_path / "run.lock", timeout=1, stale=0.2)
    with lease:
        (tmp_path / "run.lock").write_text('{"host": "node-b", "pid": 7}')  # taken over meanwhile
        deadline = time.monotonic() + 10
        while lease.lost is None and time.monotonic() < deadline:  # a heartbeat or two
            time.sleep(0.05)
        with pytest.raises(LockError, match="lost the lock of .* to pid 7 on host node-b"):
            lease.check()
    assert (tmp_path / "run.lock").read_text() == '{"host": "node-b", "pid": 7}'  # not ours to remove


def test_waiters_racing_for_a_stale_lock_hold_it_one_at_a_time(tmp_path):
    import threading

    lock = tmp_path / "run.lock"
    lock.write_text('{"host": "node-b", "pid": 7}')
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    active, most, held = [0], [0], []

    def train_it(i):
        with Lease(lock, timeout=60, stale=5):
            active[0] += 1
            most[0] = max(most[0], active[0])
            time.sleep(0.05)
            held.append(i)
            active[0] -= 1

    threads = [threading.Thread(target=train_it, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and sorted(held) == list(range(6))
    assert not list(tmp_path.iterdir())  # no lock, breaker or candidate left


# Runs the CLI with one function wrapped to SIGSTOP the process (every thread, the
# heartbeat's too) at a chosen moment: before its n-th metrics row, or once the n-th
# checkpoint's temporary file is written (before it is renamed into place).
STOPPER = r"""
import os, signal, sys, runpy
import torch
from brn_repro import records

point, when = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
calls = [0]

def stop(*args, **kwargs):
    calls[0] += 1
    if calls[0] == when:
        os.kill(os.getpid(), signal.SIGSTOP)

def wrap(owner, name, before=None, after=None):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if before:
            before()
        result = original(*args, **kwargs)
        if after:
            after()
        return result
    setattr(owner, name, wrapper)

if point == "metrics row":
    wrap(records.RunRecord, "log_metrics", before=stop)
elif point == "checkpoint":
    wrap(torch, "save", after=stop)
sys.argv[0] = "brn_repro.train"
runpy.run_module("brn_repro.train", run_name="__main__", alter_sys=True)
"""


def wait_until_stopped(pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the process never stopped"
        time.sleep(0.05)


@pytest.mark.parametrize("point,when", [
    ("metrics row", 3),  # paused before the row of step 15: the other resumes from step 10
    ("checkpoint", 1),   # paused with the step-10 checkpoint written, not renamed: the other starts afresh
])
def test_a_paused_holder_writes_nothing_once_another_finished_the_run(tmp_path, tiny_fashion_mnist, reference,
                                                                    capsys, point, when):
    """Issue 21.2: a holder paused (SIGSTOP) past paths.lock_stale is taken over; the other
    process finishes the run; continued (SIGCONT), the first stops in one line, exit 2,
    before any write: the finished record keeps the uninterrupted numbers."""
    runs, extra = tmp_path / "runs", "paths.lock_stale=1"
    command = [sys.executable, "-c", STOPPER, point, str(when), *overrides(runs, tiny_fashion_mnist, extra),
               f"hydra.run.dir={tmp_path / 'out'}"]
    paused = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(paused.pid)
        config = make_config(runs, tiny_fashion_mnist, extra)
        capsys.readouterr()
        assert run(config)["status"] == "completed"
        assert "note: taking over" in capsys.readouterr().err
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        stderr = paused.communicate(timeout=120)[1]
    record = RunRecord(runs, config)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert paused.returncode == 2 and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith(f"error: lost the lock of {record.dir} to nobody (the lock file was removed)")
    assert_matches(record, reference)
