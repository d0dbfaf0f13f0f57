"""The paper's claims (PAPER.md), each judged by one pre-registered, paired comparison.

Why pre-registered: each verdict's rule is fixed here, and the report states it
(``VERDICT_RULES``) before any number, so no rule can be chosen after seeing the
outcome. Why paired: runs with the same seed share initial weights and batch order,
so the per-seed difference cancels the seed-to-seed spread (``brn_repro.stats``).
Each claim has one *primary* comparison that alone decides its verdict; secondary
rows are context and never change it. A diverged run is never dropped: it counts at
chance in a difference and fails an equivalence. A condition whose runs have not all
finished (or a seed missing on one side) makes a comparison inconclusive rather than
a smaller sample or a crash. The means in the ``ours`` column are descriptive only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

from brn_repro.experiments import deciding, supporting
from brn_repro.stats import (
    FINISHED,
    chance_level,
    difference_in_differences,
    equivalence,
    paired_differences,
    superiority,
)
from brn_repro.weight_growth import weight_growth

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = (
    "reproduced", "not reproduced", "inconclusive", "not run")
PARTLY = "partly reproduced"
ALPHA = 0.05
MARGIN = 1.0  # accuracy points: the equivalence margin
GROWTH_FACTOR = 2.0  # claim 4: weight-norm growth against BN's
FEWER_THAN_TWO = f"{INCONCLUSIVE}: fewer than 2 paired seeds"

VERDICT_RULES = (
    "Each claim has one **primary** comparison, fixed before any result was read; it "
    "alone decides the verdict, and rows marked *secondary* are context that never changes "
    "it. Conditions are **paired by seed** (the same seed gives the same initial weights and "
    f"batches): per seed the difference of final test accuracies, tested with Student's t on "
    f"n − 1 degrees of freedom at **alpha = {ALPHA:g}**. *Beats*: a one-sided paired t-test; "
    "its row shows the mean difference with its 95% CI, t, the one-sided p and n. *Matches*: "
    f"an equivalence test (TOST, two one-sided paired t-tests, **margin ±{MARGIN:g} point**, "
    f"alpha {ALPHA:g}); its row shows the 90% CI, the interval TOST at {ALPHA:g} checks "
    "against the margin. **Divergence**: a diverged run (NaN/inf loss) is a failure of its "
    "condition and is never dropped: in a difference it counts at chance accuracy (100 / "
    "classes), it makes any equivalence fail, and the counts are shown. A comparison with "
    "runs not yet finished, a seed missing on one side, or fewer than 2 paired seeds is "
    "**inconclusive**. "
    "**Claim 1** (BRN − BN, per-worker 32, i.i.d.): reproduced iff equivalent within "
    f"±{MARGIN:g} point; otherwise not reproduced, a diverged run included (even with one "
    "seed). **Claim 2** (BRN − BN at per-worker 4, the paper's condition): reproduced iff "
    "significantly > 0; *not reproduced (BN significantly better)* iff the reverse "
    "one-sided test is significant; otherwise *not reproduced (no significant "
    "difference)*: the paper reports a difference, so its absence fails to reproduce it. "
    "Per-worker 2 and 1 and 'BRN at 4 below BN at 32' are secondary. **Claim 3** "
    "(fig3_noniid): (a) the difference in differences d = (BN iid − BN non-iid) − (BRN "
    "iid − BRN non-iid) > 0, one-sided paired t; (b) BRN non-iid − BRN iid equivalent "
    f"within ±{MARGIN:g} (TOST). Reproduced iff (a) and (b); partly reproduced iff (a) "
    "alone; not reproduced iff (a) is not significant. Any diverged run among the four "
    "conditions makes (a), and so the claim, inconclusive (reported by condition): at "
    "chance, a diverged BN non-iid or BRN iid run would inflate d in the claim's favour "
    "and a diverged BN iid run would count a failed baseline against it, so no value for "
    "it is neutral. The minibatch-statistics probe, the split control and GN non-iid are "
    "secondary. **Claim 4** (moving averages in training vs BN, per-worker 32, the same "
    "seeds; primary: constant lr without weight decay, so neither damps the growth the "
    "paper warns of; the profile's lr schedule and weight decay secondary): the moving-"
    "average layer *blows up* iff one of its runs diverges, or, over the evaluation steps "
    "each run shares with the BN run of its seed, its weight-norm growth (last minus first "
    "evaluation, mean over paired seeds) exceeds twice the magnitude of BN's (so a "
    "shrinking BN does not make any growth count) while its final training loss (mean over "
    "the same seeds) is not lower than BN's. Reproduced iff it blows up in the primary "
    "setting, not reproduced iff it does not; inconclusive where runs without a divergence "
    "are unfinished or have no curves. Accuracies are top-1 % on the test set, model in inference mode (moving "
    "statistics), at the last step."
)


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
    from brn_repro.data.sources import NUM_CLASSES

    names = runs["dataset.name"].dropna().unique() if "dataset.name" in runs else []
    return chance_level(NUM_CLASSES.get(names[0], 10) if len(names) == 1 else 10)


def _unfinished(frames: dict[str, pd.DataFrame]) -> str | None:
    parts = [f"seeds {sorted(int(s) for s in f.loc[~f['status'].isin(FINISHED), 'seed'])} of "
             f"{name}" for name, f in frames.items() if (~f["status"].isin(FINISHED)).any()]
    return f"{INCONCLUSIVE}: {', '.join(parts)} not finished" if parts else None


def _compare(kind: str, frames: dict[str, pd.DataFrame], chance: float,
             metric: str = "test_acc"):
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
        return equivalence(diffs, MARGIN, ALPHA, diverged), None
    return superiority(diffs, ALPHA, diverged), None


def _row(label: str, paper: str, result, why: str | None, primary: bool = False) -> Row:
    return Row(label, paper, result.text() if result else "-", why or result.verdict, primary)


def _n_diverged(result) -> int:
    return sum(n for _, n in result.diverged)


def claim_1(runs: pd.DataFrame, chance: float) -> Claim:
    claim = Claim("1", "At normal batch sizes BRN matches or slightly beats BN.",
                  "per-worker 32, i.i.d.: BN 78.3%, BRN 78.5%")
    experiment = deciding("1")
    bn, brn = _select(runs, experiment, norm__name="bn"), _select(runs, experiment, norm__name="brn")
    claim.ours = f"BN {stats(bn).text()}, BRN {stats(brn).text()}"
    eq, why = _compare("equivalence", {"BRN": brn, "BN": bn}, chance)
    if eq is None:
        claim.verdict = why
    elif _n_diverged(eq):
        claim.verdict = f"{NOT_REPRODUCED} ({eq.verdict})"
    elif eq.n < 2:
        claim.verdict = FEWER_THAN_TWO
    else:
        claim.verdict = REPRODUCED if eq.equivalent else \
            f"{NOT_REPRODUCED} (not equivalent within ±{MARGIN:g} point)"
    claim.primary = eq.text() if eq else "-"
    claim.rows.append(_row("BRN − BN equivalent, per-worker 32 (TOST)", "78.5 vs 78.3", eq, why, True))
    claim.rows.append(_row("BRN > BN, per-worker 32 ('slightly beats')", "+0.2",
                           *_compare("superiority", {"BRN": brn, "BN": bn}, chance)))
    return claim


def claim_2(runs: pd.DataFrame, chance: float) -> Claim:
    claim = Claim("2", "With small normalization batches BRN ends higher than BN, yet below "
                  "normalizing over 32.", "microbatches of 4: BN 74.2%, BRN 76.5%; both below 78.3/78.5")
    experiment = deciding("2")
    fig2 = runs[runs["experiment"] == experiment]
    if fig2.empty:
        return claim

    def at(norm: str, b: int) -> pd.DataFrame:
        return _select(runs, experiment, norm__name=norm, data__per_worker_batch=b)

    bn4, brn4 = at("bn", 4), at("brn", 4)
    claim.ours = f"b=4: BRN {stats(brn4).text()}, BN {stats(bn4).text()}"
    sup, why = _compare("superiority", {"BRN": brn4, "BN": bn4}, chance)
    if sup is None:
        claim.verdict = why
    elif sup.n < 2:
        claim.verdict = FEWER_THAN_TWO
    elif sup.significant:
        claim.verdict = REPRODUCED
    else:
        reverse, _ = _compare("superiority", {"BN": bn4, "BRN": brn4}, chance)
        claim.verdict = NOT_REPRODUCED + (" (BN significantly better)" if reverse.significant
                                          else " (no significant difference)")
        claim.detail = f"The reverse test, BN − BRN at per-worker 4: {reverse.text()}."
    claim.primary = sup.text() if sup else "-"
    claim.rows.append(_row("BRN > BN at per-worker batch 4", "76.5 vs 74.2", sup, why, True))
    for b in sorted({int(v) for v in fig2["data.per_worker_batch"].dropna()} - {32, 4}, reverse=True):
        claim.rows.append(_row(f"BRN > BN at per-worker batch {b}", "-",
                               *_compare("superiority", {"BRN": at("brn", b), "BN": at("bn", b)},
                                         chance)))
    (at_32,) = supporting("2")  # claim 1's runs: BN at per-worker 32
    bn32 = _select(runs, at_32, norm__name="bn", data__per_worker_batch=32)
    claim.rows.append(_row(f"BRN at 4 below BN at 32 ({at_32})", "76.5 < 78.3",
                           *_compare("superiority", {"BN at 32": bn32, "BRN at 4": brn4}, chance)))
    return claim


def claim_3(runs: pd.DataFrame, chance: float) -> Claim:
    claim = Claim("3", "With non-i.i.d. minibatches BN overfits to the minibatch distribution "
                  "(its train accuracy in inference mode is low), while BRN matches the i.i.d. result.",
                  "BN 67.0% (train 72.8%), BRN 78.6%, i.i.d. 78.3%; BN with minibatch stats 76.5%, "
                  "BN on split halves 77.4%")

    def pick(norm: str, sampler: str) -> pd.DataFrame:
        return _select(runs, deciding("3"), norm__name=norm, sampler__name=sampler)

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
    if why:
        claim.verdict = why
    elif not did.significant:
        claim.verdict = f"{NOT_REPRODUCED} (BN's non-i.i.d. penalty not significantly larger)"
    elif eq.equivalent:
        claim.verdict = REPRODUCED
    else:
        claim.verdict = f"{PARTLY} (BRN non-i.i.d. {eq.verdict} to i.i.d.)"
    claim.primary = f"(a) {did.text() if did else '-'}; (b) {eq.text() if eq else '-'}"
    claim.rows += [
        _row("(a) BN's non-i.i.d. penalty > BRN's (difference in differences)", "11.3 vs -0.1",
             did, why, True),
        _row("(b) BRN non-i.i.d. equivalent to BRN i.i.d. (TOST)", "78.6 vs 78.5", eq, why_eq, True),
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
    (controls,) = supporting("3")
    split = _select(runs, controls, norm__name="bn", sampler__name="noniid_split")
    split_size = _select(runs, controls, norm__name="bn", sampler__name="iid")
    seeds = set(split["seed"]) if "seed" in split else set()
    at_seeds = bn_non[bn_non["seed"].isin(seeds)] if "seed" in bn_non else bn_non
    claim.rows.append(_row("BN on split groups > BN non-i.i.d. (control)", "77.4 vs 67.0",
                           *_compare("superiority", {"BN split": split, "BN non-iid": at_seeds},
                                     chance)))
    claim.rows.append(_row("BN on split groups equivalent to i.i.d. BN over groups of that size (TOST)",
                           "77.4 vs 78.3 (groups of 32)",
                           *_compare("equivalence", {"BN split": split, "BN iid": split_size}, chance)))
    gn_non = _select(runs, controls, norm__name="gn", sampler__name="noniid")
    if not gn_non.empty:
        at_seeds = bn_non[bn_non["seed"].isin(set(gn_non["seed"]))]
        claim.rows.append(_row("GN non-i.i.d. > BN non-i.i.d.", "-",
                               *_compare("superiority", {"GN non-iid": gn_non, "BN non-iid": at_seeds},
                                         chance)))
    return claim


def _setting(label: str, runs: pd.DataFrame, bn: pd.DataFrame, curves: pd.DataFrame | None,
             primary: bool) -> Row:
    """The moving-average runs of one training setting against BN's of the same setting,
    by the pre-registered 'blows up' rule."""
    n_div = int((runs["status"] == "diverged").sum())
    growth = weight_growth(runs, bn, curves, GROWTH_FACTOR)
    numbers = f"{n_div} of {len(runs)} diverged; " + (growth.text() if growth else "no curves")
    if n_div:
        verdict = "blows up (diverged)"
    elif why := _unfinished({label: runs, "BN": bn}):
        verdict = why
    elif bn.empty:
        verdict = f"{INCONCLUSIVE}: no BN runs"
    elif growth is None:
        verdict = f"{INCONCLUSIVE}: no curves"
    else:
        verdict = "blows up (weight norm)" if growth.blows_up else "does not blow up"
    return Row(f"moving averages vs BN, {label}", "blows up", numbers, verdict, primary)


def _setting_label(schedule: str, weight_decay: float) -> str:
    return f"{schedule} lr, weight decay {weight_decay:g}"


def claim_4(runs: pd.DataFrame, curves: pd.DataFrame | None) -> Claim:
    """Primary: constant lr without weight decay (neither damps the weights' growth that
    the paper warns of); the profile's own lr schedule and weight decay are secondary."""
    claim = Claim("4", "Normalizing with moving averages in training (no BRN correction) blows up.",
                  "'has been observed to lead to the model blowing up' (section 2); no number")
    exp = runs[runs["experiment"] == deciding("4")]
    needed = ("norm.name", "train.lr_schedule", "optim.weight_decay")
    if exp.empty or not all(c in exp.columns for c in needed):
        return claim
    ma_all = exp[exp["norm.name"] == "moving_average"]
    rows = []
    for (schedule, decay), group in exp.groupby(["train.lr_schedule", "optim.weight_decay"]):
        ma, bn = group[group["norm.name"] == "moving_average"], group[group["norm.name"] == "bn"]
        if not ma.empty:
            primary = schedule == "constant" and float(decay) == 0.0
            rows.append(_setting(_setting_label(schedule, float(decay)), ma, bn, curves, primary))
    rows.sort(key=lambda r: not r.primary)
    claim.rows += rows
    primary = next((r for r in rows if r.primary), None)
    if primary is None:
        claim.verdict = f"{NOT_RUN}: no moving-average runs at constant lr without weight decay"
    elif primary.verdict.startswith("blows up"):
        claim.verdict = REPRODUCED
    elif primary.verdict == "does not blow up":
        claim.verdict = NOT_REPRODUCED
    else:
        claim.verdict = primary.verdict
    claim.primary = f"{primary.label}: {primary.verdict}, {primary.ours}" if primary else "-"
    diverged, total = int((ma_all["status"] == "diverged").sum()), len(ma_all)
    primary_runs = exp[(exp["train.lr_schedule"] == "constant") & (exp["optim.weight_decay"] == 0)]
    claim.ours = (f"{diverged} of {total} moving-average runs diverged; at constant lr without "
                  f"weight decay: moving averages "
                  f"{stats(primary_runs[primary_runs['norm.name'] == 'moving_average']).text()}, "
                  f"BN {stats(primary_runs[primary_runs['norm.name'] == 'bn']).text()}")
    return claim


def evaluate_claims(runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> list[Claim]:
    """The four claims; ``curves`` (one row per evaluation, ``run_dir`` to match runs)
    feeds claim 4's weight-norm rule and may be missing (W&B source)."""
    chance = _chance(runs)
    return [claim_1(runs, chance), claim_2(runs, chance), claim_3(runs, chance),
            claim_4(runs, curves)]
