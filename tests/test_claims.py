"""The pre-registered claim verdicts on synthetic run frames with hand-computed outcomes.

Frames carry the columns ``aggregate.load_runs`` produces (flattened config keys and
summary fields). t-distribution values come from the closed form for 2 df (three
seeds), never from the code under test.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from brn_repro.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_RUN,
    PARTLY,
    REPRODUCED,
    VERDICT_RULES,
    claim_1,
    claim_2,
    claim_3,
    claim_4,
    evaluate_claims,
)
from brn_repro.weight_growth import weight_growth

CHANCE = 10.0


def sf_df2(t: float) -> float:
    """P(T > t), 2 df: 1/2 - t / (2 sqrt(2 + t^2))."""
    return 0.5 - t / (2 * math.sqrt(2 + t * t))


def run(experiment, norm, seed, acc, status="completed", pwb=32, sampler="iid", momentum=None,
        momentum_start=None, train_acc=None, mb_acc=None, lr_schedule="cosine", weight_decay=5e-4):
    return {"experiment": experiment, "norm.name": norm, "seed": seed, "status": status,
            "test_acc": acc if status == "completed" else None,
            "train_acc": train_acc if status == "completed" else None,
            "minibatch_stats_acc": mb_acc if status == "completed" else None,
            "data.per_worker_batch": pwb, "sampler.name": sampler, "dataset.name": "fashion_mnist",
            "norm.momentum": momentum, "norm.momentum_start": momentum_start,
            "train.lr_schedule": lr_schedule, "optim.weight_decay": weight_decay,
            "run_dir": f"runs/{experiment}/{norm}-{sampler}-{pwb}-{momentum}-{lr_schedule}-{seed}"}


def runs_of(experiment, norm, accs, diverged=(), unfinished=(), **kw):
    return [run(experiment, norm, seed, acc, "diverged" if seed in diverged else
                "incomplete" if seed in unfinished else "completed", **kw)
            for seed, acc in accs.items()]


def fig1(bn, brn, **kw):
    return pd.DataFrame(runs_of("fig1_baseline", "bn", bn) + runs_of("fig1_baseline", "brn", brn, **kw))


# ---- claim 1: TOST, margin 1 ----

def test_claim_1_equivalent_is_reproduced():
    # BRN - BN = 0.2, 0.0, 0.1: mean 0.1, sd 0.1, se 0.1 / sqrt 3; the nearer bound is +1:
    # t = 0.9 / se = 9 sqrt 3, p = sf_df2(9 sqrt 3) = 0.0020; 90% CI 0.1 -+ 2.92 se
    claim = claim_1(fig1({0: 80.0, 1: 81.0, 2: 82.0}, {0: 80.2, 1: 81.0, 2: 82.1}), CHANCE)
    assert sf_df2(9 * math.sqrt(3)) == pytest.approx(0.002045, abs=1e-6)
    assert claim.verdict == REPRODUCED
    assert claim.primary == ("+0.10 points [90% CI -0.07, +0.27], TOST ±1: p = 0.0020, "
                             "n = 3 paired seeds (0 diverged)")
    assert claim.rows[0].primary and not claim.rows[1].primary


def test_claim_1_spread_across_the_margin_is_not_reproduced():
    # BRN - BN = -1, +1, 0.3: the mean 0.1 is inside the margin, the 90% CI is not
    claim = claim_1(fig1({0: 80.0, 1: 81.0, 2: 82.0}, {0: 79.0, 1: 82.0, 2: 82.3}), CHANCE)
    assert claim.verdict == f"{NOT_REPRODUCED} (not equivalent within ±1 point)"


def test_claim_1_a_diverged_brn_seed_is_not_reproduced():
    claim = claim_1(fig1({0: 80.0, 1: 81.0, 2: 82.0}, {0: 80.2, 1: 81.0, 2: 82.1}, diverged=(1,)),
                    CHANCE)
    assert claim.verdict == f"{NOT_REPRODUCED} (not equivalent: 1 run diverged)"
    # the diverged run stays in the sample at chance: seed 1 gives 10 - 81 = -71
    assert claim.primary.startswith(f"{(0.2 - 71 + 0.1) / 3:+.2f} points")
    assert "1 diverged: BRN 1, BN 0" in claim.primary
    # a divergence decides even with one seed; one seed without one is inconclusive
    one = claim_1(fig1({0: 80.0}, {0: 80.0}, diverged=(0,)), CHANCE)
    assert one.verdict.startswith(NOT_REPRODUCED)
    assert claim_1(fig1({0: 80.0}, {0: 80.3}), CHANCE).verdict == \
        f"{INCONCLUSIVE}: fewer than 2 paired seeds"


def test_unfinished_or_missing_seed_is_inconclusive_not_a_crash():
    bn = {0: 80.0, 1: 81.0, 2: 82.0}
    unfinished = claim_1(fig1(bn, {0: 80.2, 1: 81.0, 2: None}, unfinished=(2,)), CHANCE)
    assert unfinished.verdict == f"{INCONCLUSIVE}: seeds [2] of BRN not finished"
    assert unfinished.primary == "-"
    missing = claim_1(fig1(bn, {0: 80.2, 1: 81.0}), CHANCE)
    assert missing.verdict == f"{INCONCLUSIVE}: unpaired seeds: BRN lacks seed(s) [2]"
    assert claim_1(pd.DataFrame([run("other", "bn", 0, 1.0)]), CHANCE).verdict == NOT_RUN
    assert claim_1(fig1(bn, {}), CHANCE).verdict == f"{NOT_RUN}: no BRN runs"


# ---- claim 2: one-sided paired t at per-worker 4 ----

def fig2(bn4, brn4, extra=()):
    rows = runs_of("fig2_small_batch", "bn", bn4, pwb=4) + runs_of("fig2_small_batch", "brn", brn4, pwb=4)
    return pd.DataFrame(rows + list(extra))


def test_claim_2_significant_is_reproduced_and_secondary_rows_do_not_change_it():
    # BRN - BN = 3, 4, 2: mean 3, sd 1, se 1/sqrt 3, t = 3 sqrt 3 = 5.196, p = 0.0175;
    # 95% CI 3 -+ 4.3027 / sqrt 3 = [0.52, 5.48]
    # at per-worker 1 BRN is far worse (secondary): the verdict stays reproduced
    worse_at_1 = (runs_of("fig2_small_batch", "bn", {0: 60.0, 1: 61.0, 2: 62.0}, pwb=1)
                  + runs_of("fig2_small_batch", "brn", {0: 30.0, 1: 30.0, 2: 31.0}, pwb=1))
    claim = claim_2(fig2({0: 70.0, 1: 71.0, 2: 72.0}, {0: 73.0, 1: 75.0, 2: 74.0}, worse_at_1), CHANCE)
    assert sf_df2(3 * math.sqrt(3)) == pytest.approx(0.017549, abs=1e-6)
    assert claim.verdict == REPRODUCED
    assert claim.primary == ("+3.00 points [95% CI +0.52, +5.48], t(2) = 5.20, one-sided "
                             "p = 0.0175, n = 3 paired seeds (0 diverged)")
    rows = {r.label: r for r in claim.rows}
    assert rows["BRN > BN at per-worker batch 1"].verdict == "not significant"
    assert not rows["BRN > BN at per-worker batch 1"].primary
    assert rows["BRN at 4 below BN at 32 (fig1_baseline)"].verdict == f"{NOT_RUN}: no BN at 32 runs"


def test_claim_2_reversed_is_not_reproduced_bn_better():
    claim = claim_2(fig2({0: 73.0, 1: 75.0, 2: 74.0}, {0: 70.0, 1: 71.0, 2: 72.0}), CHANCE)
    assert claim.verdict == f"{NOT_REPRODUCED} (BN significantly better)"
    assert claim.primary.startswith("-3.00 points") and "p = 0.9825" in claim.primary
    assert "p = 0.0175" in claim.detail  # the reverse test is shown


def test_claim_2_no_difference_is_not_reproduced_no_significant_difference():
    # BRN - BN = 1, -1, 0.5: mean 1/6, neither one-sided test is significant
    claim = claim_2(fig2({0: 70.0, 1: 71.0, 2: 72.0}, {0: 71.0, 1: 70.0, 2: 72.5}), CHANCE)
    assert claim.verdict == f"{NOT_REPRODUCED} (no significant difference)"


# ---- claim 3: difference in differences, plus BRN non-iid equivalent to BRN iid ----

def fig3(brn_noniid, diverged=None, extra=()):
    e = "fig3_noniid"
    div = diverged or {}
    rows = (runs_of(e, "bn", {0: 80.0, 1: 82.0, 2: 81.0}, sampler="iid", diverged=div.get("bn iid", ()))
            + runs_of(e, "bn", {0: 70.0, 1: 73.0, 2: 69.0}, sampler="noniid")
            + runs_of(e, "brn", {0: 81.0, 1: 82.0, 2: 80.0}, sampler="iid",
                      diverged=div.get("brn iid", ()))
            + runs_of(e, "brn", brn_noniid, sampler="noniid"))
    return pd.DataFrame(rows + list(extra))


def test_claim_3_both_parts_reproduced():
    # BN's penalty 10, 9, 12; BRN's 0.1, 0, 0.1 -> d = 9.9, 9, 11.9 (mean 30.8 / 3 = 10.27);
    # BRN non-iid - iid = -0.1, 0, -0.1: inside ±1 with a tiny spread -> equivalent.
    # The split control is worse than BN non-iid (secondary): the verdict stays reproduced.
    split = runs_of("fig3_controls", "bn", {0: 60.0, 1: 60.0, 2: 61.0}, sampler="noniid_split")
    claim = claim_3(fig3({0: 80.9, 1: 82.0, 2: 79.9}, extra=split), CHANCE)
    assert claim.verdict == REPRODUCED
    assert claim.primary.startswith("(a) +10.27 points [95% CI ")
    assert "; (b) -0.07 points [90% CI " in claim.primary
    rows = {r.label: r for r in claim.rows}
    assert rows["BN on split groups > BN non-i.i.d. (control)"].verdict == "not significant"
    assert [r.primary for r in claim.rows[:3]] == [True, True, False]
    assert not any("GN" in r.label for r in claim.rows)  # no GN runs, no GN row


def test_claim_3_significant_penalty_but_brn_not_equivalent_is_partly():
    # BRN's penalty 1, 0, 1 -> d = 9, 9, 11: mean 29/3, se 2/3, t = 14.5 (significant);
    # BRN non-iid - iid = -1, 0, -1: mean -2/3, se 1/3, p_lower = sf_df2(1) = 0.211
    claim = claim_3(fig3({0: 80.0, 1: 82.0, 2: 79.0}), CHANCE)
    assert sf_df2(14.5) < 0.05 and sf_df2(1.0) == pytest.approx(0.2113, abs=1e-4)
    assert claim.verdict == f"{PARTLY} (BRN non-i.i.d. not equivalent to i.i.d.)"


def test_claim_3_no_larger_bn_penalty_is_not_reproduced():
    # BRN's penalty 10, 9, 12 like BN's: d = 0, 0, 0
    claim = claim_3(fig3({0: 71.0, 1: 73.0, 2: 68.0}), CHANCE)
    assert claim.verdict.startswith(f"{NOT_REPRODUCED} (BN's non-i.i.d. penalty")


def test_claim_3_a_divergence_makes_the_primary_inconclusive():
    # a diverged BRN i.i.d. run at chance would make BRN's penalty 10 - 80.9 and favour the claim
    claim = claim_3(fig3({0: 80.9, 1: 82.0, 2: 79.9}, diverged={"brn iid": (0,)}), CHANCE)
    assert claim.verdict == f"{INCONCLUSIVE}: 1 diverged run among the four (BRN iid 1)"
    assert claim.rows[0].verdict == claim.verdict
    # ... and so does one that would count against it
    against = claim_3(fig3({0: 80.9, 1: 82.0, 2: 79.9}, diverged={"bn iid": (1,)}), CHANCE)
    assert against.verdict == f"{INCONCLUSIVE}: 1 diverged run among the four (BN iid 1)"


def test_claim_3_gn_row_when_gn_noniid_runs_exist():
    gn = runs_of("fig3_controls", "gn", {0: 79.0, 1: 80.0, 2: 81.0}, sampler="noniid")
    claim = claim_3(fig3({0: 80.9, 1: 82.0, 2: 79.9}, extra=gn), CHANCE)
    rows = {r.label: r for r in claim.rows}
    # GN - BN non-iid = 9, 7, 12 -> significant
    assert rows["GN non-i.i.d. > BN non-i.i.d."].verdict == "significant"
    assert claim.verdict == REPRODUCED


# ---- claim 4: diverged, or weight norm > 2 |BN's growth| with no loss gain ----

def ma_runs(status=("completed", "completed"), lr_schedule="constant", weight_decay=0.0):
    """BN and moving-average runs of one training setting (primary: constant lr, no decay)."""
    setting = {"lr_schedule": lr_schedule, "weight_decay": weight_decay}
    rows = [run("moving_average_question", "bn", s, 85.0, **setting) for s in (0, 1)]
    rows += [run("moving_average_question", "moving_average", s, 50.0, st, momentum=0.1, **setting)
             for s, st in enumerate(status)]
    return pd.DataFrame(rows)


def curves_of(frame, norms: dict[str, list[tuple[list[float], list[float]]]], steps=(100, 200, 300)):
    """``norms[norm.name][seed] = (weight norms, losses)`` at ``steps``."""
    rows = []
    for _, r in frame.iterrows():
        wn, loss = norms[r["norm.name"]][r["seed"]]
        rows += [{"run_dir": r["run_dir"], "step": s, "weight_norm": w, "loss": lo}
                 for s, w, lo in zip(steps, wn, loss, strict=False)]
    return pd.DataFrame(rows)


BN_CURVES = [([10.0, 10.5, 11.0], [1.0, 0.7, 0.5]), ([10.0, 11.0, 12.0], [1.0, 0.8, 0.7])]


def test_claim_4_weight_norm_rule():
    frame = ma_runs()
    # MA growth 6 and 4 (mean 5) against BN's 1 and 2 (mean 1.5, threshold 3); final loss
    # MA 0.9, 1.1 (mean 1.0) against BN 0.5, 0.7 (mean 0.6): no gain -> blows up
    grows = [([10.0, 13.0, 16.0], [1.2, 1.0, 0.9]), ([10.0, 12.0, 14.0], [1.2, 1.1, 1.1])]
    claim = claim_4(frame, curves_of(frame, {"bn": BN_CURVES, "moving_average": grows}))
    assert claim.verdict == REPRODUCED
    assert claim.rows[0].verdict == "blows up (weight norm)"
    assert claim.rows[0].ours == ("0 of 2 diverged; weight-norm growth +5 vs BN +1.5 (threshold 3); "
                                  "final training loss 1 vs BN 0.6; n = 2 paired seeds")
    # the same growth with a lower loss (mean 0.3) is a gain: does not blow up
    better = [(w, [1.0, 0.5, 0.3]) for w, _ in grows]
    assert claim_4(frame, curves_of(frame, {"bn": BN_CURVES, "moving_average": better})).verdict \
        == NOT_REPRODUCED
    # growth 2 and 3 (mean 2.5) is below twice BN's 1.5
    slow = [([10.0, 11.0, 12.0], grows[0][1]), ([10.0, 11.5, 13.0], grows[1][1])]
    assert claim_4(frame, curves_of(frame, {"bn": BN_CURVES, "moving_average": slow})).rows[0].verdict \
        == "does not blow up"


def test_claim_4_shrinking_bn_weights_do_not_make_any_growth_count():
    frame = ma_runs()
    shrink = [([12.0, 11.0, 10.5], [1.0, 0.7, 0.5]), ([12.0, 11.0, 10.5], [1.0, 0.8, 0.7])]
    grows = [([10.0, 11.0, 12.0], [1.2, 1.0, 0.9]), ([10.0, 11.0, 12.0], [1.2, 1.1, 1.1])]
    # MA +2 > 2 x (-1.5) = -3, but not > 2 x |-1.5| = 3
    claim = claim_4(frame, curves_of(frame, {"bn": shrink, "moving_average": grows}))
    assert claim.rows[0].verdict == "does not blow up" and claim.verdict == NOT_REPRODUCED


def test_claim_4_divergence_and_missing_curves():
    frame = ma_runs(status=("diverged", "completed"))
    claim = claim_4(frame, None)
    assert claim.verdict == REPRODUCED and claim.rows[0].verdict == "blows up (diverged)"
    assert claim.ours.startswith("1 of 2 moving-average runs diverged")
    nocurves = claim_4(ma_runs(), pd.DataFrame())
    assert nocurves.verdict == f"{INCONCLUSIVE}: no curves"
    unfinished = ma_runs(status=("completed", "incomplete"))
    assert claim_4(unfinished, None).verdict == \
        f"{INCONCLUSIVE}: seeds [1] of constant lr, weight decay 0 not finished"


def test_claim_4_only_the_primary_setting_decides():
    # the profile's setting (cosine lr, weight decay) diverges; the primary one holds
    profile = ma_runs(status=("diverged", "diverged"), lr_schedule="cosine", weight_decay=5e-4)
    frame = pd.concat([profile, ma_runs()])
    flat = [([10.0, 10.0, 10.0], [1.0, 0.5, 0.3])] * 2
    claim = claim_4(frame, curves_of(frame, {"bn": BN_CURVES, "moving_average": flat}))
    assert [(r.label, r.verdict, r.primary) for r in claim.rows] == [
        ("moving averages vs BN, constant lr, weight decay 0", "does not blow up", True),
        ("moving averages vs BN, cosine lr, weight decay 0.0005", "blows up (diverged)", False)]
    assert claim.verdict == NOT_REPRODUCED
    assert claim.ours.startswith("2 of 4 moving-average runs diverged")
    # without the primary setting there is no verdict, whatever the secondary shows
    assert claim_4(profile, None).verdict.startswith(NOT_RUN)


def test_growth_is_measured_over_the_steps_both_runs_logged():
    frame = ma_runs(status=("diverged", "diverged"))
    ma, bn = frame[frame["norm.name"] == "moving_average"], frame[frame["norm.name"] == "bn"]

    def curves(points: dict[str, list[tuple[int, float]]]) -> pd.DataFrame:
        return pd.DataFrame([{"run_dir": r["run_dir"], "step": step, "weight_norm": w, "loss": 1.0}
                             for _, r in frame.iterrows() for step, w in points[r["norm.name"]]])

    # MA stopped after step 200 (+4 there); BN's norm jumps at 300, outside the shared steps
    growth = weight_growth(ma, bn, curves({"moving_average": [(100, 10.0), (200, 14.0)],
                                           "bn": [(100, 10.0), (200, 11.0), (300, 30.0)]}))
    assert (growth.n, growth.ma_growth, growth.bn_growth) == (2, 4.0, 1.0)
    # the other way round: BN stopped after step 200, the MA runs jump at 300
    growth = weight_growth(ma, bn, curves({"moving_average": [(100, 10.0), (200, 11.0), (300, 50.0)],
                                           "bn": [(100, 10.0), (200, 14.0)]}))
    assert (growth.n, growth.ma_growth, growth.bn_growth) == (2, 1.0, 4.0)


def test_evaluate_claims_and_rules_text():
    claims = evaluate_claims(fig1({0: 80.0, 1: 81.0, 2: 82.0}, {0: 80.2, 1: 81.0, 2: 82.1}))
    assert [c.verdict for c in claims] == [REPRODUCED, NOT_RUN, NOT_RUN, NOT_RUN]
    for words in ("paired by seed", "alpha = 0.05", "margin ±1 point", "chance accuracy",
                  "one-sided paired t-test", "twice the magnitude of BN's"):
        assert words in VERDICT_RULES
    assert "standard error" not in VERDICT_RULES
