"""The report's "Numbers across machines": which kernels computed the runs (their
summaries record them: brn_repro.kernels), whether a pinned run trains to the same bits
on another CPU (results/kernels/emulated.csv, ``make check-kernels``), and how far the
numbers move on other kernels (results/kernels/spread.csv, ``make kernel-spread``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from brn_repro.analysis.experiments import described

KERNEL_COLUMNS = ("aten", "onednn", "mkl", "inductor", "march", "compiler", "torch", "threads")
SPREAD_REFERENCE = "pinned"


def kernels_text(runs: pd.DataFrame) -> str:
    """The distinct kernel sets the runs were computed with, and on which CPUs."""
    distinct = runs.drop_duplicates("run_dir")
    if "kernels.aten" not in distinct:
        return "not recorded"
    columns = [f"kernels.{k}" for k in KERNEL_COLUMNS if f"kernels.{k}" in distinct]
    sets = distinct[["kernels.cpu", *columns]].astype(object).where(distinct[["kernels.cpu", *columns]].notna(), None)
    parts = []
    for values, n in sets.value_counts(dropna=False).items():
        k = dict(zip(["cpu", *[c.removeprefix("kernels.") for c in columns]], values, strict=True))
        compiled = (f"inductor {k['inductor']} -march={k['march']} ({k['compiler']})"
                    if pd.notna(k.get("inductor")) else "eager")  # value_counts turns None into NaN
        parts.append(f"{n} runs on {k['cpu']}: ATen {k['aten']}, oneDNN {k['onednn']}, MKL {k['mkl']}, "
                     f"{compiled}, torch {k['torch']}, {int(float(k['threads']))} thread(s)")
    if "kernels_mixed" in distinct and distinct["kernels_mixed"].fillna(False).astype(bool).any():
        parts.append(f"{int(distinct['kernels_mixed'].fillna(False).astype(bool).sum())} runs resumed on other "
                     "kernels (kernels_mixed)")
    return "; ".join(parts)


def emulated_text(results: Path) -> str | None:
    path = results / "kernels" / "emulated.csv"
    if not path.exists():
        return None
    rows = pd.read_csv(path)
    cpus = ", ".join(rows["cpu"].unique())
    verdicts = "; ".join(f"{r.setting}: {'the same bits' if r.identical else 'other numbers'} "
                         f"(largest weight difference {r.max_weight_difference:.2g})" for r in rows.itertuples())
    return (f"a short run ({rows['steps'].iloc[0]} steps; {rows['compared'].iloc[0]}) here and on {cpus}: "
            f"{verdicts}")


def spread_lines(results: Path, runs: pd.DataFrame) -> list[str]:
    """How far the final test accuracy moves between kernel settings, per sampled run, beside
    the seed-to-seed standard deviation of its condition (a table; none without the file)."""
    path = results / "kernels" / "spread.csv"
    if not path.exists():
        return []
    spread = pd.read_csv(path)
    table = spread.pivot(index="run", columns="setting", values="test_acc")
    others = [c for c in table.columns if c != SPREAD_REFERENCE]
    delta = table[others].sub(table[SPREAD_REFERENCE], axis=0).abs()
    lines = [f"| run | {SPREAD_REFERENCE} (the reproduction's) | " + " | ".join(others)
             + " | largest difference | seed sd of its condition |", "|---|" + "---|" * (len(others) + 3)]
    for run, row in table.iterrows():
        sd = _seed_sd(runs, run)
        cells = [_acc(row[c]) for c in [SPREAD_REFERENCE, *others]]
        shown_sd = "-" if sd is None else f"{sd:.2f}"
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {_acc(delta.loc[run].max())} | {shown_sd} |")
    return lines + ["", "Final test accuracy (%; diverged: a run that stopped on a non-finite loss; -: no "
                    "sd, the run's condition has fewer than two completed runs among the records). "
                    f"Largest difference over the runs: {delta.max().max():.2f} points (median "
                    f"{delta.stack().median():.2f})."]


def settings_text(results: Path) -> str:
    """Each setting of spread.csv by the kernels its runs recorded."""
    spread = pd.read_csv(results / "kernels" / "spread.csv")
    parts = []
    for setting, rows in spread.groupby("setting", sort=False):
        k = rows.iloc[0]
        compiled = f"inductor {k['kernels.inductor']}" if pd.notna(k.get("kernels.inductor")) else "eager"
        parts.append(f"`{setting}`: ATen {k['kernels.aten']}, oneDNN {k['kernels.onednn']}, MKL {k['kernels.mkl']}, "
                     + compiled)
    return "; ".join(parts) + "; MKL off: no fixed branch, MKL picks its code path by CPU"


def _acc(value: float | None) -> str:
    return "diverged" if value is None or pd.isna(value) else f"{value:.2f}"


def _seed_sd(runs: pd.DataFrame, name: str) -> float | None:
    """The sd over seeds of the final test accuracy of the condition run ``name`` belongs to."""
    names = runs["run_dir"].map(lambda d: Path(str(d)).name)
    rows = runs[names == name]
    if rows.empty or (description := described(rows.iloc[0]["experiment"])) is None:
        return None
    row, same = rows.iloc[0], runs["experiment"] == rows.iloc[0]["experiment"]
    for column in description.conditions:
        if column in runs:
            same &= runs[column].astype(str) == str(row[column])
    values = pd.to_numeric(runs.loc[same & (runs["status"] == "completed"), "test_acc"], errors="coerce")
    return float(values.std()) if values.count() > 1 else None


def machines_section(runs: pd.DataFrame, results: Path) -> list[str]:
    lines = ["## Numbers across machines", "",
             f"- **Kernels** (what decides the numbers beyond the config: `brn_repro/kernels.py`): "
             f"{kernels_text(runs)}.",
             "- **Same kernels, same bits**: retrained on the kernels it recorded, a run gives the numbers above "
             "exactly; `make verify-results` retrains a sample and compares (exactly where this machine runs the "
             "recorded kernels, within the spread below where it does not)."]
    if emulated := emulated_text(results):
        lines.append(f"- **Another CPU** (`make check-kernels`, [kernels/emulated.csv](kernels/emulated.csv)): "
                     f"{emulated}.")
    if spread := spread_lines(results, runs):
        lines += ["- **Other kernels** (`make kernel-spread`, [kernels/spread.csv](kernels/spread.csv)): seed 0 of "
                  "each claim's primary conditions, trained on the reproduction's pinned kernels and on others "
                  f"({settings_text(results)}). A number from other kernels compares with ours within these "
                  "differences, not bit for bit.", "", *spread]
    return lines + [""]
