"""SIGTERM and SIGINT: stop at a safe point, pass the signal on, exit with 128 + its number.

SLURM preempts a job with SIGTERM (then SIGKILL after a grace period); Ctrl-C sends SIGINT.
Python's defaults (die at once; a KeyboardInterrupt traceback) lose the steps since the last
checkpoint and leave a sweep's workers training as orphans. Here a process notes the signal
instead: a training run stops at its next step boundary with a checkpoint
(``brn_repro.train``); a process that started others passes the signal on to them
(``scripts/reproduce.py`` to its sweep's session, the ``-m`` parent to its joblib workers),
waits for them, and exits with the conventional code (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: int | None = None  # the first stop signal noted
_noting = False  # this process's handlers are ours
_in_training = False  # a run trains in this process (``training``)


def received() -> int | None:
    """The first SIGTERM or SIGINT noted in this process, or None."""
    return _received


def exit_code(signum: int) -> int:
    return 128 + signum


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(on_signal: Callable[[int], None] | None) -> Callable:
    def note(signum: int, _frame: object) -> None:
        global _received
        if _received is None:
            _received = signum
        if on_signal is not None:
            on_signal(signum)
    return note


@contextmanager
def noted(on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT are noted (``received``) and ``on_signal(signum)`` runs
    on each; the handlers before are back on leaving. Only the main thread can set handlers,
    and handlers already ours stay: elsewhere this changes nothing."""
    global _received, _noting
    if _noting or threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _noting = None, True
    previous = {signum: signal.signal(signum, _handler(on_signal)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received, _noting = None, False


def note_from_now() -> None:
    """As ``noted``, for the rest of this process: a sweep's worker (joblib's loky process)
    that got a signal starts none of the jobs it is handed afterwards."""
    global _noting
    if not _noting and threading.current_thread() is threading.main_thread():
        _noting = True
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handler(None))


@contextmanager
def training() -> Iterator[None]:
    """A run trains in this process while inside: a signal stops it at its next step, with
    a checkpoint. Outside (composing, loading data, waiting for a run's lock) there is
    nothing to checkpoint, and ``stop_unless_training`` stops the process at once."""
    global _in_training
    _in_training = True
    try:
        yield
    finally:
        _in_training = False


def stop_unless_training(signum: int) -> None:
    """Exit now, 128 + ``signum``, unless a run trains in this process (it stops itself)."""
    if not _in_training:
        print(f"stopped by {name(signum)}: no run was training; rerun the same command to go on", file=sys.stderr)
        raise SystemExit(exit_code(signum))


def pass_on_to_workers(signum: int) -> None:
    """The ``-m`` parent's handler: on the joblib launcher, the signal to its workers (loky
    processes are its multiprocessing children; each stops its run at the next step and
    starts no other job); before they exist, or between the runs of Hydra's in-process
    launcher, nothing trains: exit at once."""
    if _in_training:  # the in-process launcher: its run stops itself (its children are DataLoader workers)
        return
    workers = multiprocessing.active_children()
    for worker in workers:
        with suppress(ProcessLookupError):
            os.kill(worker.pid, signum)
    if not workers:
        stop_unless_training(signum)
