"""The paper's claims (PAPER.md), each judged by one pre-registered, paired comparison.

Why pre-registered: each verdict's rule is fixed here, and the report states it
(each ``PaperClaim``'s ``rule``) before any number, so no rule can be chosen after seeing the
outcome. Why paired: runs with the same seed share initial weights and batch order,
so the per-seed difference cancels the seed-to-seed spread (``brn_repro.analysis.stats``).
Each claim has one *primary* comparison that alone decides its verdict; secondary
rows are context and never change it. A diverged run is never dropped: it counts at
chance in a difference and fails an equivalence. A condition whose runs have not all
finished (or a seed missing on one side) makes a comparison inconclusive rather than
a smaller sample or a crash. The means in the ``ours`` column are descriptive only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from brn_repro.analysis.stats import (
    FINISHED,
    chance_level,
    difference_in_differences,
    equivalence,
    holm,
    paired_differences,
    power_equivalence,
    power_superiority,
    superiority,
)
from brn_repro.analysis.weight_growth import (
    BLOWS_UP_DIVERGED,
    BLOWS_UP_GROWTH,
    STARTUP_NAN,
    UNMEASURED,
    growth_after_first_evaluation,
    seed_growth,
)
from brn_repro.dataset_facts import NUM_CLASSES
from brn_repro.schedules import ramp

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = (
    "reproduced", "not reproduced", "inconclusive", "not run")
PARTLY = "partly reproduced"
FEWER_THAN_TWO = f"{INCONCLUSIVE}: fewer than 2 paired seeds"
PASSES, FAILS = "passes", "fails"

# --- the protocol's numbers (quick profile), each derived from the BN-only pilot before any BRN
# run under this protocol: results/pilot/regime/design.csv (scripts/pilot_protocol.py --stage
# regime; how each is derived: results/pilot/README.md, stage regime).
ALPHA = 0.05  # per claim, a choice: each claim is its own question; Holm across them is shown
# "Matches" (claims 1, 3b): within half of what per-worker 2 costs BN in the pilot (0.97), i.e.
# BRN sits closer to BN at 32 than halfway to the small-batch problem.
MATCH_MARGIN = 0.485
# Claim 2's regime: BN at 32 must beat BN at the claim's per-worker batch by more than the
# penalty at which the test has 80% power if BRN recovers the paper's share of it (2.3 of 4.1).
SMALL_BATCH_MARGIN = 0.546
# Claim 3's regime: BN's non-i.i.d. penalty at per-worker 32 must exceed the one at which the
# difference in differences has 80% power if BRN recovers all of it (the paper's 78.6 vs 78.3).
NONIID_MARGIN = 1.08
# Claim 1's regime: r_max and d_max at least this from 2/3 of the run on (the paper: 3 and 5
# from 40k of 130k steps).
RELAXED_AT_LEAST = 2.0
# Claim 4: a seed blows up when it diverges after the start-up window (10 time constants of
# the averages at alpha 0.1: their first batch's weight is below e^-10) or its weights grow
# from initialization to more than twice BN's growth (the pilot's BN seeds vary within ±10%);
# the claim needs a majority of its seeds.
GROWTH_FACTOR, STARTUP_STEPS = 2.0, 100
# The pilot's paired seed-to-seed sd of BN differences: the powers stated in the report.
PILOT_SD_SMALL_BATCH, PILOT_SD_DID = 0.453, 1.266

# The verdict rules the report states before any number: this preamble, which every claim
# shares, then each claim's own rule (``PaperClaim.rule_text``, in ``CLAIMS`` order), then
# the closing sentence (``brn_repro.analysis.report.verdict_rules`` joins them).
RULES_PREAMBLE = (
    "Each claim has one **primary** comparison and one **regime check**, both fixed before "
    "any BRN run of this protocol, from a pilot of BN alone ([pilot/README.md](pilot/README.md), "
    "stage regime). The regime check asks whether the problem the claim is about exists here, "
    "measured on BN (claim 1: on BRN's schedule); when it fails the verdict is *inconclusive: "
    "<precondition> absent at this scale*, never *not reproduced*. The primary alone decides "
    "the verdict; rows marked *secondary* are context. Conditions are **paired by seed** (the "
    "same seed gives the same initial weights and batches): per seed the difference of final "
    "test accuracies, tested with Student's t on n − 1 degrees of freedom at **alpha = "
    f"{ALPHA:g} per claim** (a choice: each claim is its own question of the paper and no "
    "verdict combines them; Holm-adjusted p across the primaries is shown below the table). "
    "*Beats*: a one-sided paired t-test (row: mean difference, 95% CI, t, p, n). *Matches*: "
    f"TOST, two one-sided paired t-tests, margin **±{MATCH_MARGIN:g} point** = half of what "
    "per-worker 2 costs BN in the pilot (row: the 90% CI TOST checks against the margin). "
    "Beside every primary, a **robustness check** that assumes no normal differences: "
    "Wilcoxon's signed-rank test (exact) and a percentile bootstrap CI of the paired mean; "
    "the report says whether they agree. **Divergence**: a diverged run (NaN/inf loss) is a "
    "failure of its condition and is never dropped: in a difference it counts at chance "
    "accuracy (100 / classes), it makes any equivalence fail. A comparison with runs not "
    "finished, a seed missing on one side, or fewer than 2 paired seeds is **inconclusive**."
)
RULES_CLOSING = ("Accuracies are top-1 % on the test set, model in inference mode (moving "
                 "statistics), at the last step.")


def limits_at(config: pd.Series, step: int) -> dict[str, float]:
    """BRN's r_max and d_max at ``step`` of its relaxation, read from a run's config columns
    through the schedule the layer itself uses (1 / 0 before relax_start; constant limits
    when an end step is null)."""
    out = {}
    for name, low in (("r_max", 1.0), ("d_max", 0.0)):
        end = config.get(f"norm.{name}_end_step")
        schedule = ramp(str(config.get("norm.shape", "linear") or "linear"), low, float(config[f"norm.{name}"]),
                        int(config["norm.relax_start"]), None if end is None or pd.isna(end) else int(end), name)
        out[name] = float(schedule(step))
    return out


@dataclass
class Stats:
    """Descriptive mean ± std of completed runs (diverged counted apart): not a verdict."""

    mean: float
    std: float
    n: int
    n_diverged: int = 0

    def text(self) -> str:
        if self.n == 0:
            return f"- ({self.n_diverged} diverged)" if self.n_diverged else "-"
        std = f" ± {self.std:.1f}" if self.n > 1 else ""
        div = f", {self.n_diverged} diverged" if self.n_diverged else ""
        return f"{self.mean:.1f}{std} (n={self.n}{div})"


class Row(NamedTuple):
    label: str
    paper: str
    ours: str
    verdict: str
    primary: bool = False


@dataclass
class Claim:
    key: str
    text: str
    paper: str
    ours: str = "-"  # descriptive means
    primary: str = "-"  # the primary comparison's text (estimate, CI, test, n)
    verdict: str = NOT_RUN
    detail: str = ""
    rows: list[Row] = field(default_factory=list)
    regime: Row | None = None  # the precondition, measured on BN (claim 1: BRN's schedule)
    power: str = ""  # the primary's power at the paper's effect, from the pilot's spread
    robust: str = ""  # the primary's robustness check
    p_values: dict[str, float] = field(default_factory=dict)  # the primaries' p, for Holm


@dataclass(frozen=True)
class PaperClaim:
    """One of the paper's claims, all of it in one place: what the paper says, the rule that
    decides it (stated in the report before any number), the experiment whose runs decide
    it, and the function that applies the rule. ``CLAIMS`` registers them; the report, the
    protocol section, the dashboard and the reproduction driver (``brn_repro.analysis.experiments``:
    an experiment that decides a claim is in ``make reproduce``) read that table.

    ``comparison``: the primary comparison, as the rule names it. ``rule``: the rest of the
    claim's rule (regime check, verdict). ``experiment``: the experiment deciding it;
    ``secondary``: experiments its secondary rows also read. ``decide(claim, runs, chance,
    curves)``: the verdict, a ``Claim``.
    """

    key: str
    text: str
    paper: str
    comparison: str
    rule: str
    experiment: str
    decide: Callable[[PaperClaim, pd.DataFrame, float, pd.DataFrame | None], Claim]
    secondary: tuple[str, ...] = ()

    @property
    def rule_text(self) -> str:
        return f"**Claim {self.key}** ({self.comparison}). {self.rule}"

    def result(self) -> Claim:
        """The claim's verdict before any comparison: not run."""
        return Claim(self.key, self.text, self.paper)

    def evaluate(self, runs: pd.DataFrame, chance: float, curves: pd.DataFrame | None = None) -> Claim:
        return self.decide(self, runs, chance, curves)


def stats(frame: pd.DataFrame, metric: str = "test_acc") -> Stats:
    done = pd.to_numeric(frame.loc[frame["status"] == "completed", metric], errors="coerce").dropna()
    return Stats(float(done.mean()) if len(done) else float("nan"),
                 float(done.std(ddof=1)) if len(done) > 1 else float("nan"), len(done),
                 int((frame["status"] == "diverged").sum()))


def _select(runs: pd.DataFrame, experiment: str, **where) -> pd.DataFrame:
    frame = runs[runs["experiment"] == experiment]
    for column, value in where.items():
        column = column.replace("__", ".")
        if column not in frame.columns:
            return frame.iloc[0:0]
        frame = frame[frame[column] == value]
    return frame


def _chance(runs: pd.DataFrame) -> float:
    """What a diverged run is worth: chance for the runs' dataset (10 classes if unknown).
    Imported here, not at the top: the data package pulls in torch."""

    names = runs["dataset.name"].dropna().unique() if "dataset.name" in runs else []
    return chance_level(NUM_CLASSES.get(names[0], 10) if len(names) == 1 else 10)


def _unfinished(frames: dict[str, pd.DataFrame]) -> str | None:
    parts = [f"seeds {sorted(int(s) for s in f.loc[~f['status'].isin(FINISHED), 'seed'])} of "
             f"{name}" for name, f in frames.items() if (~f["status"].isin(FINISHED)).any()]
    return f"{INCONCLUSIVE}: {', '.join(parts)} not finished" if parts else None


def _compare(kind: str, frames: dict[str, pd.DataFrame], chance: float,
             metric: str = "test_acc", shift: float = 0.0, margin: float = MATCH_MARGIN):
    """(result, None), or (None, why there is none: not run / inconclusive: ...).
    ``kind``: "superiority" or "equivalence" of first - second, or "did" of four frames
    (BN iid, BN non-iid, BRN iid, BRN non-iid)."""
    if all(f.empty for f in frames.values()):
        return None, NOT_RUN
    if empty := [name for name, f in frames.items() if f.empty]:
        return None, f"{NOT_RUN}: no {', '.join(empty)} runs"
    if why := _unfinished(frames):
        return None, why
    try:
        if kind == "did":
            return difference_in_differences(*frames.values(), metric=metric, chance=chance,
                                             alpha=ALPHA), None
        diffs, diverged = paired_differences(*frames.values(), metric=metric, chance=chance,
                                             names=tuple(frames))
    except ValueError as err:  # unpaired seeds, duplicates, a completed run without the metric
        return None, f"{INCONCLUSIVE}: {err}"
    if kind == "equivalence":
        return equivalence(diffs, margin, ALPHA, diverged), None
    return superiority(diffs, ALPHA, diverged, shift), None


def _row(label: str, paper: str, result, why: str | None, primary: bool = False) -> Row:
    return Row(label, paper, result.text() if result else "-", why or result.verdict, primary)


def _n_diverged(result) -> int:
    return sum(n for _, n in result.diverged)


def _gate(claim: Claim, regime: Row, passed: bool | None, absent: str) -> bool:
    """Record the regime check; False (with the verdict set) unless it passed."""
    claim.regime = regime
    if passed is None:
        claim.verdict = regime.verdict if regime.verdict.startswith((INCONCLUSIVE, NOT_RUN)) \
            else f"{INCONCLUSIVE}: regime check not decidable ({regime.verdict})"
    elif not passed:
        claim.verdict = f"{INCONCLUSIVE}: {absent} absent at this scale"
    return bool(passed)


def _regime_row(label: str, paper: str, result, why: str | None) -> tuple[Row, bool | None]:
    """A regime check's row and whether it passed (None: not decidable)."""
    if result is None or result.n < 2:
        return Row(label, paper, result.text() if result else "-", why or FEWER_THAN_TWO), None
    passed = result.significant
    return Row(label, paper, result.text(), PASSES if passed else FAILS), passed


def _robust(result) -> str:
    return result.robust.text() if result is not None and result.robust is not None else ""


def _clip_fractions(brn: pd.DataFrame, curves: pd.DataFrame | None, start: float) -> str:
    """BRN's mean r and d clip fractions (channels x layers) over the evaluations from ``start``."""
    keys = ("norm/mean/r_clip_frac", "norm/mean/d_clip_frac")
    if curves is None or not all(k in curves for k in keys):
        return "clip fractions not logged"
    rows = curves[curves["run_dir"].isin(brn["run_dir"]) & (curves["step"] >= start)]
    if rows.empty:
        return "clip fractions not logged"
    r, d = (pd.to_numeric(rows[k], errors="coerce").mean() for k in keys)
    return f"r clipped in {r:.1%} of channels, d in {d:.1%} (evaluations from step {int(start)})"


def relaxation_check(brn: pd.DataFrame, curves: pd.DataFrame | None) -> tuple[Row, bool | None]:
    """Claim 1's regime: BRN's schedule (read from its runs' configs) holds r_max and d_max at
    RELAXED_AT_LEAST or more over the last third of the run."""
    label = f"regime: BRN relaxes (r_max, d_max ≥ {RELAXED_AT_LEAST:g} over the last third)"
    paper = "r_max 3, d_max 5 from 40k of 130k steps"
    if brn.empty:
        return Row(label, paper, "-", NOT_RUN), None
    needed = ("train.steps", "norm.relax_start", "norm.r_max", "norm.d_max")
    if missing := [k for k in needed if k not in brn or pd.isna(brn.iloc[0][k])]:
        return Row(label, paper, "-", f"{INCONCLUSIVE}: the BRN runs' configs lack {', '.join(missing)}"), None
    c = brn.iloc[0]
    steps, start = int(c["train.steps"]), int(c["norm.relax_start"])
    third = -(-2 * steps // 3)  # the ramps only rise: their value here is their least over the last third
    reached = limits_at(c, third)
    ends = {name: "constant" if pd.isna(c.get(f"norm.{name}_end_step")) else f"at {int(c[f'norm.{name}_end_step'])}"
            for name in reached}
    passed = min(reached.values()) >= RELAXED_AT_LEAST
    ours = (f"relax from step {start}, d_max {float(c['norm.d_max']):g} {ends['d_max']}, r_max "
            f"{float(c['norm.r_max']):g} {ends['r_max']} of {steps}: r_max {reached['r_max']:.2f}, d_max "
            f"{reached['d_max']:.2f} from step {third}; {_clip_fractions(brn, curves, third)}")
    return Row(label, paper, ours, PASSES if passed else FAILS), passed


def _decide_1(spec: PaperClaim, runs: pd.DataFrame, chance: float, curves: pd.DataFrame | None) -> Claim:
    claim, experiment = spec.result(), spec.experiment
    bn, brn = _select(runs, experiment, norm__name="bn"), _select(runs, experiment, norm__name="brn")
    claim.ours = f"BN {stats(bn).text()}, BRN {stats(brn).text()}"
    eq, why = _compare("equivalence", {"BRN": brn, "BN": bn}, chance)
    claim.primary = eq.text() if eq else "-"
    claim.rows.append(_row(f"BRN − BN equivalent within ±{MATCH_MARGIN:g}, per-worker 32 (TOST)",
                           "78.5 vs 78.3", eq, why, True))
    claim.rows.append(_row("BRN > BN, per-worker 32 ('slightly beats')", "+0.2",
                           *_compare("superiority", {"BRN": brn, "BN": bn}, chance)))
    claim.robust = _robust(eq)
    n = eq.n if eq and eq.n >= 2 else 5
    claim.power = (f"TOST power at a true difference of 0 with the pilot's paired sd "
                   f"{PILOT_SD_SMALL_BATCH:g} and n = {n}: "
                   f"{power_equivalence(0.0, MATCH_MARGIN, PILOT_SD_SMALL_BATCH, n, ALPHA):.2f}")
    if not _gate(claim, *relaxation_check(brn, curves), "a BRN that relaxes"):
        return claim
    if eq is None:
        claim.verdict = why
    elif _n_diverged(eq):
        claim.verdict = f"{NOT_REPRODUCED} ({eq.verdict})"
    elif eq.n < 2:
        claim.verdict = FEWER_THAN_TWO
    else:
        claim.p_values["1: BRN ≈ BN at 32 (TOST)"] = eq.p
        claim.verdict = REPRODUCED if eq.equivalent else \
            f"{NOT_REPRODUCED} (not equivalent within ±{MATCH_MARGIN:g} point)"
    return claim


def _decide_2(spec: PaperClaim, runs: pd.DataFrame, chance: float, curves: pd.DataFrame | None) -> Claim:
    claim, experiment = spec.result(), spec.experiment
    fig2 = runs[runs["experiment"] == experiment]
    if fig2.empty:
        return claim

    def at(norm: str, b: int) -> pd.DataFrame:
        return _select(runs, experiment, norm__name=norm, data__per_worker_batch=b)

    batches = sorted({int(v) for v in fig2["data.per_worker_batch"].dropna()})
    small = batches[0]  # the primary: the smallest per-worker batch of the experiment
    bn_s, brn_s = at("bn", small), at("brn", small)
    at_32 = CLAIMS["1"].experiment  # claim 1's runs: BN at per-worker 32, claim 2's regime reference
    bn32 = _select(runs, at_32, norm__name="bn", data__per_worker_batch=32)
    claim.ours = f"b={small}: BRN {stats(brn_s).text()}, BN {stats(bn_s).text()}; BN at 32 {stats(bn32).text()}"
    sup, why = _compare("superiority", {"BRN": brn_s, "BN": bn_s}, chance)
    claim.primary = sup.text() if sup else "-"
    claim.robust = _robust(sup)
    claim.rows.append(_row(f"BRN > BN at per-worker batch {small}", "76.5 vs 74.2 (at 4)", sup, why, True))
    for name in (experiment, *spec.secondary):  # the paper's per-worker 4, any other batch: secondary
        other = runs[runs["experiment"] == name]
        for b in sorted({int(v) for v in other["data.per_worker_batch"].dropna()} - {small, 32}):
            pick = {norm: _select(runs, name, norm__name=norm, data__per_worker_batch=b) for norm in ("brn", "bn")}
            claim.rows.append(_row(f"BRN > BN at per-worker batch {b}" + (" (the paper's)" if b == 4 else ""),
                                   "76.5 vs 74.2" if b == 4 else "-",
                                   *_compare("superiority", {"BRN": pick["brn"], "BN": pick["bn"]}, chance)))
    claim.rows.append(_row(f"BRN at {small} below BN at 32 ({at_32})", "76.5 < 78.3",
                           *_compare("superiority", {"BN at 32": bn32, f"BRN at {small}": brn_s}, chance)))
    penalty, why_p = _compare("superiority", {"BN at 32": bn32, f"BN at {small}": bn_s}, chance,
                              shift=SMALL_BATCH_MARGIN)
    regime = _regime_row(f"regime: BN at 32 − BN at {small} > {SMALL_BATCH_MARGIN:g} (one-sided)",
                         "78.3 − 74.2 = 4.1 (at 4)", penalty, why_p)
    effect = (penalty.mean if penalty and penalty.n >= 2 else SMALL_BATCH_MARGIN) * 2.3 / 4.1
    n = sup.n if sup and sup.n >= 2 else 5
    claim.power = (f"power if BRN recovers the paper's share (2.3 of 4.1) of the measured BN "
                   f"penalty, {effect:+.2f} point, with the pilot's paired sd {PILOT_SD_SMALL_BATCH:g} "
                   f"and n = {n}: {power_superiority(effect, PILOT_SD_SMALL_BATCH, n, ALPHA):.2f}")
    if not _gate(claim, *regime, "BN's small-batch problem"):
        return claim
    if sup is None:
        claim.verdict = why
    elif sup.n < 2:
        claim.verdict = FEWER_THAN_TWO
    else:
        claim.p_values[f"2: BRN > BN at {small}"] = sup.p
        if sup.significant:
            claim.verdict = REPRODUCED
        else:
            reverse, _ = _compare("superiority", {"BN": bn_s, "BRN": brn_s}, chance)
            claim.verdict = NOT_REPRODUCED + (" (BN significantly better)" if reverse.significant
                                              else " (no significant difference)")
            claim.detail = f"The reverse test, BN − BRN at per-worker {small}: {reverse.text()}."
    return claim


def _decide_3(spec: PaperClaim, runs: pd.DataFrame, chance: float, curves: pd.DataFrame | None) -> Claim:
    claim = spec.result()

    def pick(norm: str, sampler: str) -> pd.DataFrame:
        return _select(runs, spec.experiment, norm__name=norm, sampler__name=sampler)

    four = {"BN iid": pick("bn", "iid"), "BN non-iid": pick("bn", "noniid"),
            "BRN iid": pick("brn", "iid"), "BRN non-iid": pick("brn", "noniid")}
    bn_iid, bn_non, brn_iid, brn_non = four.values()
    claim.ours = ", ".join(f"{name} {stats(f).text()}" for name, f in four.items())
    did, why = _compare("did", four, chance)
    eq, why_eq = _compare("equivalence", {"BRN non-iid": brn_non, "BRN iid": brn_iid}, chance)
    if did is not None and (n_div := _n_diverged(did)):
        where = ", ".join(f"{name} {n}" for name, n in did.diverged if n)
        why = f"{INCONCLUSIVE}: {n_div} diverged run{'s' * (n_div > 1)} among the four ({where})"
    elif did is not None and did.n < 2:
        why = FEWER_THAN_TWO
    claim.primary = f"(a) {did.text() if did else '-'}; (b) {eq.text() if eq else '-'}"
    claim.robust = f"(a) {_robust(did) or '-'}; (b) {_robust(eq) or '-'}"
    claim.rows += [
        _row("(a) BN's non-i.i.d. penalty > BRN's (difference in differences)", "11.3 vs -0.1",
             did, why, True),
        _row(f"(b) BRN non-i.i.d. equivalent to BRN i.i.d. within ±{MATCH_MARGIN:g} (TOST)",
             "78.6 vs 78.5", eq, why_eq, True),
        _row("BRN > BN, non-i.i.d.", "78.6 vs 67.0",
             *_compare("superiority", {"BRN non-iid": brn_non, "BN non-iid": bn_non}, chance)),
        _row("BN train accuracy (inference mode): i.i.d. > non-i.i.d.", "72.8 non-i.i.d.",
             *_compare("superiority", {"BN iid": bn_iid, "BN non-iid": bn_non}, chance,
                       metric="train_acc")),
    ]
    # The probe and inference mode are two evaluations of the same runs: paired by run.
    if "minibatch_stats_acc" in bn_non:
        inference = bn_non.assign(minibatch_stats_acc=bn_non["test_acc"])
        claim.rows.append(_row("BN non-i.i.d. with minibatch statistics at test > inference mode "
                               "(probe)", "76.5 vs 67.0",
                               *_compare("superiority", {"probe": bn_non, "inference": inference},
                                         chance, metric="minibatch_stats_acc")))
    claim.rows += _controls(spec, bn_non, chance, runs)
    penalty, why_p = _compare("superiority", {"BN iid": bn_iid, "BN non-iid": bn_non}, chance,
                              shift=NONIID_MARGIN)
    regime = _regime_row(f"regime: BN i.i.d. − BN non-i.i.d. > {NONIID_MARGIN:g} (one-sided)",
                         "78.3 − 67.0 = 11.3", penalty, why_p)
    claim.power = _power_3(did, penalty)
    if not _gate(claim, *regime, "BN's non-i.i.d. problem"):
        return claim
    if why:
        claim.verdict = why
        return claim
    claim.p_values["3a: BN's penalty > BRN's"] = did.p
    if eq is not None and eq.n >= 2:
        claim.p_values["3b: BRN non-iid ≈ iid (TOST)"] = eq.p
    if not did.significant:
        claim.verdict = f"{NOT_REPRODUCED} (BN's non-i.i.d. penalty not significantly larger)"
    elif eq is not None and eq.equivalent:
        claim.verdict = REPRODUCED
    else:
        claim.verdict = f"{PARTLY} (BRN non-i.i.d. {eq.verdict if eq else why_eq} to i.i.d.)"
    return claim


def _power_3(did, penalty) -> str:
    """Claim 3's powers: (a) at the measured BN penalty, (b) TOST at no difference."""
    n = did.n if did and did.n >= 2 else 5
    effect = penalty.mean if penalty and penalty.n >= 2 else NONIID_MARGIN
    return (f"(a) power if BRN recovers all of the measured BN penalty ({effect:+.2f}) with the "
            f"pilot's paired sd {PILOT_SD_DID:g} and n = {n}: "
            f"{power_superiority(effect, PILOT_SD_DID, n, ALPHA):.2f}; (b) TOST power at a true "
            f"difference of 0 with sd {PILOT_SD_SMALL_BATCH:g}: "
            f"{power_equivalence(0.0, MATCH_MARGIN, PILOT_SD_SMALL_BATCH, n, ALPHA):.2f}")


def _controls(spec: PaperClaim, bn_non: pd.DataFrame, chance: float, runs: pd.DataFrame) -> list[Row]:
    """Claim 3's secondary controls (fig3_controls): BN on split groups, GN non-i.i.d."""
    (controls,) = spec.secondary
    split = _select(runs, controls, norm__name="bn", sampler__name="noniid_split")
    split_size = _select(runs, controls, norm__name="bn", sampler__name="iid")
    seeds = set(split["seed"]) if "seed" in split else set()
    at_seeds = bn_non[bn_non["seed"].isin(seeds)] if "seed" in bn_non else bn_non
    rows = [_row("BN on split groups > BN non-i.i.d. (control)", "77.4 vs 67.0",
                 *_compare("superiority", {"BN split": split, "BN non-iid": at_seeds}, chance)),
            _row("BN on split groups equivalent to i.i.d. BN over groups of that size (TOST)",
                 "77.4 vs 78.3 (groups of 32)",
                 *_compare("equivalence", {"BN split": split, "BN iid": split_size}, chance))]
    gn_non = _select(runs, controls, norm__name="gn", sampler__name="noniid")
    if not gn_non.empty:
        at_seeds = bn_non[bn_non["seed"].isin(set(gn_non["seed"]))]
        rows.append(_row("GN non-i.i.d. > BN non-i.i.d.", "-",
                         *_compare("superiority", {"GN non-iid": gn_non, "BN non-iid": at_seeds}, chance)))
    return rows


def _setting(label: str, ma: pd.DataFrame, bn: pd.DataFrame, curves: pd.DataFrame | None,
             primary: bool) -> Row:
    """One training setting's moving-average seeds by the pre-registered per-seed rule."""
    if why := _unfinished({label: ma, "BN": bn}):
        return Row(f"moving averages vs BN, {label}", "blows up", "-", why, primary)
    seeds = seed_growth(ma, bn, curves, GROWTH_FACTOR, STARTUP_STEPS)
    up = sum(s.verdict in (BLOWS_UP_DIVERGED, BLOWS_UP_GROWTH) for s in seeds)
    startup = sum(s.verdict == STARTUP_NAN for s in seeds)
    unmeasured = sum(s.verdict == UNMEASURED for s in seeds)
    ours = (f"{up} of {len(seeds)} seeds blow up" + (f", {startup} start-up NaN" if startup else "")
            + "; weight-norm growth from init: " + "; ".join(s.text() for s in seeds))
    if unmeasured and 2 * up <= len(seeds) < 2 * (up + unmeasured):
        verdict = f"{INCONCLUSIVE}: {unmeasured} seed(s) without curves or BN pair"
    else:
        verdict = "blows up (majority of seeds)" if 2 * up > len(seeds) else "does not blow up"
    return Row(f"moving averages vs BN, {label}", "blows up", ours, verdict, primary)


def _setting_label(schedule: str, weight_decay: float) -> str:
    return f"{schedule} lr, weight decay {weight_decay:g}"


def _decide_4(spec: PaperClaim, runs: pd.DataFrame, chance: float, curves: pd.DataFrame | None) -> Claim:
    """Primary: constant lr without weight decay (neither damps the weights' growth that
    the paper warns of); the profile's own lr schedule and weight decay are secondary."""
    claim = spec.result()
    exp = runs[runs["experiment"] == spec.experiment]
    needed = ("norm.name", "train.lr_schedule", "optim.weight_decay")
    if exp.empty or not all(c in exp.columns for c in needed):
        return claim
    rows, regime = [], None
    for (schedule, decay), group in exp.groupby(["train.lr_schedule", "optim.weight_decay"]):
        ma, bn = group[group["norm.name"] == "moving_average"], group[group["norm.name"] == "bn"]
        if ma.empty:
            continue
        primary = schedule == "constant" and float(decay) == 0.0
        rows.append(_setting(_setting_label(schedule, float(decay)), ma, bn, curves, primary))
        if primary:
            if (late := growth_after_first_evaluation(ma, bn, curves)) and late[2] > 0:
                step, ma_growth, bn_growth, n = late
                beyond = "over" if ma_growth > GROWTH_FACTOR * bn_growth else "under"
                claim.detail = (f"Sensitivity, not the rule: from the first evaluation (step {step}) to the "
                                f"end, leaving out the early jump, the {n} completed moving-average runs of "
                                f"the primary setting grew {ma_growth:+.1f} on average against BN's "
                                f"{bn_growth:+.1f} (same seeds): {ma_growth / bn_growth:.2f} times, {beyond} "
                                f"the rule's factor {GROWTH_FACTOR:g}.")
            label = "regime: BN's runs of the primary setting complete"
            done = int((bn["status"] == "completed").sum())
            if bn.empty:
                regime = Row(label, "-", "-", f"{NOT_RUN}: no BN runs"), None
            elif why := _unfinished({"BN": bn}):
                regime = Row(label, "-", "-", why), None
            else:
                regime = (Row(label, "-", f"{done} of {len(bn)} BN runs completed",
                              PASSES if done == len(bn) else FAILS), done == len(bn))
    rows.sort(key=lambda r: not r.primary)
    claim.rows += rows
    primary = next((r for r in rows if r.primary), None)
    claim.primary = f"{primary.label}: {primary.verdict}, {primary.ours}" if primary else "-"
    diverged, total = int((exp["status"] == "diverged").sum()), len(exp)
    claim.ours = f"{diverged} of {total} runs of the experiment diverged"
    if primary is None:
        claim.verdict = f"{NOT_RUN}: no moving-average runs at constant lr without weight decay"
        return claim
    if not _gate(claim, *regime, "a BN baseline that trains"):
        return claim
    if primary.verdict.startswith("blows up"):
        claim.verdict = REPRODUCED
    elif primary.verdict == "does not blow up":
        claim.verdict = NOT_REPRODUCED
    else:
        claim.verdict = primary.verdict
    return claim


def multiplicity(claims: list[Claim]) -> str:
    """Holm across the primaries' p-values, beside the per-claim alpha the verdicts use."""
    pvalues = {name: p for c in claims for name, p in c.p_values.items()}
    if not pvalues:
        return ""
    adjusted = holm(pvalues)
    def text(p: float) -> str:
        return "< 0.0001" if p < 1e-4 else f"{p:.4f}"

    parts = [f"{name}: p {'' if pvalues[name] < 1e-4 else '= '}{text(pvalues[name])}, Holm {text(adjusted[name])}"
             + (" (would change at family-wise alpha)" if (pvalues[name] < ALPHA) != (adjusted[name] < ALPHA)
                else "") for name in pvalues]
    return (f"**Multiplicity.** The verdicts use alpha = {ALPHA:g} per claim. Across the "
            f"{len(pvalues)} tested primaries, Holm's step-down adjustment gives: " + "; ".join(parts) + ".")


CLAIMS: dict[str, PaperClaim] = {c.key: c for c in (
    PaperClaim(
        "1", "At normal batch sizes BRN matches or slightly beats BN.",
        "per-worker 32, i.i.d.: BN 78.3%, BRN 78.5%", "BRN − BN, per-worker 32, i.i.d.",
        f"Regime: BRN's r_max and d_max are at least {RELAXED_AT_LEAST:g} over the last third of the "
        "run (its schedule, read from the runs' configs; the r and d clip fractions are reported). "
        "Reproduced iff equivalent (TOST); otherwise not reproduced.",
        "fig1_baseline", _decide_1),
    PaperClaim(
        "2", "With small normalization batches BRN ends higher than BN, yet below normalizing over 32.",
        "microbatches of 4: BN 74.2%, BRN 76.5%; both below 78.3/78.5",
        "BRN − BN at the smallest per-worker batch of fig2_small_batch; per-worker 4, the paper's, "
        "is secondary",
        f"Regime: BN at 32 beats BN at that batch by more than {SMALL_BATCH_MARGIN:g} point (one-sided "
        "paired t against the margin). Reproduced iff BRN > BN (one-sided); *not reproduced (BN "
        "significantly better)* iff the reverse test is significant; otherwise *not reproduced (no "
        "significant difference)*.",
        "fig2_small_batch", _decide_2, secondary=("fig1_baseline", "fig2_paper_batch")),
    PaperClaim(
        "3", "With non-i.i.d. minibatches BN overfits to the minibatch distribution (its train "
        "accuracy in inference mode is low), while BRN matches the i.i.d. result.",
        "BN 67.0% (train 72.8%), BRN 78.6%, i.i.d. 78.3%; BN with minibatch stats 76.5%, BN on "
        "split halves 77.4%", "fig3_noniid, per-worker 32",
        f"Regime: BN's non-i.i.d. penalty (BN i.i.d. − BN non-i.i.d.) exceeds {NONIID_MARGIN:g} points "
        "(one-sided paired t against the margin). (a) the difference in differences d = (BN iid − "
        "BN non-iid) − (BRN iid − BRN non-iid) > 0, one-sided; (b) BRN non-iid equivalent to BRN "
        "iid (TOST). Reproduced iff (a) and (b); partly iff (a) alone; not reproduced iff (a) is "
        "not significant. A diverged run among the four conditions makes (a) inconclusive (no "
        "value for it is neutral).",
        "fig3_noniid", _decide_3, secondary=("fig3_controls",)),
    PaperClaim(
        "4", "Normalizing with moving averages in training (no BRN correction) blows up.",
        "'has been observed to lead to the model blowing up' (section 2); no number",
        "moving averages in training vs BN, per-worker 32, the same seeds; primary: constant lr "
        "without weight decay, so neither damps the growth the paper warns of; the profile's "
        "setting secondary",
        f"Regime: BN's runs of the setting complete. Per seed the moving-average run *blows up* iff "
        f"it diverges after step {STARTUP_STEPS} or its weight norm grows from initialization to the "
        f"end by more than {GROWTH_FACTOR:g} times BN's growth (same seed, same initial weights); a "
        f"NaN by step {STARTUP_STEPS} is a start-up instability, reported apart and not counted as "
        "blowing up. Reproduced iff a majority of the seeds blow up.",
        "moving_average_question", _decide_4),
)}


def evaluate_claims(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> list[Claim]:
    """Every claim of ``CLAIMS``, in order; ``curves`` (one row per evaluation, ``run_dir`` to
    match runs) feeds claim 1's clip fractions and claim 4's weight growth, and may be missing
    (W&B source)."""
    chance = _chance(runs)
    return [claim.evaluate(runs, chance, curves) for claim in CLAIMS.values()]
