"""Run records: one directory per run, named from its resolved config.

    <paths.runs>/<norm>-pwb<b>x<W>-<sampler>-s<seed>-<hash>/
        config.yaml      the resolved config (what the hash is of)
        metrics.jsonl    one JSON line per evaluation
        summary.json     written atomically at the end: status completed | diverged
        checkpoint.pt    every train.checkpoint_every steps and at the end

A run's identity is its resolved config minus what cannot change its numbers
(the experiment that asked for it, logger, paths, where the data lies,
checkpoint cadence, progress bars), so re-running a finished config is a no-op,
an interrupted one resumes, and experiments that share a configuration share
its run. Norms without batch statistics (gn, ln, in, none) on i.i.d. batches do
not see how the global batch is split into workers, so for them only the global
batch is part of the identity. A lock file keeps two processes from training
the same run at once; the second waits for the first's summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

# Config keys that do not change a run's numbers, so they are not part of its identity.
NON_IDENTITY_KEYS = (
    "experiment", "logger", "paths", "profile_name", "norm_momentum", "schedule", "noniid_recipe", "dataset.root", "dataset.download", "dataset.loader_workers",
    "train.checkpoint_every", "train.eval_batch", "train.threads", "train.progress", "train.device", "train.stop_at_step",
)


def _drop(config: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


SPLIT_BLIND_NORMS = ("gn", "ln", "in", "none", "frn", "evonorm_s0", "gn_ws")


def split_blind(config: dict[str, Any]) -> bool:
    """True when the split of the global batch into workers cannot change the run."""
    return config["norm"]["type"] in SPLIT_BLIND_NORMS and config["sampler"]["type"] == "iid"


def identity(config: dict[str, Any]) -> dict[str, Any]:
    ident = json.loads(json.dumps(config))
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
    return f"{norm['type']}-{split}-{config['sampler']['type']}-s{config['seed']}"


def run_dir_name(config: dict[str, Any]) -> str:
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_name(config))
    return f"{prefix}-{config_hash(config)}"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunRecord:
    """The files of one run. Only this class writes into the run directory."""

    def __init__(self, root: str | Path, config: dict[str, Any]):
        self.config = config
        self.dir = Path(root) / run_dir_name(config)
        self.config_path = self.dir / "config.yaml"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"

    # --- state -----------------------------------------------------------------
    def summary(self) -> dict[str, Any] | None:
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    @contextmanager
    def lock(self, poll_seconds: float = 2.0) -> Iterator[bool]:
        """Hold the run's lock; yields False after waiting for another live process
        that held it (its summary is then the result). A lock left by a dead
        process is taken over."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "run.lock"
        mine = path.with_name(f"run.lock.{os.getpid()}")
        mine.write_text(str(os.getpid()))
        waited = False
        while True:
            try:
                os.link(mine, path)  # atomic: the lock appears with its owner's pid in it
                break
            except FileExistsError:
                if not _alive(path):
                    path.unlink(missing_ok=True)
                    continue
                waited = True
                time.sleep(poll_seconds)
        mine.unlink()
        try:
            yield not waited
        finally:
            path.unlink(missing_ok=True)

    # --- writing ---------------------------------------------------------------
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, yaml.safe_dump(self.config, sort_keys=False))

    def log_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop rows logged after the checkpoint: they will be logged again."""
        rows = self.read_metrics()
        kept = [r for r in rows if r["step"] <= after_step]
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.checkpoint_path.with_name("checkpoint.pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any]:
        # weights_only: a checkpoint is data, never code to run.
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)


def _alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text() or "0")
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return pid != 0


def find_records(root: str | Path) -> list[Path]:
    """Every run directory under ``root`` (those holding a config.yaml)."""
    return sorted(p.parent for p in Path(root).glob("*/config.yaml"))
