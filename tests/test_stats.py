"""The pre-registered paired statistics against values computed by hand.

The t-distribution values come from closed forms (Student's t CDF for df = 2 and 4)
or printed tables, never from the code under test, so a wrong df, a two-sided p in
place of a one-sided one, or a dropped diverged run each fail a test.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from brn_repro.stats import (
    INSUFFICIENT,
    chance_level,
    difference_in_differences,
    equivalence,
    paired_differences,
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
