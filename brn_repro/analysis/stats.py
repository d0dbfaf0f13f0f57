"""Pre-registered paired statistics behind the report's claim verdicts.

The protocol is fixed before any result is read, so the verdicts cannot be tuned to
the outcome. BN and BRN runs with the same seed start from the same weights and see
the same batches, so conditions are compared *paired by seed* (the seed-to-seed
spread cancels in the difference). A diverged run is a failure of its condition and
is never dropped: it counts at chance level (the accuracy of an untrained model) and
the counts are reported; in an equivalence test any divergence fails the equivalence.
A seed present in one condition but not the other (a run not finished) is an error,
not a silently smaller sample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

INSUFFICIENT = "insufficient data"
CI_LEVEL = 0.95  # the superiority CI (descriptive; the one-sided test is at alpha)
FINISHED = ("completed", "diverged")


def chance_level(num_classes: int = 10) -> float:
    """Accuracy (percent) of an untrained model: what a diverged run is worth."""
    return 100.0 / num_classes


def _by_seed(frame: pd.DataFrame, name: str, metric: str, chance: float) -> tuple[pd.Series, int]:
    """The metric of one condition indexed by seed (diverged runs at ``chance``) and
    its number of diverged runs. Unfinished runs and duplicate seeds are errors."""
    unfinished = frame.loc[~frame["status"].isin(FINISHED), "seed"]
    if len(unfinished):
        raise ValueError(f"{name}: seed(s) {sorted(unfinished)} have not finished")
    duplicated = frame.loc[frame["seed"].duplicated(), "seed"]
    if len(duplicated):
        raise ValueError(f"{name}: seed(s) {sorted(set(duplicated))} appear more than once")
    diverged = frame["status"] == "diverged"
    values = pd.to_numeric(frame[metric], errors="coerce").where(~diverged, chance)
    if values.isna().any():
        raise ValueError(f"{name}: completed seed(s) {sorted(frame.loc[values.isna(), 'seed'])} "
                         f"have no {metric}")
    return pd.Series(values.to_numpy(float), index=frame["seed"].to_numpy()), int(diverged.sum())


def _paired(frames: Mapping[str, pd.DataFrame], metric: str,
            chance: float) -> tuple[dict[str, pd.Series], dict[str, int]]:
    """Each condition's values on the common, sorted seeds, and its diverged count;
    a seed missing from any condition raises ValueError naming it."""
    values, diverged = {}, {}
    for name, frame in frames.items():
        values[name], diverged[name] = _by_seed(frame, name, metric, chance)
    seeds = set().union(*(v.index for v in values.values()))
    gaps = {name: sorted(seeds - set(v.index)) for name, v in values.items()}
    gaps = {name: missing for name, missing in gaps.items() if missing}
    if gaps:
        raise ValueError("unpaired seeds: " + "; ".join(
            f"{name} lacks seed(s) {missing}" for name, missing in gaps.items()))
    order = sorted(seeds)
    return {name: v.loc[order] for name, v in values.items()}, diverged


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, metric: str = "test_acc",
                       chance: float = 10.0,
                       names: tuple[str, str] = ("a", "b")) -> tuple[pd.Series, dict[str, int]]:
    """Per-seed ``a - b`` (indexed by seed) and the diverged count of each condition."""
    values, diverged = _paired(dict(zip(names, (a, b), strict=True)), metric, chance)
    return values[names[0]] - values[names[1]], diverged


def _diverged_text(diverged: tuple[tuple[str, int], ...]) -> str:
    total = sum(n for _, n in diverged)
    if not total:
        return "0 diverged"
    return f"{total} diverged: " + ", ".join(f"{name} {n}" for name, n in diverged)


@dataclass(frozen=True)
class _Paired:
    n: int
    mean: float  # mean paired difference, accuracy points
    ci_low: float
    ci_high: float
    ci_level: float  # Superiority: 95%; Equivalence: 1 - 2 alpha, the CI matching TOST
    p: float
    diverged: tuple[tuple[str, int], ...]  # (condition, diverged runs)
    verdict: str

    def text(self) -> str:
        """One line for a Markdown table: estimate, CI, test, and the sample behind it."""
        seeds = "seed" if self.n == 1 else "seeds"
        tail = f"n = {self.n} paired {seeds} ({_diverged_text(self.diverged)})"
        if self.n < 2:
            return (f"{self.mean:+.2f} points, " if self.n else "") + f"{tail}: {INSUFFICIENT}"
        return (f"{self.mean:+.2f} points [{self.ci_level:.0%} CI {self.ci_low:+.2f}, "
                f"{self.ci_high:+.2f}], {self._test()}{_p_text(self.p)}, {tail}")


def _p_text(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


@dataclass(frozen=True)
class Robustness:
    """The same decision by tests that assume no normal differences: Wilcoxon's signed-rank
    test (exact for n <= 50, scipy) and a percentile bootstrap CI of the paired mean (scipy,
    9999 resamples, seeded); ``agrees``: both reach the t-test's decision."""

    wilcoxon_p: float
    boot_low: float
    boot_high: float
    boot_level: float
    decision: bool  # what the robust tests decide (significant / equivalent)
    agrees: bool

    def text(self) -> str:
        return (f"Wilcoxon signed-rank {_p_text(self.wilcoxon_p)}; bootstrap {self.boot_level:.0%} CI "
                f"[{self.boot_low:+.2f}, {self.boot_high:+.2f}]: "
                + ("agrees" if self.agrees else "**disagrees**") + " with the t-test")


def _bootstrap(x: np.ndarray, level: float) -> tuple[float, float]:
    if x.max() == x.min():
        return float(x[0]), float(x[0])
    ci = sps.bootstrap((x,), np.mean, confidence_level=level, n_resamples=9999, method="percentile",
                       random_state=np.random.default_rng(0)).confidence_interval
    return float(ci.low), float(ci.high)


def _wilcoxon(x: np.ndarray, alternative: str) -> float:
    """One-sided exact signed-rank p; 1 where every difference is zero (no evidence)."""
    if not np.any(x):
        return 1.0
    return float(sps.wilcoxon(x, alternative=alternative).pvalue)


def robust_superiority(diffs, alpha: float, shift: float, t_decision: bool) -> Robustness:
    """H1: mean > ``shift``: Wilcoxon on the differences minus the shift; the bootstrap's
    one-sided (1 - alpha) bound is the lower end of its (1 - 2 alpha) interval."""
    x = np.asarray(diffs, dtype=float)
    p = _wilcoxon(x - shift, "greater")
    low, high = _bootstrap(x, 1 - 2 * alpha)
    decision = p < alpha and low > shift
    return Robustness(p, low, high, 1 - 2 * alpha, decision, decision == t_decision)


def robust_equivalence(diffs, margin: float, alpha: float, t_decision: bool) -> Robustness:
    """Two one-sided Wilcoxon tests (H1: mean > -margin, H1: mean < +margin), p = the larger;
    the bootstrap's (1 - 2 alpha) interval inside (-margin, margin)."""
    x = np.asarray(diffs, dtype=float)
    p = max(_wilcoxon(x + margin, "greater"), _wilcoxon(x - margin, "less"))
    low, high = _bootstrap(x, 1 - 2 * alpha)
    decision = p < alpha and -margin < low and high < margin
    return Robustness(p, low, high, 1 - 2 * alpha, decision, decision == t_decision)


def power_superiority(effect: float, sd: float, n: int, alpha: float = 0.05, shift: float = 0.0) -> float:
    """Power of the one-sided paired t-test of H1: mean > ``shift`` at a true mean ``effect``
    and differences' sd ``sd``: the noncentral t's tail (scipy has no power function)."""
    df = n - 1
    return float(sps.nct.sf(sps.t.ppf(1 - alpha, df), df, (effect - shift) / (sd / math.sqrt(n))))


def power_equivalence(true: float, margin: float, sd: float, n: int, alpha: float = 0.05,
                      draws: int = 200_000) -> float:
    """Power of TOST at a true mean difference ``true``, by simulation of the paired mean and
    sd (normal differences, seeded): the share of draws whose two one-sided tests both reject."""
    rng = np.random.default_rng(0)
    mean = rng.normal(true, sd / math.sqrt(n), draws)
    se = sd * np.sqrt(rng.chisquare(n - 1, draws) / (n - 1)) / math.sqrt(n)
    crit = sps.t.ppf(1 - alpha, n - 1)
    return float(np.mean(((mean + margin) / se > crit) & ((mean - margin) / se < -crit)))


def effect_for_power(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean the one-sided paired t-test detects with ``power``."""
    from scipy.optimize import brentq

    return float(brentq(lambda e: power_superiority(e, sd, n, alpha) - power, 1e-9, 100 * sd + 1e-6))


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (scipy has only Benjamini-Hochberg): the k-th
    smallest of m times (m - k + 1), made monotone, capped at 1."""
    order = sorted(pvalues, key=pvalues.get)
    adjusted, running = {}, 0.0
    for k, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * pvalues[name]))
        adjusted[name] = running
    return adjusted


@dataclass(frozen=True)
class Superiority(_Paired):
    t: float
    significant: bool
    shift: float = 0.0  # H1: mean > shift (a regime check's margin); 0 for "beats"
    robust: Robustness | None = None

    def _test(self) -> str:
        against = f" against {self.shift:g}" if self.shift else ""
        return f"t({self.n - 1}) = {self.t:.2f}{against}, one-sided "


@dataclass(frozen=True)
class Equivalence(_Paired):
    margin: float
    p_lower: float  # H1: mean > -margin
    p_upper: float  # H1: mean < +margin
    equivalent: bool
    robust: Robustness | None = None

    def _test(self) -> str:
        return f"TOST ±{self.margin:g}: "


def _moments(diffs: Sequence[float] | pd.Series) -> tuple[int, float, float]:
    """n, the mean of the differences and the standard error of the mean (0 if all equal)."""
    x = np.asarray(diffs, dtype=float)
    if np.isnan(x).any():
        raise ValueError("paired differences contain NaN")
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    se = 0.0 if n < 2 or x.max() == x.min() else float(x.std(ddof=1)) / math.sqrt(n)
    return n, mean, se


def _ttest(x: np.ndarray, popmean: float, alternative: str = "two-sided"):
    """scipy's one-sample t-test of the paired differences ``x`` (= ``ttest_rel(a, b)`` for
    x = a - b), quiet about nearly equal differences: their sd is what the test has."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        return sps.ttest_1samp(x, popmean, alternative=alternative)


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """The two-sided ``level`` t CI of the mean of ``x`` (scipy's, of the paired t-test)."""
    ci = _ttest(x, 0.0).confidence_interval(level)
    return float(ci.low), float(ci.high)


def superiority(diffs: Sequence[float] | pd.Series, alpha: float = 0.05,
                diverged: Mapping[str, int] | None = None, shift: float = 0.0) -> Superiority:
    """One-sided paired t-test (Student, n - 1 df) of H1: mean difference > ``shift`` (0:
    "beats"; a regime check's margin otherwise), with the two-sided 95% t CI of the mean
    difference and the robustness check beside it. If all differences are equal (sd = 0)
    there is no sampling noise to test against: t = ±inf (NaN at the shift), p = 0 if the
    mean is above the shift else 1, and the CI is the single point."""
    n, mean, se = _moments(diffs)
    counts = tuple((diverged or {}).items())
    nan = float("nan")
    if n < 2:
        return Superiority(n, mean, nan, nan, CI_LEVEL, nan, counts, INSUFFICIENT, nan, False, shift)
    if se == 0:  # scipy's t-test divides by the zero sd here (nan, a warning): decided by hand
        t = math.copysign(math.inf, mean - shift) if mean != shift else nan
        p, low, high = (0.0 if mean > shift else 1.0), mean, mean
    else:
        x = np.asarray(diffs, dtype=float)
        test = _ttest(x, shift, alternative="greater")
        t, p = float(test.statistic), float(test.pvalue)
        low, high = _t_interval(x, CI_LEVEL)
    significant = p < alpha
    return Superiority(n, mean, low, high, CI_LEVEL, p, counts,
                       "significant" if significant else "not significant", t, significant, shift,
                       robust_superiority(diffs, alpha, shift, significant))


def equivalence(diffs: Sequence[float] | pd.Series, margin: float = 1.0, alpha: float = 0.05,
                diverged: Mapping[str, int] | None = None) -> Equivalence:
    """TOST (Schuirmann's two one-sided paired t-tests) with margin ±``margin`` points:
    p = max(p of H1: mean > -margin, p of H1: mean < +margin); equivalent iff p < alpha,
    i.e. iff the (1 - 2 alpha) t CI lies inside (-margin, margin). Any diverged run
    fails the equivalence whatever the numbers. With sd = 0 each one-sided p is 0 or 1
    by which side of its bound the mean lies."""
    n, mean, se = _moments(diffs)
    counts = tuple((diverged or {}).items())
    n_diverged = sum(n_run for _, n_run in counts)
    nan = float("nan")
    if n < 2:
        low = high = p = p_lower = p_upper = nan
    elif se == 0:
        low = high = mean
        p_lower, p_upper = (0.0 if mean > -margin else 1.0), (0.0 if mean < margin else 1.0)
        p = max(p_lower, p_upper)
    else:  # TOST: the two one-sided t-tests against the shifted margins
        x = np.asarray(diffs, dtype=float)
        p_lower = float(_ttest(x, -margin, alternative="greater").pvalue)
        p_upper = float(_ttest(x, margin, alternative="less").pvalue)
        p = max(p_lower, p_upper)
        low, high = _t_interval(x, 1 - 2 * alpha)
    equivalent = n >= 2 and not n_diverged and p < alpha
    verdict = (f"not equivalent: {n_diverged} run{'s' * (n_diverged > 1)} diverged" if n_diverged
               else INSUFFICIENT if n < 2 else "equivalent" if equivalent else "not equivalent")
    robust = robust_equivalence(diffs, margin, alpha, equivalent) if n >= 2 else None
    return Equivalence(n, mean, low, high, 1 - 2 * alpha, p, counts, verdict, margin,
                       p_lower, p_upper, equivalent, robust)


def difference_in_differences(bn_iid: pd.DataFrame, bn_noniid: pd.DataFrame,
                              brn_iid: pd.DataFrame, brn_noniid: pd.DataFrame,
                              metric: str = "test_acc", chance: float = 10.0,
                              alpha: float = 0.05) -> Superiority:
    """Does non-i.i.d. sampling cost BN more than BRN? Per seed
    d = (BN_iid - BN_noniid) - (BRN_iid - BRN_noniid), then the one-sided paired
    t-test of H1: mean d > 0 (``superiority``)."""
    frames = {"BN iid": bn_iid, "BN non-iid": bn_noniid,
              "BRN iid": brn_iid, "BRN non-iid": brn_noniid}
    v, diverged = _paired(frames, metric, chance)
    d = (v["BN iid"] - v["BN non-iid"]) - (v["BRN iid"] - v["BRN non-iid"])
    return superiority(d, alpha, diverged)
