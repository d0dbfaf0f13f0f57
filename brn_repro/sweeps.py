"""What a Hydra sweep (``-m``) leaves beside its run records: every job's outcome in its
own output directory (``<hydra.sweep.dir>/<job>/job.json``: completed, diverged, stopped,
or failed with its one-line reason), and one summary line when the sweep ends.

A job that fails on bad input (a config error, a dataset that cannot be read) does not
stop the sweep, as a diverged run does not; the summary names it, and the sweep exits
non-zero. The outcome travels by file because a launcher (joblib, submitit) runs jobs
in other processes, often on other hosts, and Hydra hands the sweep's end no results.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from brn_repro.files import write_atomic

JOB_FILE = "job.json"
# Jobs that failed in the sweep this process launched (SweepSummary sets it; brn_repro.train's
# cli exits non-zero on it).
failed_jobs: list[dict[str, Any]] = []


def record_job(status: str, *, run: str | None = None, reason: str | None = None) -> None:
    """This job's outcome in its Hydra output directory (in a sweep; a single run's
    outcome is its exit code)."""
    hydra = HydraConfig.get()
    job = {"job": hydra.job.num, "overrides": list(hydra.overrides.task), "status": status,
           "run": run, "reason": reason}
    out = Path(hydra.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / JOB_FILE, json.dumps(job, indent=1) + "\n")


def read_jobs(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The outcomes under ``sweep_dir`` written after ``since`` (a directory reused by a
    later sweep keeps the earlier one's files), in job order."""
    jobs = []
    for path in sweep_dir.glob(f"**/{JOB_FILE}"):
        if path.stat().st_mtime >= since:
            jobs.append(json.loads(path.read_text()))
    return sorted(jobs, key=lambda job: job["job"])


def summary_line(jobs: list[dict[str, Any]]) -> str:
    """``sweep: 3 jobs: 1 completed, 1 diverged, 1 failed (#0 data.per_worker_batch=0: ...)``."""
    counts = {s: sum(j["status"] == s for j in jobs) for s in ("completed", "diverged", "stopped", "failed")}
    parts = [f"{n} {status}" for status, n in counts.items() if n or status != "stopped"]
    shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if len(jobs) > 1 else set()
    failed = [f"#{j['job']} {' '.join(o for o in j['overrides'] if o not in shared)}: {j['reason']}"
              for j in jobs if j["status"] == "failed"]
    return f"sweep: {len(jobs)} jobs: {', '.join(parts)}" + (f" ({'; '.join(failed)})" if failed else "")


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): the sweep's summary line."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1  # file times can be a second coarse
        failed_jobs.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        jobs = read_jobs(sweep_dir, getattr(self, "started", 0.0))
        failed_jobs[:] = [j for j in jobs if j["status"] == "failed"]
        # the launching process's console: its logging is the last job's (file included)
        print(summary_line(jobs), file=sys.stderr)
