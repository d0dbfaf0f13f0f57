"""Claim 4's numbers: weight-norm growth and final training loss against BN, by seed.

The paper's "blows up" (section 2) is parameters growing without bound while the loss
does not improve. A run that diverges shows it outright; one that does not is judged
on its curves (``metrics.jsonl``: ``weight_norm`` and the training ``loss`` at each
evaluation) against the BN run with the same seed, over the evaluation steps both
logged, so a run that stopped early (diverged) is compared with BN over the same steps
rather than against a longer BN curve. The verdict is claims.py's; this module only
measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from brn_repro.stats import FINISHED

CURVE_COLUMNS = ("run_dir", "step", "weight_norm", "loss")


@dataclass(frozen=True)
class Growth:
    """Means over ``n`` paired seeds: growth = weight norm at the last shared evaluation
    minus at the first; loss = training loss at the last shared evaluation."""

    n: int
    ma_growth: float
    bn_growth: float
    ma_loss: float
    bn_loss: float
    factor: float = 2.0

    @property
    def threshold(self) -> float:
        """``factor`` times the magnitude of BN's growth: with BN's weights shrinking
        (weight decay), "twice BN's growth" would be negative and any growth would pass."""
        return self.factor * abs(self.bn_growth)

    @property
    def blows_up(self) -> bool:
        return self.ma_growth > self.threshold and self.ma_loss >= self.bn_loss

    def text(self) -> str:
        seeds = "seed" if self.n == 1 else "seeds"
        return (f"weight-norm growth {self.ma_growth:+.3g} vs BN {self.bn_growth:+.3g} "
                f"(threshold {self.threshold:.3g}); final training loss {self.ma_loss:.4g} vs "
                f"BN {self.bn_loss:.4g}; n = {self.n} paired {seeds}")


def _curve(curves: pd.DataFrame, run_dir: str) -> pd.DataFrame:
    rows = curves.loc[curves["run_dir"] == run_dir, ["step", "weight_norm", "loss"]]
    rows = rows.apply(pd.to_numeric, errors="coerce").dropna()
    return rows.drop_duplicates("step", keep="last").set_index("step").sort_index()


def weight_growth(ma: pd.DataFrame, bn: pd.DataFrame, curves: pd.DataFrame | None,
                  factor: float = 2.0) -> Growth | None:
    """Growth of one moving-average schedule's runs against BN's, paired by seed over the
    finished runs of both; None when no pair has two shared evaluations (no curves)."""
    if curves is None or not set(CURVE_COLUMNS) <= set(curves.columns):
        return None
    finished = {name: f[f["status"].isin(FINISHED)].drop_duplicates("seed").set_index("seed")
                for name, f in (("ma", ma), ("bn", bn))}
    pairs = []
    for seed in sorted(set(finished["ma"].index) & set(finished["bn"].index)):
        a = _curve(curves, str(finished["ma"].at[seed, "run_dir"]))
        b = _curve(curves, str(finished["bn"].at[seed, "run_dir"]))
        steps = a.index.intersection(b.index)
        if len(steps) < 2:
            continue
        first, last = steps[0], steps[-1]
        pairs.append((a.at[last, "weight_norm"] - a.at[first, "weight_norm"],
                      b.at[last, "weight_norm"] - b.at[first, "weight_norm"],
                      a.at[last, "loss"], b.at[last, "loss"]))
    if not pairs:
        return None
    means = pd.DataFrame(pairs).mean()
    return Growth(len(pairs), *(float(m) for m in means), factor=factor)
