"""The pre-registered paired statistics against values computed by hand.

The t-distribution values come from closed forms (Student's t CDF for df = 2 and 4)
or printed tables, never from the code under test, so a wrong df, a two-sided p in
place of a one-sided one, or a dropped diverged run each fail a test. Where no closed form
is practical the reference is scipy called here directly (the noncentral t, the bootstrap)
or an exact count (the one-sided Wilcoxon p of n all-positive differences is 1 / 2^n),
and the power functions are also checked against their large-n normal limits and a
simulation of the test itself.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from brn_repro.analysis.stats import (
    INSUFFICIENT,
    chance_level,
    difference_in_differences,
    effect_for_power,
    equivalence,
    holm,
    paired_differences,
    power_equivalence,
    power_superiority,
    superiority,
)


def sf_df4(t: float) -> float:
    """P(T > t), 4 df: F(t) = 1/2 + 3/8 * x (1 - t^2 / (12 u)), u = 1 + t^2/4, x = t / sqrt(u)."""
    u = 1 + t * t / 4
    return 0.5 - 3 / 8 * (t / math.sqrt(u)) * (1 - t * t / (12 * u))


def sf_df2(t: float) -> float:
    """P(T > t), 2 df: F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    return 0.5 - t / (2 * math.sqrt(2 + t * t))


def quantile_df2(q: float) -> float:
    """The q quantile of t with 2 df: (2q - 1) / sqrt(2 q (1 - q))."""
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


T975_DF4 = 2.776445  # tables
T95_DF4 = 2.131847


def runs(accs: dict[int, float | None], diverged: tuple[int, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame({"seed": list(accs),
                         "status": ["diverged" if s in diverged else "completed" for s in accs],
                         "test_acc": list(accs.values())})


def test_closed_forms_are_right():
    # sanity of the references themselves: symmetric, and the table's 97.5% point
    assert sf_df4(0.0) == 0.5 and sf_df2(0.0) == 0.5
    assert sf_df4(T975_DF4) == pytest.approx(0.025, abs=1e-6)
    assert sf_df2(quantile_df2(0.975)) == pytest.approx(0.025, abs=1e-12)
    assert quantile_df2(0.975) == pytest.approx(4.302653, abs=1e-6)  # tables


def assert_reported(result, ci: tuple[float, float], verdict: str, line: str) -> None:
    """The CI's bounds (to 1e-5: the t quantiles come from tables), the verdict, and the
    report's one line."""
    assert result.ci_low == pytest.approx(ci[0], abs=1e-5)
    assert result.ci_high == pytest.approx(ci[1], abs=1e-5)
    assert result.verdict == verdict
    assert result.text() == line


def test_superiority_one_to_five():
    result = superiority([1, 2, 3, 4, 5])
    se = math.sqrt(2.5) / math.sqrt(5)  # sd 1.5811388
    assert result.n == 5 and result.mean == pytest.approx(3.0)
    assert result.t == pytest.approx(3 / se) == pytest.approx(4.2426407)
    assert result.p == pytest.approx(sf_df4(3 / se), rel=1e-9)
    assert result.p == pytest.approx(0.006618, abs=5e-7)  # one-sided, not 0.0132 (two-sided)
    assert result.significant
    assert_reported(result, (3 - T975_DF4 * se, 3 + T975_DF4 * se), "significant",
                    "+3.00 points [95% CI +1.04, +4.96], t(4) = 4.24, one-sided p = 0.0066, "
                    "n = 5 paired seeds (0 diverged)")


def test_superiority_is_one_sided():
    assert superiority([1, -1, 2, -2]).p == pytest.approx(0.5)
    worse = superiority([-1, -2, -3, -4, -5])
    assert worse.p == pytest.approx(1 - 0.0066178, abs=1e-6) and not worse.significant
    assert worse.verdict == "not significant"
    # p is compared with alpha: 0.0066 passes 0.05 but not 0.005
    assert not superiority([1, 2, 3, 4, 5], alpha=0.005).significant


def test_zero_spread_does_not_divide_by_zero():
    up = superiority([1.0, 1.0, 1.0])
    assert up.p == 0.0 and up.significant and up.t == math.inf
    assert (up.ci_low, up.ci_high) == (1.0, 1.0)
    assert superiority([0.0, 0.0]).p == 1.0 and superiority([-1.0, -1.0]).p == 1.0
    assert equivalence([0.5, 0.5, 0.5]).equivalent
    assert not equivalence([1.5, 1.5, 1.5]).equivalent


def test_tost_equivalent():
    diffs = [0.1, -0.2, 0.3, 0.0, 0.2]  # mean 0.08, var 0.148 / 4 = 0.037
    se = math.sqrt(0.037 / 5)
    result = equivalence(diffs, margin=1.0)
    assert result.mean == pytest.approx(0.08)
    assert result.p_lower == pytest.approx(sf_df4((0.08 + 1) / se), rel=1e-6)
    assert result.p_upper == pytest.approx(sf_df4((1 - 0.08) / se), rel=1e-6)
    assert result.p == pytest.approx(result.p_upper)  # the nearer bound decides
    assert result.ci_level == pytest.approx(0.90)
    assert result.equivalent
    assert_reported(result, (0.08 - T95_DF4 * se, 0.08 + T95_DF4 * se), "equivalent",
                    "+0.08 points [90% CI -0.10, +0.26], TOST ±1: p = 0.0002, n = 5 paired seeds (0 diverged)")


def test_tost_not_equivalent_though_the_mean_is_inside_the_margin():
    diffs = [-1.0, 2.0, 0.0, 1.0, -0.5]  # mean 0.3, var 5.8 / 4 = 1.45
    se = math.sqrt(1.45 / 5)
    result = equivalence(diffs, margin=1.0)
    assert result.p == pytest.approx(sf_df4((1 - 0.3) / se), rel=1e-6)
    assert result.p == pytest.approx(0.1319, abs=5e-4)
    assert result.ci_high > 1.0  # the 90% CI crosses the margin
    assert not result.equivalent and result.verdict == "not equivalent"
    assert equivalence(diffs, margin=2.0).equivalent  # a wider margin would pass


def test_pairing_is_by_seed_not_by_row():
    bn = runs({0: 80.0, 1: 81.0, 2: 85.0})
    brn = runs({2: 84.0, 0: 79.0, 1: 80.0})  # rows in another order
    diffs, diverged = paired_differences(bn, brn)
    assert diffs.to_dict() == {0: 1.0, 1: 1.0, 2: 1.0}
    assert diverged == {"a": 0, "b": 0}


def test_diverged_run_counts_at_chance():
    bn = runs({s: 80.0 + s for s in range(5)})
    brn_ok = runs({s: 79.0 + s for s in range(5)})  # every difference 1
    brn = runs({0: 79.0, 1: 80.0, 2: None, 3: 82.0, 4: 83.0}, diverged=(2,))
    assert paired_differences(bn, brn_ok)[0].mean() == pytest.approx(1.0)
    diffs, diverged = paired_differences(bn, brn, names=("BN", "BRN"))
    # seed 2: 82 - 10 instead of 82 - 81, so the mean moves by (81 - 10) / 5 = 14.2
    assert diffs[2] == pytest.approx(72.0) and diffs.mean() == pytest.approx(15.2)
    assert diverged == {"BN": 0, "BRN": 1}
    assert chance_level(100) == 1.0
    assert paired_differences(bn, brn, chance=chance_level(100))[0].mean() == pytest.approx(17.0)
    # a diverged run's last logged accuracy is not taken at face value either
    brn_logged = runs({0: 79.0, 1: 80.0, 2: 81.0, 3: 82.0, 4: 83.0}, diverged=(2,))
    assert paired_differences(bn, brn_logged)[0][2] == pytest.approx(72.0)
    assert "1 diverged: BN 0, BRN 1" in superiority(diffs, diverged=diverged).text()


def test_divergence_fails_equivalence():
    close = [0.0, 0.1, -0.1, 0.0, 0.05]
    assert equivalence(close).equivalent
    result = equivalence(close, diverged={"BN": 0, "BRN": 1})
    assert not result.equivalent and result.verdict == "not equivalent: 1 run diverged"
    assert not equivalence([0.1], diverged={"BRN": 2}).equivalent


def test_missing_or_unfinished_seed_is_an_error():
    bn = runs({0: 80.0, 1: 81.0, 2: 82.0, 3: 83.0})
    with pytest.raises(ValueError, match=r"BRN lacks seed\(s\) \[3\]"):
        paired_differences(bn, runs({0: 80.0, 1: 80.0, 2: 80.0}), names=("BN", "BRN"))
    unfinished = runs({0: 80.0, 1: 80.0, 2: 80.0, 3: None})
    unfinished.loc[3, "status"] = "incomplete"
    with pytest.raises(ValueError, match=r"seed\(s\) \[3\] have not finished"):
        paired_differences(bn, unfinished)
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\] have no test_acc"):
        paired_differences(bn, runs({0: 80.0, 1: None, 2: 80.0, 3: 80.0}))


def test_one_pair_is_insufficient_data():
    diffs, _ = paired_differences(runs({7: 80.0}), runs({7: 78.0}))
    for result in (superiority(diffs), equivalence(diffs)):
        assert result.n == 1 and result.verdict == INSUFFICIENT
        assert result.text() == "+2.00 points, n = 1 paired seed (0 diverged): insufficient data"
    assert not superiority(diffs).significant and not equivalence(diffs).equivalent


def test_difference_in_differences_three_seeds():
    # BN's non-i.i.d. penalty per seed 10, 9, 12; BRN's 3, 2, 3 -> d = 7, 7, 9
    bn_iid, bn_noniid = runs({0: 80.0, 1: 82.0, 2: 81.0}), runs({2: 69.0, 0: 70.0, 1: 73.0})
    brn_iid, brn_noniid = runs({0: 81.0, 1: 82.0, 2: 80.0}), runs({0: 78.0, 1: 80.0, 2: 77.0})
    result = difference_in_differences(bn_iid, bn_noniid, brn_iid, brn_noniid)
    # mean 23/3, var (4 + 4 + 16) / 9 / 2 = 4/3, se = sqrt(4/9) = 2/3, t = 11.5 on 2 df
    assert result.n == 3 and result.mean == pytest.approx(23 / 3)
    assert result.t == pytest.approx(11.5)
    assert result.p == pytest.approx(sf_df2(11.5), rel=1e-9)
    assert result.p == pytest.approx(0.0037384, abs=5e-8)
    half = quantile_df2(0.975) * 2 / 3
    assert (result.ci_low, result.ci_high) == (pytest.approx(23 / 3 - half),
                                               pytest.approx(23 / 3 + half))
    assert result.significant
    assert dict(result.diverged) == {"BN iid": 0, "BN non-iid": 0, "BRN iid": 0, "BRN non-iid": 0}
    # a diverged BN non-i.i.d. run is BN's failure: its penalty grows to 80 - 10 = 70
    diverged = runs({0: None, 1: 73.0, 2: 69.0}, diverged=(0,))
    worse = difference_in_differences(bn_iid, diverged, brn_iid, brn_noniid)
    assert worse.mean == pytest.approx((67 + 7 + 9) / 3)
    assert dict(worse.diverged)["BN non-iid"] == 1
    with pytest.raises(ValueError, match=r"BRN non-iid lacks seed\(s\) \[2\]"):
        difference_in_differences(bn_iid, bn_noniid, brn_iid, runs({0: 78.0, 1: 80.0}))


# ---- superiority against a shift (regime checks), robustness, power, Holm ----

def test_superiority_against_a_shift():
    # 1..5 against 0.5: mean 3, se sqrt(2.5 / 5) = sqrt 0.5, t = 2.5 / se = 3.5355 (not 3 / se);
    # p = sf_df4(3.5355) = 0.012055; the CI is the mean's, whatever the shift
    se = math.sqrt(0.5)
    result = superiority([1, 2, 3, 4, 5], shift=0.5)
    assert result.t == pytest.approx(2.5 / se) == pytest.approx(3.535534, abs=1e-6)
    assert result.p == pytest.approx(sf_df4(2.5 / se), rel=1e-9)
    assert result.p == pytest.approx(0.012055, abs=1e-6)
    assert result.shift == 0.5 and result.significant
    assert_reported(result, (3 - T975_DF4 * se, 3 + T975_DF4 * se), "significant",
                    "+3.00 points [95% CI +1.04, +4.96], t(4) = 3.54 against 0.5, one-sided p = 0.0121, "
                    "n = 5 paired seeds (0 diverged)")
    # against 2 the mean 3 is above the shift but not significantly: t = sqrt 2, p = 0.1151
    above = superiority([1, 2, 3, 4, 5], shift=2.0)
    assert above.p == pytest.approx(sf_df4(math.sqrt(2)), rel=1e-9)
    assert above.p == pytest.approx(0.1151, abs=1e-4) and not above.significant
    # a shift of 0 leaves the text as before (no "against")
    assert "t(4) = 4.24, one-sided" in superiority([1, 2, 3, 4, 5]).text()
    # no spread: decided by which side of the shift the mean lies
    assert superiority([1.0, 1.0, 1.0], shift=0.5).p == 0.0
    at = superiority([1.0, 1.0, 1.0], shift=1.0)
    assert at.p == 1.0 and math.isnan(at.t) and not at.significant
    assert superiority([1.0, 1.0, 1.0], shift=1.5).p == 1.0


def direct_bootstrap(x, level):
    """The percentile bootstrap CI of the mean, called on scipy directly (seeded rng 0)."""
    ci = sps.bootstrap((np.asarray(x, float),), np.mean, confidence_level=level, n_resamples=9999,
                       method="percentile", random_state=np.random.default_rng(0)).confidence_interval
    return ci.low, ci.high


def test_superiority_robustness_agrees():
    # 1..5 against 0.5: the differences minus the shift are all positive, so the exact
    # one-sided Wilcoxon p is 1 / 2^5 = 0.03125 < 0.05, and the bootstrap's lower end is above 0.5
    result = superiority([1, 2, 3, 4, 5], shift=0.5)
    robust = result.robust
    assert robust.wilcoxon_p == pytest.approx(1 / 32)
    assert robust.wilcoxon_p == pytest.approx(sps.wilcoxon([0.5, 1.5, 2.5, 3.5, 4.5],
                                                           alternative="greater").pvalue)
    assert robust.boot_level == pytest.approx(0.90)  # its lower end: the one-sided 95% bound
    assert (robust.boot_low, robust.boot_high) == pytest.approx(direct_bootstrap([1, 2, 3, 4, 5], 0.90))
    assert 1 <= robust.boot_low < 3 < robust.boot_high <= 5  # percentiles of resampled means
    assert robust.boot_low > 0.5 and robust.decision and robust.agrees
    assert robust.text() == (f"Wilcoxon signed-rank p = {1 / 32:.4f}; bootstrap 90% CI "
                             f"[{robust.boot_low:+.2f}, {robust.boot_high:+.2f}]: agrees with the t-test")
    # both not significant also agrees
    assert superiority([1, -1, 2, -2]).robust.agrees
    assert not superiority([1, -1, 2, -2]).robust.decision
    # seeded: the same interval on every call
    again = superiority([1, 2, 3, 4, 5], shift=0.5).robust
    assert (again.boot_low, again.boot_high) == (robust.boot_low, robust.boot_high)


def test_superiority_robustness_disagrees_with_three_seeds():
    # 1.0, 1.1, 0.9: t = 1 / (0.1 / sqrt 3) = 17.32, p = sf_df2(17.32) = 0.0017: significant;
    # the exact Wilcoxon p of 3 positive differences is at best 1 / 2^3 = 0.125: not
    result = superiority([1.0, 1.1, 0.9])
    assert result.p == pytest.approx(sf_df2(math.sqrt(300)), rel=1e-6) and result.significant
    assert result.robust.wilcoxon_p == pytest.approx(1 / 8)
    assert not result.robust.decision and not result.robust.agrees
    assert result.robust.text().endswith("**disagrees** with the t-test")
    assert superiority([1.0]).robust is None  # n < 2: nothing to check


def test_equivalence_robustness():
    # diffs + 1 all positive and diffs - 1 all negative: each one-sided exact Wilcoxon p is
    # 1 / 2^5; the larger of the two is the robust TOST p
    result = equivalence([0.1, -0.2, 0.3, 0.0, 0.2], margin=1.0)
    robust = result.robust
    assert robust.wilcoxon_p == pytest.approx(1 / 32)
    assert (robust.boot_low, robust.boot_high) == pytest.approx(
        direct_bootstrap([0.1, -0.2, 0.3, 0.0, 0.2], 0.90))
    assert -1 < robust.boot_low < robust.boot_high < 1
    assert robust.decision and robust.agrees
    # three seeds: the t-test's TOST finds equivalence (t = 1 / (0.1 / sqrt 3) on both sides,
    # p = sf_df2(17.32) = 0.0017), Wilcoxon cannot go below 1 / 8
    three = equivalence([0.0, 0.1, -0.1], margin=1.0)
    assert three.p == pytest.approx(sf_df2(math.sqrt(300)), rel=1e-6) and three.equivalent
    assert three.robust.wilcoxon_p == pytest.approx(1 / 8) and not three.robust.agrees
    # a bootstrap interval across the margin fails the robust decision: 1, 2, 3, 4, 5 within ±3
    wide = equivalence([1, 2, 3, 4, 5], margin=3.0)
    assert wide.robust.boot_high > 3 and not wide.robust.decision
    assert not wide.equivalent and wide.robust.agrees
    assert equivalence([0.5]).robust is None


def normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


Z = NormalDist().inv_cdf  # standard normal quantiles, from the standard library


def test_power_superiority():
    # at a true mean equal to the shift the test's rejection rate is its size alpha (central t)
    assert power_superiority(0.0, 1.0, 5) == pytest.approx(0.05, abs=1e-12)
    assert power_superiority(1.0, 0.5, 3, 0.05, shift=1.0) == pytest.approx(0.05, abs=1e-12)
    assert power_superiority(0.0, 1.0, 5, alpha=0.01) == pytest.approx(0.01, abs=1e-12)
    # the shift only moves the effect
    assert power_superiority(1.3, 0.5, 5, shift=0.5) == pytest.approx(power_superiority(0.8, 0.5, 5))
    # the noncentral t's tail beyond the central t's 95% point, noncentrality effect / (sd / sqrt n)
    delta = 0.3 / (0.453 / math.sqrt(15))
    assert power_superiority(0.3, 0.453, 15) == pytest.approx(
        sps.nct.sf(sps.t.ppf(0.95, 14), 14, delta), rel=1e-9)
    # large n: the normal approximation Phi(effect sqrt n / sd - z_0.95) = Phi(2.5 - 1.645) = 0.8037
    assert normal_cdf(2.5 - Z(0.95)) == pytest.approx(0.80377, abs=1e-5)
    assert power_superiority(0.025, 1.0, 10_000) == pytest.approx(normal_cdf(2.5 - Z(0.95)), abs=1e-3)
    # monotone in the effect and in n
    powers = [power_superiority(e, 0.453, 5) for e in (0.1, 0.3, 0.5, 1.0)]
    assert powers == sorted(powers) and powers[-1] > 0.98
    assert power_superiority(0.3, 0.453, 5) < power_superiority(0.3, 0.453, 15)


def test_power_superiority_by_simulation():
    # an independent check: draw normal differences (n = 5, mean 0.5, sd 0.453), run the
    # one-sided t-test by hand, count rejections (Monte Carlo se about 0.0015)
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.453, size=(100_000, 5))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(5))
    rate = float(np.mean(t > 2.131847))  # tables: t_0.95 with 4 df
    assert power_superiority(0.5, 0.453, 5) == pytest.approx(rate, abs=0.01)


def test_power_equivalence():
    # a margin too narrow to ever clear; a margin so wide every draw clears it
    assert power_equivalence(0.0, 1e-6, 1.0, 5) == 0.0
    assert power_equivalence(0.0, 100.0, 1.0, 5) > 0.999
    # more seeds, more power (seeded: the same draws each time)
    powers = [power_equivalence(0.0, 0.485, 0.453, n) for n in (3, 5, 10, 20, 40)]
    assert powers == sorted(powers) and len(set(powers)) == 5 and powers[-1] > 0.95
    assert power_equivalence(0.0, 0.485, 0.453, 10) == power_equivalence(0.0, 0.485, 0.453, 10)
    # at a true difference on the margin TOST rejects at most alpha of the time
    assert power_equivalence(0.485, 0.485, 0.453, 10) <= 0.05 + 0.003
    # further from 0, less power
    assert power_equivalence(0.2, 0.485, 0.453, 10) < power_equivalence(0.0, 0.485, 0.453, 10)
    # large n at a true 0: about 2 Phi(margin sqrt n / sd - t_0.95) - 1, here
    # 2 Phi(3 - 1.6604) - 1 = 0.8196 (t_0.95 with 99 df: tables)
    assert power_equivalence(0.0, 0.3, 1.0, 100) == pytest.approx(2 * normal_cdf(3 - 1.660391) - 1, abs=0.01)


def test_effect_for_power_inverts_power_superiority():
    effect = effect_for_power(0.453, 15)
    assert power_superiority(effect, 0.453, 15) == pytest.approx(0.8, abs=1e-6)
    assert effect_for_power(0.453, 15, power=0.9) > effect > effect_for_power(0.453, 30)
    # large n: (z_0.95 + z_0.8) sd / sqrt n = (1.6449 + 0.8416) / 100
    assert effect_for_power(1.0, 10_000) == pytest.approx((Z(0.95) + Z(0.8)) / 100, rel=1e-3)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4 x 0.01 = 0.04; 3 x 0.03 = 0.09; 2 x 0.04 = 0.08,
    # raised to 0.09 (monotone); 1 x 0.5 = 0.5
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.5})
    # capped at 1: 2 x 0.6 = 1.2 -> 1, then max(1, 0.7) = 1
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}
    assert holm({"only": 0.03}) == {"only": 0.03}
    assert holm({}) == {}


def closed_form_t(x: np.ndarray, shift: float, level: float) -> tuple[float, float, float, float]:
    """The paired t-test by hand: t = (mean - shift) / (sd / sqrt n), its one-sided (greater)
    p from the t distribution's tail, and the two-sided ``level`` CI mean ± t_q * se."""
    n, mean = len(x), float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    return (mean - shift) / se, float(sps.t.sf((mean - shift) / se, n - 1)), mean - half, mean + half


def test_scipys_t_tests_match_the_closed_form():
    # superiority and TOST call scipy's ttest_1samp on the paired differences (ttest_rel's own
    # computation); they agree with the hand computation to the last bits on random samples
    rng = np.random.default_rng(7)
    for _ in range(200):
        x = rng.normal(rng.normal(0, 1), rng.uniform(0.1, 3), int(rng.integers(2, 20))).round(2)
        if x.max() == x.min():
            continue
        for shift in (0.0, 0.5):
            t, p, low, high = closed_form_t(x, shift, 0.95)
            result = superiority(x, shift=shift)
            assert result.t == pytest.approx(t, rel=1e-12, abs=1e-12)
            assert result.p == pytest.approx(p, rel=1e-10, abs=1e-15)
            assert (result.ci_low, result.ci_high) == (pytest.approx(low, rel=1e-12, abs=1e-12),
                                                       pytest.approx(high, rel=1e-12, abs=1e-12))
        for margin in (0.5, 1.0):
            _, p_lower, low, high = closed_form_t(x, -margin, 0.90)
            t_upper = closed_form_t(x, margin, 0.90)[0]
            result = equivalence(x, margin=margin)
            assert result.p_lower == pytest.approx(p_lower, rel=1e-10, abs=1e-15)
            assert result.p_upper == pytest.approx(float(sps.t.cdf(t_upper, len(x) - 1)), rel=1e-10, abs=1e-15)
            assert result.p == max(result.p_lower, result.p_upper)
            assert (result.ci_low, result.ci_high) == (pytest.approx(low, rel=1e-12, abs=1e-12),
                                                       pytest.approx(high, rel=1e-12, abs=1e-12))
