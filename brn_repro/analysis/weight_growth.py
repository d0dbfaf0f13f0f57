"""Claim 4's numbers: per seed, the moving-average run's weight growth from initialization
against the BN run with the same seed, and when a run went non-finite.

The paper's "blows up" (section 2) is parameters growing without bound: the gradient step
can grow a bias or scale the weights although normalization would cancel the effect on the
loss. A run that diverges after the start-up window shows it outright; a NaN inside the
window (the first steps, before the moving averages forgot their first batch) is a start-up
instability, reported apart. A run that does not diverge is judged on its weight norm:
final (``metrics.jsonl``'s last ``weight_norm``) minus at initialization (the summary's
``weight_norm_init``), against the same for BN with the same seed and initial weights.
The rule is claims.py's; this module only measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

BLOWS_UP_DIVERGED, BLOWS_UP_GROWTH = "blows up (diverged)", "blows up (weight norm)"
STARTUP_NAN, NO_BLOW_UP, UNMEASURED = "start-up NaN", "does not blow up", "unmeasured"


@dataclass(frozen=True)
class SeedGrowth:
    seed: int
    verdict: str
    ma_growth: float | None  # weight norm: final minus initial (None: diverged or no curve)
    bn_growth: float | None
    diverged_step: int | None

    def text(self) -> str:
        if self.diverged_step is not None:
            return f"seed {self.seed}: NaN at step {self.diverged_step} ({self.verdict})"
        growth = "-" if self.ma_growth is None else f"{self.ma_growth:+.1f}"
        bn = "-" if self.bn_growth is None else f"{self.bn_growth:+.1f}"
        return f"seed {self.seed}: {growth} vs BN {bn} ({self.verdict})"


def _norms(curves: pd.DataFrame, run_dir: str) -> pd.DataFrame:
    """One run's logged weight norms, by step (rows without a number left out)."""
    rows = curves.loc[curves["run_dir"] == run_dir, ["step", "weight_norm"]]
    return rows.apply(pd.to_numeric, errors="coerce").dropna().sort_values("step")


def _final_norm(curves: pd.DataFrame | None, run_dir: str) -> float | None:
    if curves is None or "weight_norm" not in curves:
        return None
    rows = _norms(curves, run_dir)
    return float(rows["weight_norm"].iloc[-1]) if len(rows) else None


def _growth(run: pd.Series, curves: pd.DataFrame | None) -> float | None:
    final, init = _final_norm(curves, str(run["run_dir"])), pd.to_numeric(run.get("weight_norm_init"),
                                                                         errors="coerce")
    return None if final is None or pd.isna(init) else final - float(init)


def seed_growth(ma: pd.DataFrame, bn: pd.DataFrame, curves: pd.DataFrame | None,
                factor: float, startup_steps: int) -> list[SeedGrowth]:
    """One entry per moving-average seed: diverged after ``startup_steps`` or grown more than
    ``factor`` times BN's growth from initialization (same seed): blows up; a NaN within
    ``startup_steps``: a start-up NaN; otherwise does not blow up (unmeasured without BN's
    run of the seed or the curves)."""
    bn_by_seed = {int(r["seed"]): r for _, r in bn.iterrows() if r["status"] == "completed"}
    out = []
    for _, run in ma.sort_values("seed").iterrows():
        seed = int(run["seed"])
        if run["status"] == "diverged":
            step = int(run["diverged_step"])
            out.append(SeedGrowth(seed, STARTUP_NAN if step <= startup_steps else BLOWS_UP_DIVERGED,
                                  None, None, step))
            continue
        growth = _growth(run, curves) if run["status"] == "completed" else None
        bn_growth = _growth(bn_by_seed[seed], curves) if seed in bn_by_seed else None
        if growth is None or bn_growth is None:
            verdict = UNMEASURED
        else:
            verdict = BLOWS_UP_GROWTH if growth > factor * abs(bn_growth) else NO_BLOW_UP
        out.append(SeedGrowth(seed, verdict, growth, bn_growth, None))
    return out


def growth_after_first_evaluation(ma: pd.DataFrame, bn: pd.DataFrame,
                                  curves: pd.DataFrame | None) -> tuple[int, float, float, int] | None:
    """Not the rule, a sensitivity: the mean weight-norm growth from the first evaluation to
    the last of the completed moving-average runs and of BN's (same seeds), leaving out the
    early jump; (first step, moving-average growth, BN growth, seeds) or None without curves."""
    if curves is None or "weight_norm" not in curves:
        return None
    bn_by_seed = {int(r["seed"]): str(r["run_dir"]) for _, r in bn.iterrows() if r["status"] == "completed"}
    pairs, first = [], None
    for _, run in ma[ma["status"] == "completed"].iterrows():
        if int(run["seed"]) not in bn_by_seed:
            continue
        both = [_norms(curves, run_dir) for run_dir in (str(run["run_dir"]), bn_by_seed[int(run["seed"])])]
        if any(len(rows) < 2 for rows in both):
            continue
        first = int(both[0]["step"].iloc[0])
        pairs.append([float(r["weight_norm"].iloc[-1] - r["weight_norm"].iloc[0]) for r in both])
    if not pairs:
        return None
    ma_growth, bn_growth = (sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
    return first, ma_growth, bn_growth, len(pairs)
