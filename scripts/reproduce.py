"""`make reproduce`: run the paper's experiments as Hydra sweeps, then aggregate.

The experiments are the configs in conf/experiment/, each with its description in
brn_repro.analysis.experiments: by default those that decide a claim (``make reproduce``), with
``--full`` every one (``make reproduce-full``: secondary rows and sweeps too). For each
experiment this expands its sweep
(conf/experiment/<name>.yaml, ``hydra.sweeper.params``, split by Hydra's own sweeper) with the
chosen profile, writes its plan (``<runs>/experiments/<name>.json``: the runs it reads, by
their directory names), skips it when every run is recorded (a summary with its numbers),
and otherwise launches it as a Hydra multirun on the joblib launcher while a progress bar
counts finished runs across the whole reproduction. Interrupted, it resumes: finished runs
are skipped by the runner, unfinished ones continue from their checkpoints. SIGTERM or
SIGINT (Ctrl-C) is passed on to the running sweep, whose runs stop at their next step with a
checkpoint; it waits for them and exits 143 or 130. At the end it aggregates the records into
results/ (summaries, figures, REPORT.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from hydra.errors import HydraException
from omegaconf import OmegaConf
from tqdm import tqdm

from brn_repro import signals
from brn_repro.analysis.aggregate import check_out
from brn_repro.analysis.dashboard import offline_sync_line
from brn_repro.analysis.experiments import configured, reproduction
from brn_repro.config import ConfigError, resolve  # (and registers the config resolvers)
from brn_repro.files import RecordError, write_atomic
from brn_repro.records import RunRecord, public_config, read_membership, write_membership

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def planned(experiments: list[str] | None, full: bool, conf: Path = CONF) -> list[str]:
    """The experiments to run: ``experiments`` (default: those that decide a claim, within
    45 minutes on 2 CPU cores), and with ``full`` every other configured one."""
    default = reproduction(conf_dir=conf)
    extra = [name for name in reproduction(full=True, conf_dir=conf) if name not in default]
    if unknown := [name for name in experiments or () if name not in configured(conf)]:
        raise ValueError(f"--experiments {' '.join(unknown)}: no such conf/experiment/<name>.yaml; "
                         f"choose from: {', '.join(configured(conf))}")
    return (experiments or default) + (extra if full else [])


def quoted(value: str) -> str:
    """``value`` as one Hydra override value, whatever it holds (commas, spaces, unicode, quotes)."""
    if "${" in value:
        raise ConfigError(f"{value}: '${{' would be read by Hydra as an interpolation; choose a path without it")
    return QuotedString(text=value, quote=Quote.single).with_quotes()


def expand(experiment: str, base: list[str], conf: Path = CONF) -> list[dict]:
    """Every resolved run config of one experiment's sweep: its ``hydra.sweeper.params`` and
    the command line's own sweeps, split as Hydra's sweeper splits them (``range()``,
    ``choice()``, quoting), each job composed with its overrides in a multirun's order."""
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"experiment={experiment}", *base])
    if swept := [o.input_line for o in overrides if o.is_sweep_override() and o.is_hydra_override()]:
        raise ConfigError(f"{' '.join(swept)}: Hydra sweeps no hydra.* key; quote the value to set it")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        # the sweep's head, as a multirun composes it: the sweeps are the sweeper's
        head = compose("config", overrides=[o.input_line for o in overrides if not o.is_sweep_override()],
                       return_hydra_config=True)
        params = OmegaConf.to_container(head.hydra.sweeper.params) or {}
        (jobs,) = BasicSweeper.split_arguments(
            parser.parse_overrides([f"{key}={value}" for key, value in params.items()]) + overrides, None)
        # as the runner resolves it: the same run directories
        return [resolve(compose("config", overrides=job)) for job in jobs]


def expand_cached(experiment: str, base: list[str], cache_dir: Path, conf: Path = CONF) -> list[dict]:
    """``expand``, remembered: composing a sweep costs ~0.4 s per run, so a second call
    (everything recorded, only re-aggregating) reuses the plan while conf/ and the
    overrides are unchanged (the key hashes conf/ and the config resolvers)."""
    digest = hashlib.sha256(json.dumps([experiment, base]).encode())
    for path in sorted(conf.rglob("*.yaml")):
        digest.update(path.relative_to(conf.parent).as_posix().encode() + path.read_bytes())
    for code in (ROOT / "brn_repro" / "config.py", Path(__file__)):  # the resolvers, and how sweeps are split
        digest.update(code.read_bytes())
    cache = cache_dir / "plans" / f"{experiment}-{digest.hexdigest()[:16]}.json"
    with suppress(OSError, ValueError):  # none yet, or damaged: composed again
        return json.loads(cache.read_text())
    configs = expand(experiment, base, conf)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps([public_config(c) for c in configs]))
    return configs


def recorded(records: list[RunRecord]) -> int:
    """How many of ``records`` are finished: a summary with its numbers (a damaged one is not)."""
    return sum(r.summary() is not None for r in records)


def watch(records: list[RunRecord], bar: tqdm, stop: threading.Event) -> None:
    while not stop.wait(5.0):
        bar.n = recorded(records)
        bar.refresh()


class Sweep:
    """The running sweep (``python -m brn_repro.train -m``), in a session of its own: a Ctrl-C
    reaches it only through this process, which passes every SIGTERM and SIGINT on to its
    whole process group (the sweep, its joblib workers) and waits for it. With no sweep
    running there is nothing to checkpoint: it stops at once."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.starting = False

    def run(self, command: list[str], log: Path) -> int:
        with log.open("a") as out:
            self.starting = True
            try:
                self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)
            finally:
                self.starting = False
            if (signum := signals.received()) is not None:  # it came while the sweep started
                self.on_signal(signum)
            code = self.process.wait()
            self.process = None
        return code

    def on_signal(self, signum: int) -> None:
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
        elif not self.starting:
            print(f"stopped by {signals.name(signum)}; rerun the same command to go on", file=sys.stderr)
            raise SystemExit(signals.exit_code(signum))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=[p.stem for p in sorted(CONF.glob("profile/*.yaml"))])
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs (joblib)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--runs", default=None, help="run records root (default runs/<profile>)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--experiments", default=None,
                        help="space-separated names (default: those that decide a claim)")
    parser.add_argument("--full", action="store_true",
                        help="also run the secondary rows' experiments and the sweeps no claim reads "
                             "(batch sizes, r/d schedules; brn_repro.analysis.experiments lists them)")
    parser.add_argument("--launcher", default="local", choices=["local", "slurm"],
                        help="hydra/launcher: local (joblib) or slurm")
    parser.add_argument("--started-at", type=float, default=None,
                        help="epoch seconds when `make reproduce` began (install included)")
    parser.add_argument("--wandb", action="store_true",
                        help="log every run and the aggregate to W&B (offline without credentials: "
                             "one `wandb sync` line at the end uploads them all)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[Path, list[str], dict[str, list[dict]]]:
    """(runs directory, every sweep's overrides, each experiment's run configs), its plans
    written (``records.write_membership``). The runs directory is absolute: the sweeps run in
    the repository, the report reads it from here."""
    check_out(Path(args.out))
    runs = Path(args.runs or f"runs/{args.profile}").absolute()
    base = [f"profile={args.profile}", f"paths.runs={quoted(str(runs))}", f"train.threads={args.threads}",
            *(["logger=wandb"] if args.wandb else []), *args.overrides]
    names = planned(args.experiments.split() if args.experiments else None, args.full)
    configs = {name: expand_cached(name, base, runs) for name in names}
    for name, planned_configs in configs.items():
        write_membership(runs, name, planned_configs)
    read_membership(runs)  # another experiment's damaged plan: said now, not after training
    return runs, base, configs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time() if args.started_at is None else args.started_at
    sweep = Sweep()
    with signals.noted(sweep.on_signal):
        try:
            runs, base, configs = plan(args)
        except (ValueError, HydraException, RecordError) as err:  # ConfigError is a ValueError
            sys.exit(one_line(err))
        records = {name: [RunRecord(runs, c) for c in cs] for name, cs in configs.items()}
        every = list({r.dir: r for rs in records.values() for r in rs}.values())  # shared runs once
        recorded_before = recorded(every)
        print(f"profile {args.profile}: {len(every)} runs in {len(configs)} experiments, "
              f"{recorded_before} already recorded; {args.jobs} jobs x {args.threads} threads")
        todo = [name for name, rs in records.items() if recorded(rs) < len(rs)]
        failed = run_sweeps(todo, every, recorded_before, sweep, base, runs, args)
        finish(args, runs, start, recorded(every) - recorded_before, failed)


def one_line(err: BaseException) -> int:
    """``err`` as the one line a mistake gets (Hydra's messages run over several); exit code 2."""
    print("error: " + " ".join(line.strip() for line in str(err).splitlines() if line.strip()), file=sys.stderr)
    return 2


def run_sweeps(todo: list[str], every: list[RunRecord], recorded_before: int, sweep: Sweep, base: list[str],
               runs: Path, args: argparse.Namespace) -> list[str]:
    """Each experiment of ``todo`` as a multirun, one bar over all runs; the experiments whose
    sweep failed. A signal ends the reproduction here, once the sweep has stopped."""
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
        log = runs / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        code = sweep.run(command, log)
        if (signum := signals.received()) is not None:
            stop.set()
            bar.close()
            print(f"stopped by {signals.name(signum)}: {name}'s runs stopped at their next step, checkpointed "
                  f"(its log: {log}); rerun the same command to resume", file=sys.stderr)
            sys.exit(signals.exit_code(signum))
        if code != 0:
            failed.append(name)
            tqdm.write(f"{name}: the sweep exited with {code}; see {log}")
    stop.set()
    watcher.join()
    bar.n = recorded(every)
    bar.close()
    return failed


def finish(args: argparse.Namespace, runs: Path, start: float, trained: int, failed: list[str]) -> None:
    """Aggregate into ``--out`` (one line and exit 2 on a damaged record or plan)."""
    from brn_repro.analysis.aggregate import aggregate

    wall = time.time() - start
    try:
        report = aggregate(runs, args.out, wall_seconds=wall, log_to_wandb=args.wandb, runs_trained=trained)
    except RecordError as err:
        sys.exit(one_line(err))
    print(f"wrote {report}; wall time {wall / 60:.1f} min")
    if args.wandb and (sync := offline_sync_line(runs)):
        print(sync)
    if failed:
        sys.exit(f"experiments with failed sweeps: {', '.join(failed)} (their finished runs are "
                 "in the report; run make reproduce again to resume)")


if __name__ == "__main__":
    main()
