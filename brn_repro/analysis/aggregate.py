"""Run records -> one pandas frame -> per-experiment summaries, figures and the report.

    python -m brn_repro.analysis.aggregate --runs runs --out results

Reads every run directory (``config.yaml`` + ``summary.json`` + ``metrics.jsonl``)
under ``--runs`` (or, with ``--source wandb``, the runs of a W&B project), writes
``<out>/<experiment>/summary.csv`` (mean, std, n per condition) and figures, and
``<out>/REPORT.md`` with the paper's claims and a verdict for each.
Diverged runs are counted and drawn as diverged; they are never dropped.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from brn_repro.analysis.experiments import described
from brn_repro.files import check_writable_dir, write_atomic
from brn_repro.records import (
    EXECUTION_KEYS,
    PLAIN_NAME,
    RecordError,
    find_records,
    flatten_config,
    identity,
    membership_path,
    read_config,
    read_membership,
    read_metrics_file,
    read_summary,
)

SUMMARY_FIELDS = ("status", "test_acc", "train_acc", "minibatch_stats_acc", "best_test_acc",
                  "steps_done", "diverged_step", "wall_seconds", "images_per_second", "weight_norm_init")
METRICS = ("test_acc", "train_acc", "minibatch_stats_acc")


def _members(runs_root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, config) per member of each experiment: the runs each experiment's
    plan names (``make reproduce`` writes it: runs are shared between experiments and
    between split-blind conditions), then every other record for the experiment it was
    trained for (a plain ``-m`` sweep), unless that experiment's plan does not hold it.
    Each run left out is one warning line naming it and why."""
    plan = read_membership(runs_root)
    members = [(runs_root / m["run"], as_ran(m["config"], _own_config(runs_root / m["run"])[0]))
               for entries in plan.values() for m in entries]
    planned = {m["run"] for entries in plan.values() for m in entries}
    for run_dir in find_records(runs_root):
        if run_dir.name in planned:
            continue
        config, reason = _own_config(run_dir)
        if config is not None and isinstance(config.get("experiment"), str) and config["experiment"] in plan:
            experiment = config["experiment"]
            reason = (f"trained for {experiment}{_differing(config, plan[experiment])}, which its plan "
                      f"({membership_path(runs_root, experiment)}) does not hold")
        if reason is None:
            members.append((run_dir, config))
        else:
            print(f"warning: the report leaves out {run_dir}: {reason}", file=sys.stderr)
    return members


def _own_config(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A record's config, or None and why not."""
    try:
        return read_config(run_dir), None
    except RecordError as err:
        return None, (f"{err}, so what it ran is unknown (remove the directory and rerun its config to train "
                      "it again)")


def _differing(config: dict[str, Any], members: list[dict[str, Any]]) -> str:
    """`` with train.steps=40 (its plan: 3600)``: the keys of the run's identity that differ
    from the nearest planned run's (the first three)."""
    def differences(member: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        theirs = flatten_config(identity(member["config"]))
        return [(k, mine.get(k), theirs.get(k)) for k in sorted(mine.keys() | theirs.keys())
                if mine.get(k) != theirs.get(k)]

    try:
        mine = flatten_config(identity(config))
        nearest = min((differences(m) for m in members), key=len, default=[])
    except (AttributeError, KeyError, TypeError, ValueError):  # no keys an identity needs: no detail
        return ""
    return "".join(f" with {k}={a} (its plan: {b})" if i == 0 else f", {k}={a} ({b})"
                   for i, (k, a, b) in enumerate(nearest[:3]))


def as_ran(planned: dict[str, Any], recorded: dict[str, Any] | None) -> dict[str, Any]:
    """A member's planned config with its record's values for how the run was executed
    (``records.EXECUTION_KEYS``): the membership holds the last ``make reproduce`` call's
    plan, whose logger, threads or device need not be those the run trained with."""
    if recorded is None:  # planned, not started
        return planned
    config = copy.deepcopy(planned)
    for dotted in EXECUTION_KEYS:
        *parents, leaf = dotted.split(".")
        have, want = recorded, config
        for key in parents:
            have = have.get(key) if isinstance(have, dict) else None
            want = want.setdefault(key, {})
        if isinstance(have, dict) and leaf in have:
            want[leaf] = copy.deepcopy(have[leaf])
        else:
            want.pop(leaf, None)
    return config


def _trained_at(run_dir: Path) -> str | None:
    """The commit the record's config.yaml names (none when it trained outside a git checkout)."""
    try:
        found = re.search(r"^git_commit: (\S+)$", (run_dir / "config.yaml").read_text(), re.M)
    except OSError:
        return None
    return found.group(1).strip("'\"") if found and found.group(1) != "null" else None


def load_runs(runs_root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves): one row per run and experiment (flattened config + summary),
    and one row per evaluation of every run (metrics.jsonl) tagged with its directory."""
    runs, curves, seen = [], [], set()
    for run_dir, config in _members(Path(runs_root)):
        row: dict[str, Any] = {k: v for k, v in flatten_config(config).items()
                               if not isinstance(v, list | dict)}
        summary = read_summary(run_dir / "summary.json") or {}  # damaged: counted as incomplete
        row.update({k: summary.get(k) for k in SUMMARY_FIELDS})
        # what computed it beyond the config (brn_repro.kernels): the report names it, verify-results reads it
        row.update({f"kernels.{k}": v for k, v in (summary.get("kernels") or {}).items()})
        row["kernels_mixed"] = summary.get("kernels_mixed")
        row["status"] = summary.get("status", "incomplete")
        row["run_dir"] = str(run_dir)
        row["git_commit"] = _trained_at(run_dir)
        runs.append(row)
        if str(run_dir) not in seen:
            seen.add(str(run_dir))
            try:
                rows = read_metrics_file(run_dir / "metrics.jsonl")
            except RecordError as err:  # a damaged metrics log: rerunning that run repairs it
                raise RecordError(f"{err}; rerun that run's config to repair it") from None
            curves += [{"run_dir": str(run_dir), **row} for row in rows]
    return pd.DataFrame(runs), pd.DataFrame(curves)


def load_wandb_runs(project: str, entity: str | None = None) -> pd.DataFrame:
    """The same frame from the W&B API (online): config keys are already dotted."""
    import wandb

    api = wandb.Api()
    rows = []
    for run in api.runs(f"{entity}/{project}" if entity else project):
        row = {k: v for k, v in run.config.items() if not isinstance(v, list | dict)}
        row.update({k: run.summary.get(k) for k in SUMMARY_FIELDS})
        row["run_dir"] = run.url
        rows.append(row)
    return pd.DataFrame(rows)


def condition_columns(frame: pd.DataFrame, experiment: str) -> list[str]:
    """The columns that tell ``experiment``'s conditions apart: its description's, or for
    a run outside the table (``experiment=adhoc``) every column that varies but the seed."""
    if description := described(experiment):
        return [c for c in description.conditions if c in frame.columns]
    skip = {"seed", "run_dir", "kernels_mixed", *SUMMARY_FIELDS}
    return [c for c in frame.columns
            if c not in skip and not c.startswith("kernels.") and frame[c].astype(str).nunique() > 1]


def condition_summary(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, std and n of each metric per condition, over completed runs; diverged
    and incomplete runs are counted in their own columns."""
    rows = []
    for key, group in frame.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        done = group[group["status"] == "completed"]
        row = dict(zip(by, key, strict=True))
        row["n"] = len(done)
        row["n_diverged"] = int((group["status"] == "diverged").sum())
        row["n_incomplete"] = int((group["status"] == "incomplete").sum())
        steps = group.loc[group["status"] == "diverged", "diverged_step"]
        row["diverged_steps"] = " ".join(str(int(s)) for s in sorted(steps.dropna()))
        for metric in METRICS:
            values = pd.to_numeric(done[metric], errors="coerce").dropna()
            row[f"{metric}_mean"] = values.mean() if len(values) else float("nan")
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


RUNS_CSV, CURVES_CSV = "runs.csv", "curves.csv"
# runs.csv leads with what a reader looks for; every other config column follows, so the
# claims and figures can be recomputed from the two tables alone.
RUN_COLUMNS = ("experiment", "norm.name", "data.per_worker_batch", "data.workers", "sampler.name", "seed",
               "status", "steps_done", "test_acc", "train_acc", "minibatch_stats_acc",
               "ema_error/mean", "ema_error/std", "wall_seconds")


def write_tables(runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> None:
    """results/runs.csv (one row per run and experiment it belongs to) and
    results/curves.csv (one row per run and evaluation), for re-analysis without the
    run records (``read_tables``)."""
    runs = runs.copy()
    if not curves.empty:  # the moving averages' error at each run's last evaluation
        last = curves.sort_values("step").groupby("run_dir").last()
        for key in ("ema_error/mean", "ema_error/std"):
            if key in last:
                runs[key] = runs["run_dir"].map(last[key])
    lead = [c for c in RUN_COLUMNS if c in runs]
    runs = runs[lead + [c for c in runs.columns if c not in lead]]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / RUNS_CSV, lambda tmp: runs.to_csv(tmp, index=False))
    write_atomic(out / CURVES_CSV, lambda tmp: curves.to_csv(tmp, index=False, float_format="%.6g"))


def read_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frames ``write_tables`` saved (empty cells back to None where configs had null)."""
    runs = pd.read_csv(out / RUNS_CSV)
    runs = runs.astype(object).where(runs.notna(), None)
    curves = pd.read_csv(out / CURVES_CSV) if (out / CURVES_CSV).exists() else pd.DataFrame()
    return runs, curves


def write_atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.4g"))


def check_out(out: Path) -> None:
    """``--out`` is, or can become, a writable directory (before anything is read or trained)."""
    check_writable_dir(out, "--out")


def plain_experiments(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose experiment is a plain name: it names a folder under ``--out``, so a
    name like ``../../X`` would write outside it. Each run left out is one warning line."""
    if runs.empty:
        return runs
    plain = runs["experiment"].map(lambda name: isinstance(name, str) and bool(PLAIN_NAME.fullmatch(name)))
    for _, row in runs[~plain].iterrows():
        print(f"warning: the report leaves out {row['run_dir']}: its experiment {row['experiment']!r} is not "
              "a plain name (letters, digits, _ . -), and names a folder of the results", file=sys.stderr)
    return runs[plain].reset_index(drop=True)


def aggregate(runs_root: str | Path, out: str | Path, wall_seconds: float | None = None,
              source: str = "local", project: str = "brn-repro", entity: str | None = None,
              log_to_wandb: bool = False, runs_trained: int | None = None) -> Path:
    """Records -> summaries, figures, REPORT.md under ``out``. ``wall_seconds`` and
    ``runs_trained``: of the ``make reproduce`` call that asks (the report says so)."""
    from brn_repro.analysis.claims import evaluate_claims
    from brn_repro.analysis.plots import experiment_figures
    from brn_repro.analysis.report import write_report

    out = Path(out)
    check_out(out)
    from_tables = False
    if source == "wandb":
        runs, curves = load_wandb_runs(project, entity), pd.DataFrame()
    else:
        runs, curves = load_runs(runs_root)
        if from_tables := runs.empty and (out / RUNS_CSV).exists():  # re-analysis without the records
            runs, curves = read_tables(out)
    runs = plain_experiments(runs)
    if runs.empty:
        raise RecordError(f"no run records under {runs_root}; run an experiment first "
                          "(python -m brn_repro.train -m experiment=fig1_baseline profile=quick)")
    if source == "local" and not from_tables:
        write_tables(runs, curves, out)
    summaries, figures = {}, {}
    for experiment, frame in runs.groupby("experiment", sort=True):
        by = condition_columns(frame, experiment) or ["norm.name"]
        summary = condition_summary(frame, by)
        (out / experiment).mkdir(parents=True, exist_ok=True)
        write_atomic_csv(summary, out / experiment / "summary.csv")
        summaries[experiment] = summary
        figures[experiment] = experiment_figures(experiment, frame, curves, by, out / experiment)
    claims = evaluate_claims(runs, curves)
    report = write_report(out, runs, summaries, claims, figures, wall_seconds, runs_trained, curves)
    if log_to_wandb:
        from brn_repro.analysis.dashboard import publish
        from brn_repro.analysis.report import claims_table

        print(publish(out, Path(runs_root), runs, summaries, figures, claims, claims_table(claims),
                      project, entity))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="Aggregate run records into results/.")
    parser.add_argument("--runs", default="runs", help="the paths.runs of the runs")
    parser.add_argument("--out", default="results")
    parser.add_argument("--wall-seconds", type=float, default=None,
                        help="wall time of the reproduction, for the report")
    parser.add_argument("--runs-trained", type=int, default=None,
                        help="how many runs that reproduction trained, for the report")
    parser.add_argument("--source", choices=("local", "wandb"), default="local")
    parser.add_argument("--project", default="brn-repro")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--wandb", action="store_true",
                        help="also log the aggregate and results/ (an artifact) to W&B, and save "
                             "its workspace and report (offline: say what it would save)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        report = aggregate(args.runs, args.out, args.wall_seconds, args.source, args.project,
                           args.entity, args.wandb, runs_trained=args.runs_trained)
    except RecordError as err:  # a damaged record or plan, no records, an --out that is no directory
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # every file is replaced whole: results/ holds the last complete one
        print("stopped by SIGINT; nothing half-written", file=sys.stderr)
        sys.exit(130)
    print(f"wrote {report} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
