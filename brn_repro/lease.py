"""A run's lock as a lease: safe across hosts, containers and PID namespaces.

The process that trains a run holds ``<run>/run.lock``, a small JSON file naming
its host, PID namespace, PID and a random token, and a background thread touches
the file every ``stale / 4`` seconds: its mtime is a heartbeat. Another process

* waits while the heartbeat is fresh, saying once who holds the lock, and gives
  up after ``timeout`` seconds with one line (``LockError``);
* takes the lock over when the heartbeat is older than ``stale`` seconds (the
  holder died or hangs), or at once when the holder ran on this host and PID
  namespace and its PID is gone (a kill -9 on this machine).

A holder that hangs (paused, a frozen VM) is taken over and may wake later: it
reads its token in the lock file before every write (``check``) and stops unwritten.

A PID alone says nothing on another node of a shared filesystem or in another
container's PID namespace, and a dead run's PID can be reused by a live process;
the heartbeat says whether the holder is alive wherever it runs. The lock file
appears by ``os.link`` of a fully written candidate, atomic on local filesystems
and NFS alike, so nobody reads a half-written lock. A stale lock is removed under
a second lock (``run.lock.break``), after checking it is still the one judged
stale: two waiters never both take it over. Staleness compares the
heartbeat's mtime with this host's clock: hosts sharing a filesystem are assumed
to keep their clocks (NTP) well within ``stale`` of each other.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOST = socket.gethostname()


def _pid_namespace() -> str:
    try:  # e.g. "pid:[4026531836]": two containers on one host differ here
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


PID_NAMESPACE = _pid_namespace()


def writer_tag() -> str:
    """``<host>-<pid>-<random>``: unique to one writer (even across hosts and
    PID namespaces), for temporary file names."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', HOST)}-{os.getpid()}-{secrets.token_hex(4)}"


class LockError(RuntimeError):
    """The run's lock could not be had in time, or was lost; one line."""


def describe(holder: dict[str, Any]) -> str:
    if not holder.get("host"):
        return "an unknown process (a lock file without its owner's name)"
    return f"pid {holder.get('pid')} on host {holder['host']}"


def _read(path: Path) -> tuple[str, float] | None:
    """The lock's text and heartbeat (mtime), or None when there is no lock."""
    try:
        return path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None


def _parse(text: str) -> dict[str, Any]:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}  # an older PID-only lock: heartbeat decides


def _taken_by(seen: tuple[str, float] | None) -> str:
    """Who holds a lock that is no longer ours."""
    return describe(_parse(seen[0])) if seen else "nobody (the lock file was removed)"


def _dead_here(holder: dict[str, Any]) -> bool:
    """True only for a holder of this host and PID namespace whose PID is gone."""
    if holder.get("host") != HOST or holder.get("pid_namespace") != PID_NAMESPACE:
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return False


class Lease:
    """``with Lease(path, timeout, stale) as waited:`` holds the lock; ``waited`` is
    True when another holder had it first. ``check()``, called before every write,
    raises ``LockError`` unless the lock file still holds this process's token."""

    def __init__(self, path: str | Path, timeout: float, stale: float):
        self.path, self.timeout, self.stale = Path(path), float(timeout), float(stale)
        self.beat_seconds = self.stale / 4
        self.text = json.dumps({"host": HOST, "pid_namespace": PID_NAMESPACE, "pid": os.getpid(),
                                "token": secrets.token_hex(8), "since": time.time()})
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> bool:
        waited = self.acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return waited

    def __exit__(self, *exc) -> None:
        self.release()

    # --- taking it -------------------------------------------------------------
    def acquire(self) -> bool:
        candidate = self.path.with_name(f".{self.path.name}.{writer_tag()}")
        candidate.write_text(self.text)
        try:
            return self._acquire(candidate)
        finally:
            candidate.unlink(missing_ok=True)

    def _acquire(self, candidate: Path) -> bool:
        deadline, announced = time.monotonic() + self.timeout, False
        while True:
            if self._link(candidate, self.path):
                return announced
            seen = _read(self.path)
            if seen is None:
                continue  # released between our link and our look: try again
            holder, age = _parse(seen[0]), time.time() - seen[1]
            if age > self.stale or _dead_here(holder):
                if self._break(seen[0]):
                    why = (f"its heartbeat stopped {age:.0f}s ago" if age > self.stale
                           else "that process is gone")
                    log.warning(f"note: taking over {self.path} from {describe(holder)}: {why}")
                else:
                    time.sleep(0.05)  # another process is breaking it: look again
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockError(
                    f"{self.path.parent} is being trained by {describe(holder)} (heartbeat {age:.0f}s "
                    f"ago); gave up waiting after {self.timeout:g}s (paths.lock_timeout): rerun "
                    f"later, or raise paths.lock_timeout")
            if not announced:
                log.warning(f"waiting for {self.path}: held by {describe(holder)}, heartbeat {age:.0f}s ago; "
                            f"waiting up to {self.timeout:g}s (paths.lock_timeout)")
                announced = True
            time.sleep(min(left, max(self.beat_seconds, 0.05), 2.0))

    def _link(self, candidate: Path, target: Path) -> bool:
        try:
            os.utime(candidate)  # the link shares its inode: a fresh heartbeat from the start
            os.link(candidate, target)  # atomic, NFS included: the lock appears whole
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
        try:  # a filesystem without hard links: exclusive create
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self.text)
        return True

    def _break(self, stale_text: str) -> bool:
        """Remove the lock judged stale, unless it changed since it was judged. Breakers
        take turns through a second lock file, so none removes a lock another process
        has just taken. True when this process removed it."""
        breaker = self.path.with_name(f"{self.path.name}.break")
        candidate = self.path.with_name(f".{breaker.name}.{writer_tag()}")
        candidate.write_text(self.text)
        try:
            if not self._link(candidate, breaker):
                seen = _read(breaker)
                if seen is not None and time.time() - seen[1] > self.stale:
                    breaker.unlink(missing_ok=True)  # a breaker killed while breaking
                return False
            try:
                seen = _read(self.path)
                if seen is None or seen[0] != stale_text:
                    return False
                self.path.unlink()
                return True
            finally:
                breaker.unlink(missing_ok=True)
        finally:
            candidate.unlink(missing_ok=True)

    # --- holding it ------------------------------------------------------------
    def _heartbeat(self) -> None:
        missing = 0
        while not self._stop.wait(self.beat_seconds):
            seen = _read(self.path)
            if seen is not None and seen[0] == self.text:
                missing = 0
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a hiccup of the filesystem: the next beat tries again
                continue
            missing += 1
            if seen is not None or missing >= 2:  # twice: a filesystem hiccup is not a loss
                self.lost = _taken_by(seen)
                return

    def check(self) -> None:
        """Raise ``LockError`` unless this process provably holds the lock now: its token
        in the lock file, read here. The heartbeat thread looks only every beat, and not
        at all while the process is paused (SIGSTOP, a frozen VM) and taken over."""
        seen = _read(self.path)
        if seen is None or seen[0] != self.text:
            self.lost = self.lost or _taken_by(seen)
        if self.lost:
            raise LockError(f"lost the lock of {self.path.parent} to {self.lost}; stopped without writing "
                            "(another process took this run over: rerun to finish it, or to find it done)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seen = _read(self.path)
        if seen is not None and seen[0] == self.text:
            self.path.unlink(missing_ok=True)
