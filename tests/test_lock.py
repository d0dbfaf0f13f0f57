"""Issue 9, part 2: the run lock (``brn_repro.lease``) on a shared filesystem. A lock
from another node, another container's PID namespace or a live process here makes a
run wait and time out in one line; a dead holder's lock is taken over, and the run
then ends with the numbers of one that never met a lock (``test_faults.reference``)."""

import json
import os
import re
import time

import pytest
from test_faults import (  # noqa: F401 (autouse fixture)
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
