"""Run records: one directory per run, named from its resolved config.

    <paths.runs>/<norm>-pwb<b>x<W>-<sampler>-s<seed>-<hash>/
        config.yaml      the resolved config, secrets left out (what the hash is of)
        metrics.jsonl    one JSON line per evaluation
        summary.json     written last, only with its numbers: status completed | diverged
        checkpoint.pt    every train.checkpoint_every steps and at the end
        run.lock         while a process trains it (``brn_repro.lease``)

A run's identity is its resolved config minus what cannot change its numbers
(the experiment that asked for it, logger, paths, where the data lies,
checkpoint cadence, progress bars, secrets), so re-running a finished config is a
no-op, an interrupted one resumes, and experiments that share a configuration
share its run. Norms without batch statistics (gn, ln, in, none) on i.i.d.
batches do not see how the global batch is split into workers, so for them only
the global batch is part of the identity.

The records never contradict each other: every file is replaced whole (written
under a name unique to its writer, then renamed), metrics are cut back to the
checkpoint a run resumes from (to nothing without one), and a summary exists only
with its numbers. A run is done when its summary, config and metrics read back. A
damaged file is said in one line and recovered: a partial last metrics line is
dropped, a damaged checkpoint, config or metrics log (or another run's checkpoint)
trains the run again from step 0, a damaged summary finishes the run again from its
checkpoint. Every write checks first that this process still holds the run's lock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from brn_repro.files import TMP_NAME, RecordError, check_writable_dir, write_atomic, writing
from brn_repro.lease import Lease
from brn_repro.norm import norm_spec
from brn_repro.secrets import scrub

log = logging.getLogger(__name__)

# How a run was executed, not what it computes: a record's own values are the truth for
# these (a later call that finds the run recorded may plan it with other threads or logger).
EXECUTION_KEYS = (
    "logger", "paths", "dataset.root", "dataset.download", "dataset.loader_workers",
    "train.checkpoint_every", "train.eval_batch", "train.threads", "train.progress", "train.device",
    "train.stop_at_step", "train.channels_last", "train.compile", "train.cpu_isa",
)
# Config keys that do not change a run's numbers, so they are not part of its identity.
# The recipe's values count where norms and samplers read them, not where they are set.
NON_IDENTITY_KEYS = ("experiment", "git_commit", "profile_name", "recipe", "tags", "notes", "group",
                     *EXECUTION_KEYS)
# "run": the directory name (identity) of the run that wrote it, so no run resumes another's;
# "attempt_id" beside it: the training from step 0 it continues (RunRecord.attempt_id)
CHECKPOINT_KEYS = {"run", "attempt_id", "step", "best_test_acc", "wall_seconds", "eval_seconds", "model",
                   "optimizer", "scheduler", "data", "ema", "kernels", "kernels_mixed", "weight_norm_init"}
# Under paths.runs: each experiment's planned runs, experiments/<name>.json (scripts/reproduce.py
# writes it whole; one file per experiment, so reproductions of different experiments never
# race). A run can serve several experiments and several split-blind conditions.
MEMBERSHIP_DIR = "experiments"
# An experiment's name is a file name under results/ and experiments/, never a path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# The files a run directory can hold: a directory with any of them is a run's record.
RECORD_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "checkpoint.pt")
LOCK_TIMEOUT, LOCK_STALE = 6 * 3600.0, 60.0  # defaults when paths.lock_* are not set


def new_attempt_id() -> str:
    """A training from step 0's id (the W&B run id): 12 hex digits, unique in practice."""
    return uuid.uuid4().hex[:12]


def _drop(config: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config without secrets (``secrets.scrub``: keys named like credentials, values
    holding one of the environment, keys read from the environment): what config.yaml,
    the run's identity and W&B hold."""
    return scrub(json.loads(json.dumps(config)))


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config into dotted keys (``norm.name``, ``optim.lr``), secrets dropped:
    the columns of runs.csv. (W&B takes the config nested: ``loggers.wandb_config``.)

    Lists stay as values (``train.step_milestones`` keeps ``[0.5, 0.75]``); empty
    sub-dicts produce no key.
    """
    return _dotted(scrub(cfg), prefix)


def _dotted(tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def split_blind(config: dict[str, Any]) -> bool:
    """True when the split of the global batch into workers cannot change the run: a
    norm without batch statistics (the norm table's ``split_blind``) on i.i.d. data."""
    return norm_spec(config["norm"]["name"]).split_blind and config["sampler"]["name"] == "iid"


def identity(config: dict[str, Any]) -> dict[str, Any]:
    ident = public_config(config)
    for key in NON_IDENTITY_KEYS:
        _drop(ident, key)
    if split_blind(config):
        data = ident["data"]
        data["global_batch"] = data.pop("per_worker_batch") * data.pop("workers")
    return ident


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def run_name(config: dict[str, Any]) -> str:
    """A short readable name, e.g. ``brn-pwb4x16-iid-s0`` (also the W&B run name)."""
    data, norm = config["data"], config["norm"]
    split = (f"gb{data['per_worker_batch'] * data['workers']}" if split_blind(config)
             else f"pwb{data['per_worker_batch']}x{data['workers']}")
    return f"{norm['name']}-{split}-{config['sampler']['name']}-s{config['seed']}"


def run_dir_name(config: dict[str, Any]) -> str:
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_name(config))
    return f"{prefix}-{config_hash(config)}"


def read_metrics_file(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a partial last line (a kill mid-write) is left out,
    a damaged line before it is a ``RecordError``."""
    try:
        lines = Path(path).read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("a row without its step")
        except ValueError as err:
            if number == len(lines):
                break
            raise RecordError(f"{path} line {number} is damaged ({err})") from None
        rows.append(row)
    return rows


def read_summary(path: str | Path) -> dict[str, Any] | None:
    """A summary.json, or None when it is missing or damaged (not JSON, or without
    the numbers its status promises): a run without a valid summary is unfinished."""
    try:
        summary = json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary_problem(summary) is None else None


def summary_problem(summary: dict[str, Any]) -> str | None:
    status = summary.get("status")
    if status not in ("completed", "diverged"):
        return f"status {status!r} is neither completed nor diverged"
    numbers = ({"test_acc": int | float, "train_acc": int | float} if status == "completed"
               else {"diverged_step": int})
    missing = [k for k, kind in {**numbers, "steps_done": int}.items() if not isinstance(summary.get(k), kind)]
    return f"status {status} without {', '.join(missing)}" if missing else None


def _rank_zero(method: Callable[..., Any]) -> Callable[..., Any]:
    """A method rank 0 alone carries out (a write, the writability check, ``resume``);
    on the other processes it does nothing and returns None."""
    @functools.wraps(method)
    def on_rank_zero(self: RunRecord, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs) if self.main else None
    return on_rank_zero


class RunRecord:
    """The files of one run. Only this class writes into the run directory, and only
    on rank 0 (``main``): on the other processes of a multi-process run its writes,
    its lock and ``resume`` do nothing, and reads read what rank 0 wrote."""

    def __init__(self, root: str | Path, config: dict[str, Any], *, main: bool = True):
        self.config = config
        self.main = main
        self.root = Path(root)
        self.dir = self.root / run_dir_name(config)
        self.config_path = self.dir / "config.yaml"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self._lease: Lease | None = None
        self._said_damaged = False
        self._start_afresh = False  # a summary whose config or metrics do not read back
        # This training from step 0 (``start``), kept across resumes (``resume``): the W&B run's id,
        # so a record trained again never appends to the W&B run of an earlier training. Rank 0's.
        self.attempt_id: str | None = None

    # --- state -----------------------------------------------------------------
    def summary(self) -> dict[str, Any] | None:
        """The summary of a finished run: with its numbers, and its config and metrics (every
        evaluation up to its last step) reading back. Otherwise None, what is damaged said
        once: a damaged summary alone finishes the run again from its checkpoint; a damaged
        config or metrics log trains it again from step 0 (``resume``): its earlier
        evaluations cannot be rebuilt from the final checkpoint, and training is deterministic."""
        summary = read_summary(self.summary_path)
        damage = self._unreadable(summary["steps_done"]) if summary is not None else None
        self._start_afresh = damage is not None
        if damage is not None:
            self._note(f"{damage}; training {self.dir.name} again from step 0")
        elif summary is None and self.summary_path.is_file():
            self._note(f"{self.summary_path} is damaged or incomplete; finishing the run again")
        return None if damage else summary

    def _note(self, line: str) -> None:
        if self.main and not self._said_damaged:
            self._said_damaged = True
            log.warning(f"note: {line}")

    def _unreadable(self, steps_done: int) -> str | None:
        """What keeps a summarized record from reading back: its config, or its metrics."""
        try:
            read_config(self.dir)
            steps = [r["step"] for r in self.read_metrics()]
        except RecordError as err:
            return str(err)
        if steps != (needed := self.eval_steps(steps_done)):
            return f"{self.metrics_path} holds steps {steps}, its summary at step {steps_done} needs {needed}"
        return None

    def experiments(self) -> list[str]:
        """Every experiment this run belongs to: the one that asked for it, and those whose
        planned runs (:data:`MEMBERSHIP_DIR`) hold it."""
        try:
            plan = read_membership(self.root)
        except RecordError:  # a damaged plan costs the run its tags, not its training
            plan = {}
        names = {self.config["experiment"]}
        names.update(e for e, members in plan.items() if any(m["run"] == self.dir.name for m in members))
        return sorted(names)

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    @_rank_zero
    def check_writable(self) -> None:
        """Before any data is loaded: ``paths.runs`` is, or can become, a writable directory."""
        check_writable_dir(self.root, "paths.runs")

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """Hold the run's lock (``brn_repro.lease``); yields False after waiting for
        another live process that held it (its summary is then the result).
        Temporary files of writers killed mid-write are removed once it is held.
        Off rank 0 it holds nothing: rank 0 holds it for every process."""
        if not self.main:
            yield True
            return
        paths = self.config.get("paths") or {}
        with writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        lease = Lease(self.dir / "run.lock", paths.get("lock_timeout") or LOCK_TIMEOUT,
                      paths.get("lock_stale") or LOCK_STALE)
        with lease as waited:
            for leftover in self.dir.iterdir():  # ours to clean: nobody else writes here now
                if TMP_NAME.fullmatch(leftover.name):
                    leftover.unlink(missing_ok=True)
            self._lease = lease
            try:
                yield not waited
            finally:
                self._lease = None

    def _check_lease(self) -> None:
        if self._lease is not None:
            self._lease.check()

    # --- resuming --------------------------------------------------------------
    @_rank_zero
    def resume(self) -> dict[str, Any] | None:
        """The checkpoint to go on from, with metrics cut back to it; or None, and
        the record started afresh: no checkpoint, or damaged files (said in one line)."""
        state = None
        if self.has_checkpoint() and not self._start_afresh:  # summary() said why not
            try:
                read_config(self.dir)
                state = self.load_checkpoint()
                self.truncate_metrics(state["step"])
            except RecordError as err:
                log.warning(f"note: {err}; training {self.dir.name} again from step 0")
                state = None
        if state is None:
            self.start()
        else:
            self.attempt_id = state["attempt_id"]
        return state

    def check_threads(self) -> None:
        """Before any data loads: a run that resumes keeps the train.threads it started with
        (its config.yaml's): torch's CPU kernels split their sums by thread, so another
        count would change the numbers a resume promises to leave as they were."""
        if not self.has_checkpoint():
            return
        try:
            started = (read_config(self.dir).get("train") or {}).get("threads")
        except RecordError:
            return  # a damaged record trains again from step 0 (resume)
        now = self.config["train"].get("threads")
        if now != started:
            def shown(value):
                return "null" if value is None else value
            raise RecordError(f"{self.dir} was started with train.threads={shown(started)} and resumes from its "
                              f"checkpoint; train.threads={shown(now)} would change its numbers: rerun with "
                              f"train.threads={shown(started)}")

    def eval_steps(self, upto: int) -> list[int]:
        """The steps a run evaluates at, up to ``upto``: what its metrics must hold."""
        train = self.config["train"]
        return [s for s in range(1, upto + 1) if s % train["eval_every"] == 0 or s == train["steps"]]

    # --- writing ---------------------------------------------------------------
    @_rank_zero
    def start(self) -> None:
        """A fresh record: the config, a new attempt id, and no metrics, checkpoint or summary
        of an earlier try."""
        self._check_lease()
        self.attempt_id = new_attempt_id()
        with writing(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
            for earlier in (self.metrics_path, self.checkpoint_path, self.summary_path):
                earlier.unlink(missing_ok=True)
        self._write(self.config_path, yaml.safe_dump(public_config(self.config), sort_keys=False))

    def _write(self, path: Path, data: str | Callable[[Path], None]) -> None:
        """``write_atomic``, renamed into place only while this process holds the run's lock:
        checked once the temporary is written (a checkpoint takes a while), before the rename."""
        def write_then_check(tmp: Path) -> None:
            data(tmp) if callable(data) else tmp.write_text(data)
            self._check_lease()

        write_atomic(path, write_then_check)

    @_rank_zero
    def log_metrics(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row) + "\n").encode()
        with writing(self.metrics_path):
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                self._check_lease()
                while line:  # unbuffered: a failed write is undone below, not retried at close
                    line = line[os.write(fd, line):]
            except OSError:
                os.ftruncate(fd, end)  # no partial line left behind (a full disk)
                raise
            finally:
                os.close(fd)

    @_rank_zero
    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop rows logged after the checkpoint: they will be logged again."""
        kept = [r for r in self.read_metrics() if r["step"] <= after_step]
        if [r["step"] for r in kept] != self.eval_steps(after_step):
            raise RecordError(f"{self.metrics_path} holds steps {[r['step'] for r in kept]}, the checkpoint "
                              f"at step {after_step} needs {self.eval_steps(after_step)}")
        self._write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics_file(self.metrics_path)

    @_rank_zero
    def write_summary(self, summary: dict[str, Any]) -> None:
        if (problem := summary_problem(summary)) is not None:
            raise RecordError(f"refusing to write {self.summary_path}: {problem}")
        self._write(self.summary_path, json.dumps(summary, indent=2) + "\n")

    @_rank_zero
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        ours = {"run": self.dir.name, "attempt_id": self.attempt_id}
        self._write(self.checkpoint_path, lambda tmp: torch.save({**state, **ours}, tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        try:
            # weights_only: a checkpoint is data, never code to run.
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch reports damage in many types
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
            raise RecordError(f"{self.checkpoint_path} is damaged ({reason})") from None
        if not isinstance(state, dict) or CHECKPOINT_KEYS - state.keys():
            raise RecordError(f"{self.checkpoint_path} is damaged (not a checkpoint of this runner)")
        if state["run"] != self.dir.name:  # copied in by hand: a damaged file of this record
            raise RecordError(f"{self.checkpoint_path} is the checkpoint of {state['run']}, not of this run")
        if not 0 < state["step"] <= self.config["train"]["steps"]:
            raise RecordError(f"{self.checkpoint_path} is at step {state['step']}, outside this run")
        return state


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A record's config; a missing or damaged one is a one-line ``RecordError`` naming the file."""
    path = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise RecordError(f"{path} is missing") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RecordError(f"{path} is damaged (not YAML: {reason})") from None
    if not isinstance(config, dict):
        raise RecordError(f"{path} is damaged (a {type(config).__name__}, not a config)")
    return config


def find_records(root: str | Path) -> list[Path]:
    """Every run directory under ``root``: those holding a record's file (a completed run
    whose config.yaml was lost included)."""
    return sorted(p for p in Path(root).glob("*/") if any((p / name).exists() for name in RECORD_FILES))


def membership_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / MEMBERSHIP_DIR / f"{experiment}.json"


def write_membership(root: str | Path, experiment: str, configs: list[dict[str, Any]]) -> None:
    """``experiment``'s planned runs under ``root``: each run by its directory's name (relative
    to ``root``, so the runs directory can move) with the config planned for it, secrets left out."""
    path = membership_path(root, experiment)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps([{"run": run_dir_name(c), "config": public_config(c)} for c in configs]))


def read_membership(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{experiment: [{"run": directory name, "config": planned config}]} from every plan under
    ``root``; a damaged plan is a ``RecordError`` naming it and the fix."""
    plan = {}
    for path in sorted((Path(root) / MEMBERSHIP_DIR).glob("*.json")):
        try:
            members = json.loads(path.read_text())
            if not (PLAIN_NAME.fullmatch(path.stem) and isinstance(members, list) and all(
                    isinstance(m, dict) and isinstance(m.get("config"), dict)
                    and PLAIN_NAME.fullmatch(str(m.get("run"))) for m in members)):
                raise ValueError("not a list of planned runs")
        except (OSError, ValueError) as err:
            raise RecordError(f"{path} is damaged ({str(err).splitlines()[0]}); rerun scripts/reproduce.py "
                              f"--experiments {path.stem} to write it again, or remove it") from None
        plan[path.stem] = members
    return plan
