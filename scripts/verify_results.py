"""`make verify-results`: retrain a sample of the committed runs and compare them with
results/runs.csv and results/curves.csv: exactly where this machine runs the kernels the
run recorded (brn_repro.kernels), within the measured kernel spread
(results/kernels/spread.csv) where it does not, saying which.

    python scripts/verify_results.py                    # 2 runs of the default reproduction, drawn at random
    python scripts/verify_results.py --runs NAME ...    # chosen ones (run directory names in runs.csv)

Each run is composed from its experiment's sweep (the same code path as `make reproduce`),
found by its directory name (its identity), and trained in a fresh process into --into.
Exit code 1 when any run disagrees.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import expand  # noqa: E402  (the sweep as make reproduce composes it)

from brn_repro.analysis.experiments import reproduction  # noqa: E402
from brn_repro.kernels import DECIDING, same_kernels  # noqa: E402
from brn_repro.records import read_metrics_file, run_dir_name  # noqa: E402

SUMMARY = ("status", "steps_done", "diverged_step", "test_acc", "train_acc", "minibatch_stats_acc")
CURVE = ("loss", "test_acc", "train_acc", "weight_norm")  # as curves.csv holds them: 6 significant digits


def committed(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.read_csv(results / "runs.csv")
    runs = runs[runs["experiment"].isin(reproduction())].assign(name=lambda f: f["run_dir"].map(lambda d: Path(d).name))
    return runs.drop_duplicates("name").set_index("name"), pd.read_csv(results / "curves.csv")


def configs_of(rows: pd.DataFrame, into: Path) -> dict[str, dict]:
    """Each chosen run's config, composed from its experiment's sweep and found by its name."""
    found = {}
    for (experiment, profile), group in rows.groupby(["experiment", "profile_name"]):
        base = [f"profile={profile}", f"paths.runs={into}", "logger=none", "train.progress=false"]
        by_name = {run_dir_name(c): c for c in expand(experiment, base)}
        for name in group.index:
            if name not in by_name:
                raise SystemExit(f"error: {name} is in no sweep of {experiment} today (conf/ changed since it "
                                 "was trained); verify results retrained at this commit")
            found[name] = by_name[name]
    return found


def retrain(config: dict) -> dict:
    from brn_repro.train import run  # in the worker: a fresh process pins its own kernels

    return run(config)


def spread_bound(results: Path, name: str) -> float | None:
    """How far the run's final test accuracy moved between the kernel settings measured: its
    own row of results/kernels/spread.csv, or the largest of any run where it has none."""
    path = results / "kernels" / "spread.csv"
    if not path.exists():
        return None
    spread = pd.read_csv(path).groupby("run")["test_acc"].agg(lambda a: a.max() - a.min()).dropna()
    return float(spread.get(name, spread.max()))


def kernels_of(row: pd.Series) -> dict:
    """The kernels runs.csv recorded for the run (its threads read back as a number)."""
    kernels = {k: (None if pd.isna(row.get(f"kernels.{k}")) else row.get(f"kernels.{k}")) for k in DECIDING}
    return kernels | {"threads": None if kernels["threads"] is None else int(kernels["threads"])}


def compare(name: str, row: pd.Series, curve: pd.DataFrame, summary: dict, run_dir: Path,
            bound: float | None) -> tuple[bool, str]:
    """(agrees, one line saying how)."""
    recorded, here = kernels_of(row), {k: summary["kernels"].get(k) for k in DECIDING}
    got = {k: summary.get(k) for k in SUMMARY}
    want = {k: (None if pd.isna(row[k]) else row[k]) for k in SUMMARY}
    metrics = pd.DataFrame(read_metrics_file(run_dir / "metrics.jsonl"))
    mine = [f"{v:.6g}" for k in CURVE for v in metrics[k]] if not metrics.empty else []
    theirs = [f"{v:.6g}" for k in CURVE for v in curve.sort_values("step")[k]]
    acc = f"test_acc {got['test_acc']} (committed {want['test_acc']})"
    if same_kernels(recorded, here):
        exact = all(_equal(got[k], want[k]) for k in SUMMARY) and mine == theirs
        return exact, (f"{name}: {acc}; {len(theirs)} curve values {'identical' if mine == theirs else 'DIFFER'}; "
                       f"kernels as recorded, so exact: {'yes' if exact else 'NO'}")
    differ = ", ".join(f"{k} {recorded[k]} -> {here[k]}" for k in DECIDING if recorded[k] != here[k])
    if bound is None or got["test_acc"] is None or want["test_acc"] is None:
        return False, f"{name}: {acc}; kernels differ ({differ}) and no spread measured to judge by"
    delta = abs(got["test_acc"] - want["test_acc"])
    return delta <= bound, (f"{name}: {acc}; kernels differ ({differ}): |difference| {delta:.2f} points, "
                            f"{'within' if delta <= bound else 'OUTSIDE'} the measured spread {bound:.2f}")


def _equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a == b if isinstance(a, str) or isinstance(b, str) else float(a) == float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--runs", nargs="*", help="run directory names (default: --sample drawn at random)")
    parser.add_argument("--sample", type=int, default=2)
    parser.add_argument("--into", default="runs/verify", help="where the retrained runs go")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    results, into = Path(args.results), Path(args.into).absolute()
    runs, curves = committed(results)
    names = args.runs or random.sample(sorted(runs.index), args.sample)
    if unknown := [n for n in names if n not in runs.index]:
        sys.exit(f"error: {', '.join(unknown)} is no run of the default reproduction in {results}/runs.csv")
    print(f"retraining {len(names)} committed runs into {into}: {' '.join(names)}", flush=True)
    configs = configs_of(runs.loc[names], into)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        summaries = dict(zip(names, pool.map(retrain, [configs[n] for n in names]), strict=True))
    agree = []
    for name in names:
        curve = curves[curves["run_dir"].map(lambda d: Path(d).name) == name]
        ok, line = compare(name, runs.loc[name], curve, summaries[name], into / name, spread_bound(results, name))
        agree.append(ok)
        print(("PASS " if ok else "FAIL ") + line)
    print(json.dumps({"verified": len(names), "agree": sum(agree)}))
    sys.exit(0 if all(agree) else 1)


if __name__ == "__main__":
    main()
