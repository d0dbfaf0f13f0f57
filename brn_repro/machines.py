"""The report's "Numbers across machines": which kernels computed the runs (their
summaries record them: brn_repro.kernels), whether a pinned run trains to the same bits
on another CPU (results/kernels/emulated.csv, ``make check-kernels``), and how far the
numbers move on other kernels (results/kernels/spread.csv, ``make kernel-spread``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from brn_repro.experiments import described

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
        compiled = (f"inductor {k['inductor']} -march={k['march']} ({k['compiler']})" if k.get("inductor")
                    else "eager")
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


def spread_text(results: Path, runs: pd.DataFrame) -> str | None:
    """How far the final test accuracy moves between kernel settings, beside the seed-to-seed
    standard deviation of the same conditions."""
    path = results / "kernels" / "spread.csv"
    if not path.exists():
        return None
    spread = pd.read_csv(path)
    table = spread.pivot(index="run", columns="setting", values="test_acc")
    delta = table.drop(columns=SPREAD_REFERENCE).sub(table[SPREAD_REFERENCE], axis=0).abs()
    diverged = spread[spread["status"] == "diverged"]
    seed_sd = [s for s in (_seed_sd(runs, name) for name in table.index) if s is not None]
    settings = ", ".join(c for c in table.columns if c != SPREAD_REFERENCE)
    text = (f"seed 0 of {len(table)} primary conditions, each trained under the reproduction's pinned kernels "
            f"and under {settings}: the final test accuracy differs from the pinned run's by up to "
            f"{delta.max().max():.2f} points (median {delta.stack().median():.2f}; largest per setting: "
            + ", ".join(f"{c} {delta[c].max():.2f}" for c in delta.columns) + ")")
    if seed_sd:
        text += f"; the seed-to-seed sd of the same conditions is {pd.Series(seed_sd).median():.2f} (median)"
    if len(diverged):
        text += "; diverged: " + ", ".join(f"{r.run} under {r.setting}" for r in diverged.itertuples())
    return text


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
    if spread := spread_text(results, runs):
        lines.append(f"- **Other kernels** (`make kernel-spread`, [kernels/spread.csv](kernels/spread.csv)): "
                     f"{spread}. A number from other kernels compares with ours within that spread, not bit for "
                     "bit.")
    return lines + [""]
