"""Vertical marks on the figures against the step: where the step schedule cut the
learning rate, and where BRN's relaxation of rₘₐₓ and dₘₐₓ started."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from brn_repro.analysis.plots.labels import number_text


@dataclass(frozen=True)
class Mark:
    step: float
    kind: str  # one legend entry per kind
    style: str  # never a solid or dashed line: those are the conditions' and their batch noise
    colour: str


def lr_drops(runs: pd.DataFrame, curves: pd.DataFrame) -> list[Mark]:
    """The evaluations at which a step-schedule run's logged lr (``lr``, the lr of the step
    evaluated) first stands below the one before: the drops at ``train.step_milestones`` x
    ``train.steps``, exact where a milestone falls on an evaluation, as in the profiles (the
    milestones, a list, are not in the aggregated frame; the logged lr is, from records or tables)."""
    if "train.lr_schedule" not in runs or "lr" not in curves or curves.empty:
        return []
    stepped = runs.loc[runs["train.lr_schedule"] == "step", "run_dir"]
    drops: dict[float, float] = {}
    for _, run in curves[curves["run_dir"].isin(stepped)].groupby("run_dir"):
        lr = run.dropna(subset=["lr"]).sort_values("step").set_index("step")["lr"]
        ratio = lr / lr.shift()
        for step, factor in ratio[ratio < 1].items():
            drops.setdefault(float(step), float(factor))
    if not drops:
        return []
    factors = sorted({number_text(round(f, 4)) for f in drops.values()})
    some = " (step-schedule runs)" if (runs["train.lr_schedule"] != "step").any() else ""
    kind = f"lr × {' or '.join(factors)}{some}"
    return [Mark(step, kind, ":", "0.35") for step in sorted(drops)]


def relax_starts(runs: pd.DataFrame) -> list[Mark]:
    """``norm.relax_start`` of the BRN runs: until then rₘₐₓ = 1 and dₘₐₓ = 0 (plain BN)."""
    if "norm.relax_start" not in runs or "norm.name" not in runs:
        return []
    starts = pd.to_numeric(runs.loc[runs["norm.name"] == "brn", "norm.relax_start"], errors="coerce").dropna()
    return [Mark(float(s), "BRN's relaxation starts (rₘₐₓ > 1, dₘₐₓ > 0)", "-.", "0.15")
            for s in sorted(set(starts))]


def marks(runs: pd.DataFrame, curves: pd.DataFrame) -> list[Mark]:
    return lr_drops(runs, curves) + relax_starts(runs)


def draw(ax, drawn: list[Mark]) -> None:
    for mark in drawn:
        ax.axvline(mark.step, color=mark.colour, ls=mark.style, lw=1.1, label="_mark", zorder=1)
