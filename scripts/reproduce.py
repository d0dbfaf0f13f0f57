"""`make reproduce`: run the paper's experiments as Hydra sweeps, then aggregate.

The experiments are the configs in conf/experiment/, each with its description in
brn_repro.experiments: by default those some claim reads (``make reproduce``), with
``--full`` every one (``make reproduce-full``). For each experiment this expands its sweep
(conf/experiment/<name>.yaml, ``hydra.sweeper.params``) with the chosen profile, skips it when every run is
already recorded, and otherwise launches it as a Hydra multirun on the joblib
launcher while a progress bar counts finished runs across the whole
reproduction. Interrupted, it resumes: finished runs are skipped by the runner,
unfinished ones continue from their checkpoints. At the end it aggregates the
records into results/ (summaries, figures, REPORT.md).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tqdm import tqdm

from brn_repro.config import resolve  # (and registers the config resolvers)
from brn_repro.dashboard import offline_sync_line
from brn_repro.experiments import reproduction
from brn_repro.files import write_atomic
from brn_repro.records import MEMBERSHIP_FILE, RunRecord, public_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def planned(experiments: list[str] | None, full: bool, conf: Path = CONF) -> list[str]:
    """The experiments to run: ``experiments`` (default: those some claim reads, within
    45 minutes on 2 CPU cores), and with ``full`` every other configured one."""
    default = reproduction(conf_dir=conf)
    extra = [name for name in reproduction(full=True, conf_dir=conf) if name not in default]
    return (experiments or default) + (extra if full else [])


def expand(experiment: str, base: list[str], conf: Path = CONF) -> list[dict]:
    """Every resolved run config of one experiment's sweep."""
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        head = compose("config", overrides=[f"experiment={experiment}", *base],
                       return_hydra_config=True)
        params = OmegaConf.to_container(head.hydra.sweeper.params) or {}
        axes = [[f"{key}={value.strip()}" for value in str(values).split(",")]
                for key, values in params.items()]
        configs = []
        for combo in itertools.product(*axes):
            # in the order a Hydra multirun gives each job: the sweep's choices first
            cfg = compose("config", overrides=[*combo, f"experiment={experiment}", *base])
            configs.append(resolve(cfg))  # as the runner resolves it: the same run directories
    return configs


def expand_cached(experiment: str, base: list[str], cache_dir: Path, conf: Path = CONF) -> list[dict]:
    """``expand``, remembered: composing a sweep costs ~0.4 s per run, so a second call
    (everything recorded, only re-aggregating) reuses the plan while conf/ and the
    overrides are unchanged (the key hashes conf/ and the config resolvers)."""
    digest = hashlib.sha256(json.dumps([experiment, base]).encode())
    for path in sorted(conf.rglob("*.yaml")):
        digest.update(path.relative_to(conf.parent).as_posix().encode() + path.read_bytes())
    digest.update((ROOT / "brn_repro" / "config.py").read_bytes())  # the resolvers the configs use
    cache = cache_dir / "plans" / f"{experiment}-{digest.hexdigest()[:16]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    configs = expand(experiment, base, conf)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps([public_config(c) for c in configs]))
    return configs


def watch(records: list[RunRecord], bar: tqdm, stop: threading.Event) -> None:
    while not stop.wait(5.0):
        bar.n = sum(r.summary_path.exists() for r in records)
        bar.refresh()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs (joblib)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--runs", default=None, help="run records root (default runs/<profile>)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--experiments", default=None,
                        help="space-separated names (default: those some claim reads)")
    parser.add_argument("--full", action="store_true",
                        help="also run the sweeps no claim reads (batch sizes, r/d schedules, "
                             "later norms; brn_repro.experiments lists them)")
    parser.add_argument("--launcher", default="local", help="hydra/launcher: local (joblib) or slurm")
    parser.add_argument("--started-at", type=float, default=None,
                        help="epoch seconds when `make reproduce` began (install included)")
    parser.add_argument("--wandb", action="store_true",
                        help="log every run and the aggregate to W&B (offline without credentials: "
                             "one `wandb sync` line at the end uploads them all)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    runs = args.runs or f"runs/{args.profile}"
    start = time.time() if args.started_at is None else args.started_at
    base = [f"profile={args.profile}", f"paths.runs={runs}", f"train.threads={args.threads}",
            *(["logger=wandb"] if args.wandb else []), *args.overrides]
    try:
        names = planned(args.experiments.split() if args.experiments else None, args.full)
    except ValueError as err:  # an experiment config without a description, or the reverse
        sys.exit(f"error: {err}")
    plan = {name: expand_cached(name, base, Path(runs)) for name in names}
    records = {name: [RunRecord(runs, c) for c in configs] for name, configs in plan.items()}
    every = list({r.dir: r for rs in records.values() for r in rs}.values())  # shared runs once
    membership = {name: [{"run_dir": str(r.dir), "config": public_config(c)}
                         for r, c in zip(records[name], configs, strict=True)]
                  for name, configs in plan.items()}
    Path(runs).mkdir(parents=True, exist_ok=True)
    # Merged with earlier calls', so reproducing one experiment keeps the others in the report.
    members_path = Path(runs) / MEMBERSHIP_FILE
    earlier = json.loads(members_path.read_text()) if members_path.exists() else {}
    write_atomic(members_path, json.dumps({**earlier, **membership}))
    todo = [name for name, rs in records.items() if not all(r.summary_path.exists() for r in rs)]
    print(f"profile {args.profile}: {len(every)} runs in {len(plan)} experiments, "
          f"{sum(r.summary_path.exists() for r in every)} already recorded; "
          f"{args.jobs} jobs x {args.threads} threads")
    recorded_before = sum(r.summary_path.exists() for r in every)
    bar = tqdm(total=len(every), initial=recorded_before,
               desc="reproduction", unit="run", dynamic_ncols=True, file=sys.stdout)
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(every, bar, stop), daemon=True)
    watcher.start()
    failed = []
    for name in todo:
        bar.set_postfix_str(name)
        command = [sys.executable, "-m", "brn_repro.train", "-m", f"experiment={name}", *base,
                   f"hydra/launcher={args.launcher}"]
        if args.launcher == "local":
            command.append(f"hydra.launcher.n_jobs={args.jobs}")
        log = Path(runs) / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            result = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            failed.append(name)
            tqdm.write(f"{name}: the sweep exited with {result.returncode}; see {log}")
    stop.set()
    watcher.join()
    bar.n = sum(r.summary_path.exists() for r in every)
    bar.close()
    from brn_repro.aggregate import aggregate

    wall = time.time() - start
    trained = sum(r.summary_path.exists() for r in every) - recorded_before
    report = aggregate(runs, args.out, wall_seconds=wall, log_to_wandb=args.wandb,
                       runs_trained=trained)
    print(f"wrote {report}; wall time {wall / 60:.1f} min")
    if args.wandb and (sync := offline_sync_line(Path(runs))):
        print(sync)
    if failed:
        sys.exit(f"experiments with failed sweeps: {', '.join(failed)} (their finished runs are "
                 "in the report; run make reproduce again to resume)")


if __name__ == "__main__":
    main()
