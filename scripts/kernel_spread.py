"""How far a run's numbers move when only the CPU kernels change: the spread that
stands in for "another machine" (brn_repro.kernels). Trains seed 0 of every primary
condition of the default reproduction under each kernel setting below, and writes
results/kernels/spread.csv (one row per run and setting; the reproduction's pinned
runs are the reference, read from its runs dir when they are there).

    python scripts/kernel_spread.py            # make kernel-spread; ~15 min on 2 cores

The report (brn_repro.analysis.report) states the spread; scripts/verify_results.py uses it as the
tolerance where this machine's kernels differ from those a committed run recorded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from brn_repro.files import write_atomic
from brn_repro.kernels import unpinned_environ
from brn_repro.records import find_records, read_metrics_file, read_summary

ROOT = Path(__file__).resolve().parents[1]
# One seed of each claim's primary conditions: (experiment, the override that picks the condition).
SAMPLE = (
    ("fig1_baseline", "norm=bn"), ("fig1_baseline", "norm=brn"),
    ("fig2_small_batch", "norm=bn"), ("fig2_small_batch", "norm=brn"),
    ("fig3_noniid", "+experiment/conditions/fig3=bn_noniid"), ("fig3_noniid", "+experiment/conditions/fig3=brn_noniid"),
    ("moving_average_question", "+experiment/conditions/ma_question=bn_constant_lr"),
    ("moving_average_question", "+experiment/conditions/ma_question=ma_constant_lr"),
)
# name -> (overrides, environment): what another machine would run. "pinned" is the reproduction's.
SETTINGS = {
    "pinned": (["train.cpu_isa=avx2"], {}),
    "native": (["train.cpu_isa=native"], {}),  # this CPU's widest ISA everywhere, MKL's own path
    "aten_avx2_only": (["train.cpu_isa=native"], {"ATEN_CPU_CAPABILITY": "avx2"}),  # oneDNN, MKL native
    "pinned_eager": (["train.cpu_isa=avx2", "train.compile=false"], {}),
}
REFERENCE = "pinned"


def train(experiment: str, condition: str, setting: str, runs: Path, profile: str) -> None:
    """One run of the sample under one setting, in a fresh process (the kernels are fixed
    per process); a run already recorded there is not trained again."""
    overrides, env = SETTINGS[setting]
    command = [sys.executable, "-m", "brn_repro.train", f"experiment={experiment}", f"profile={profile}",
               condition, "seed=0", f"paths.runs={runs}", "logger=none", "train.progress=false", *overrides]
    done = subprocess.run(command, cwd=ROOT, env=unpinned_environ() | env, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: a diverged run, which is a result
        raise SystemExit(f"error: {' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-400:]}")


def collect(runs: Path, setting: str) -> list[dict]:
    rows = []
    for run_dir in find_records(runs):
        summary = read_summary(run_dir / "summary.json")
        if summary is None:
            continue
        metrics = read_metrics_file(run_dir / "metrics.jsonl")  # none: diverged before its first evaluation
        rows.append({"run": run_dir.name, "setting": setting, "status": summary["status"],
                     "test_acc": summary["test_acc"], "train_acc": summary["train_acc"],
                     "final_loss": metrics[-1]["loss"] if metrics else None,
                     **{f"kernels.{k}": v for k, v in (summary.get("kernels") or {}).items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--runs", default="runs/kernel-spread", help="where the other settings' runs go")
    parser.add_argument("--reference-runs", default="runs/quick",
                        help="the reproduction's runs dir: the pinned setting's runs are taken from there")
    parser.add_argument("--out", default="results/kernels/spread.csv")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    dirs = {s: Path(args.reference_runs) if s == REFERENCE else Path(args.runs) / s for s in SETTINGS}
    jobs = [(e, c, s) for s in SETTINGS for e, c in SAMPLE]
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(jobs), desc="kernel spread", unit="run") as bar:
        for _ in pool.map(lambda j: train(*j, dirs[j[2]], args.profile), jobs):
            bar.update(1)
    # run directories are named by identity, which the kernels are not part of: the same names everywhere
    sampled = {d.name for d in find_records(dirs["native"])}
    rows = [r for s in SETTINGS for r in collect(dirs[s], s) if r["run"] in sampled]
    frame = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, lambda tmp: frame.to_csv(tmp, index=False))
    table = frame.pivot(index="run", columns="setting", values="test_acc")
    print(table.assign(spread=table.max(axis=1) - table.min(axis=1)).to_string())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
