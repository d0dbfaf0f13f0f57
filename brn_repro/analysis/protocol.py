"""The Protocol section of REPORT.md: what the runs were, read back from their own
configs (the numbers' one home is conf/profile/<profile>.yaml), and the checks the
protocol must pass, measured on the runs themselves.

The converged reference: BN at per-worker 32, i.i.d. (claim 1's experiment, fig1_baseline),
must gain under ``CONVERGED_GAIN`` points of test accuracy over the last quarter of its run
(mean over seeds); otherwise every verdict would measure training speed, not the claims.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from brn_repro.analysis.claims import limits_at
from brn_repro.analysis.experiments import claim_experiments, deciding
from brn_repro.dataset_facts import NUM_CLASSES, TRAIN_IMAGES

CONVERGED_GAIN = 0.5  # test-accuracy points over the last quarter of the run


class Convergence(NamedTuple):
    gain: float  # mean over seeds
    gains: dict[int, float]  # per seed
    start: int  # the first evaluated step of the last quarter
    end: int

    @property
    def passes(self) -> bool:
        return self.gain < CONVERGED_GAIN

    def text(self) -> str:
        seeds = ", ".join(f"{g:+.2f}" for _, g in sorted(self.gains.items()))
        verdict = "**passes**" if self.passes else "**FAILS**"
        return (f"test accuracy gained from step {self.start} to {self.end}, mean over "
                f"{len(self.gains)} seeds: {self.gain:+.2f} points (per seed: {seeds}); "
                f"{verdict} (< {CONVERGED_GAIN:g})")


def converged_reference(runs: pd.DataFrame, curves: pd.DataFrame | None) -> Convergence | None:
    """Over BN's completed runs of claim 1 (per-worker 32, i.i.d.): the last evaluation's
    test accuracy minus that of the first evaluation at or after 3/4 of the run."""
    if curves is None or curves.empty or "experiment" not in runs:
        return None
    bn = runs[(runs["experiment"] == deciding("1")) & (runs["norm.name"] == "bn")
              & (runs["status"] == "completed")]
    gains, start, end = {}, None, None
    for _, run in bn.iterrows():
        curve = curves[(curves["run_dir"] == run["run_dir"]) & curves["test_acc"].notna()]
        if curve.empty:
            continue
        last = int(curve["step"].max())
        first = int(curve.loc[curve["step"] >= 0.75 * last, "step"].min())
        acc = curve.set_index("step")["test_acc"]
        gains[int(run["seed"])] = float(acc[last] - acc[first])
        start, end = first, last
    if not gains:
        return None
    return Convergence(sum(gains.values()) / len(gains), gains, start, end)


def _reached(config: pd.Series, step: int) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in limits_at(config, step).items())


def below_from(below: pd.Series) -> int | None:
    """The first step (``below``'s index) from which every later evaluation is True;
    None if the last one is not. (The pilot reads the same crossing.)"""
    later_above = (~below)[::-1].cummax()[::-1]
    steps = below[~later_above].index
    return int(steps.min()) if len(steps) else None


def _crossing(bn: pd.DataFrame, curves: pd.DataFrame, noise: str = "batch_noise/mean") -> str:
    """When BN's moving averages (the ones BRN reads) got closer to the population than
    one worker's batch (``noise``: i.i.d., or drawn by the non-i.i.d. recipe): the first
    evaluated step from which the mean error stays below."""
    keys = ("ema_error/mean", noise)
    mine = curves[curves["run_dir"].isin(bn["run_dir"])] if curves is not None and not curves.empty else None
    if mine is None or mine.empty or not all(k in mine for k in keys):
        return "-"
    mean = mine.groupby("step")[list(keys)].mean()
    first = below_from(mean[keys[0]] < mean[keys[1]])
    end = mean.iloc[-1]
    tail = f" (at the end {end[keys[0]]:.3f} vs {end[keys[1]]:.3f})"
    if first is None:
        return "never below" + tail
    return (f"by the first evaluation, step {first}" if first == int(mean.index.min())
            else f"from step {first}") + tail


def _claim_rows(runs: pd.DataFrame, curves: pd.DataFrame | None) -> list[str]:
    lines = ["| claim | experiment | conditions (norm, sampler, workers x per-worker, seeds) | "
             "BRN relaxation: start -> d_max end / r_max end (reached at the last step) | "
             "BN's averages below one worker's batch noise |", "|---|---|---|---|---|"]
    for claim, experiment in claim_experiments().items():
        frame = runs[runs["experiment"] == experiment]
        if frame.empty:
            lines.append(f"| {claim} | {experiment} | not run | - | - |")
            continue
        conditions, relaxation = [], "-"
        keys = ["norm.name", "sampler.name", "data.workers", "data.per_worker_batch"]
        for (norm, sampler, workers, pwb), group in frame.groupby(keys, sort=False):
            conditions.append(f"{norm} {sampler} {workers} x {pwb} ({group['seed'].nunique()})")
            if norm == "brn":
                c = group.iloc[0]
                steps = int(c["train.steps"])
                relaxation = (f"{int(c['norm.relax_start'])} -> {int(c['norm.d_max_end_step'])} / "
                              f"{int(c['norm.r_max_end_step'])} ({_reached(c, steps)})")
        # a non-i.i.d. claim: against the batches its recipe draws (BRN relaxes by those)
        sampler, noise = (("noniid", "batch_noise_noniid/mean") if (frame["sampler.name"] == "noniid").any()
                          else ("iid", "batch_noise/mean"))
        bn = frame[(frame["norm.name"] == "bn") & (frame["sampler.name"] == sampler)]
        brn = frame[(frame["norm.name"] == "brn") & (frame["sampler.name"] == sampler)]
        if len(brn):  # BN at the split where BRN reads the averages
            bn = bn[bn["data.per_worker_batch"].isin(brn["data.per_worker_batch"])]
        lines.append(f"| {claim} | {experiment} | {'; '.join(conditions)} | {relaxation} | "
                     f"{_crossing(bn, curves, noise)}{' (non-i.i.d. batches)' if sampler == 'noniid' else ''} |")
    return lines


def protocol_section(runs: pd.DataFrame, curves: pd.DataFrame | None) -> list[str]:

    needed = ("train.steps", "data.workers", "data.per_worker_batch", "dataset.name", "model.name",
              "optim.name", "optim.lr", "optim.weight_decay", "train.lr_schedule", "train.eval_every",
              "recipe.norm_momentum")
    if runs.empty:
        return []
    if missing := [c for c in needed if c not in runs]:
        return ["## Protocol", "", f"The runs' configs lack {', '.join(missing)}: no protocol to "
                "read back (records older than the protocol, or a partial source such as W&B).", ""]
    # The profile's setting: claim 1's (claim 4's constant-lr conditions differ on purpose).
    reference = deciding("1")
    setting = runs[runs["experiment"] == reference]
    ref = (setting if len(setting) else runs).iloc[0]
    steps, batch = int(ref["train.steps"]), int(ref["data.workers"] * ref["data.per_worker_batch"])
    train_images = ref.get("data.train_size")
    if pd.isna(train_images):
        train_images = TRAIN_IMAGES.get(ref["dataset.name"])
    epochs = f"{steps * batch / train_images:.1f} epochs of" if train_images else "of"
    alpha = float(ref["recipe.norm_momentum"])
    check = converged_reference(runs, curves)
    return [
        "## Protocol", "",
        "Fixed from pilots that trained batchnorm alone ([pilot/README.md](pilot/README.md): "
        "measurements, figures, and what each choice rests on), before any BRN run under this "
        "protocol; BRN results of earlier protocols had been read (see *Protocol history*). The "
        "numbers live in the profile (`conf/profile/<profile>.yaml`) and the claims' rules "
        "(`brn_repro/analysis/claims.py`), and are read back here from the runs' own configs.", "",
        f"- **Run length**: {steps} steps x global batch {batch} = {steps * batch:,} images = "
        f"{epochs} {ref['dataset.name']} ({int(train_images) if train_images else '?'} training "
        f"images); {ref['model.name']} width {ref.get('model.width', '-')}; {ref['optim.name']} "
        f"lr {ref['optim.lr']:g} ({ref['train.lr_schedule']}), weight decay "
        f"{ref['optim.weight_decay']:g}; evaluated every {int(ref['train.eval_every'])} steps "
        + ("on the whole test set." if pd.isna(ref.get("train.eval_test_size")) else
           f"on a fixed subset of {int(ref['train.eval_test_size'])} test images, the last "
           "evaluation on the whole test set."),
        f"- **Converged reference** (BN, per-worker 32, i.i.d., {reference}): "
        + (check.text() if check else f"no {reference} BN curves in this aggregate") + ".",
        f"- **Moving averages**: alpha = {alpha:g} for every norm (time constant "
        f"{1 / alpha:.0f} steps). Each step's update averages the statistics of all workers "
        "of the global batch (the paper: 50 workers, or 400 microbatches).",
        "- **Per claim**: the global batch is the same for every condition of a claim; BRN "
        "starts relaxing r_max / d_max once BN's averages beat one worker's batch in the claim's "
        "regime (i.i.d. or non-i.i.d., measured in the pilot), in the paper's proportions "
        "relax_start : d_max end : r_max end = 5 : 25 : 40, the ends brought forward where they "
        "would lie past 2/3 of the run, so that r_max 3 and d_max 5 hold over at least its last "
        "third. The last column measures, on this reproduction's own BN runs, from which "
        "evaluation the averages' error (mean over channels and layers of |mu_ema - mu_pop| / "
        "sigma_pop) stays below one worker's (i.i.d.) batch noise.", "",
        *_claim_rows(runs, curves), "",
    ]


# The paper's setup (PAPER.md, section 4), beside which the deviations table puts ours.
PAPER_SETUP = {
    "dataset": "ImageNet, 1000 classes, 1.28M training images",
    "image size": "299 x 299",
    "model": "Inception-v3 (~48 layers), BN after every convolution",
    "run length": "130k-210k steps of 1600 = 160-260 epochs",
    "workers x per-worker batch": "50 x 32 (Fig 1, 3); 400 microbatches of 4 (Fig 2)",
    "alpha (moving averages)": "0.01 (time constant 100 steps)",
    "BRN schedule": "r_max 1, d_max 0 to 5k; r_max 3 at 40k, d_max 5 at 25k (same for all figures)",
    "non-i.i.d. recipe": "per worker: 16 labels (with replacement) x 2 images, of 1000 classes",
    "optimizer": "RMSProp, lr not given",
    "evaluation": "top-1 on the validation set, moving averages of all parameters",
    "seeds": "one run per condition",
}


def _schedule_text(brn: pd.DataFrame) -> str:
    c = brn.iloc[0]

    def value(key: str, fmt=lambda v: f"{int(v)}") -> str:  # a config without the key: not recorded
        v = c.get(key)
        return "?" if v is None or pd.isna(v) else fmt(v)

    number = lambda v: f"{float(v):g}"  # noqa: E731
    return (f"r_max 1, d_max 0 to {value('norm.relax_start')}; d_max {value('norm.d_max', number)} at "
            f"{value('norm.d_max_end_step')}, r_max {value('norm.r_max', number)} at {value('norm.r_max_end_step')}")


def deviations_section(runs: pd.DataFrame) -> list[str]:
    """"Deviations from the paper": the paper's setup beside ours, read from the runs' configs."""

    setting = runs[runs["experiment"] == deciding("1")]
    needed = ("dataset.name", "train.steps", "data.workers", "data.per_worker_batch", "model.name",
              "recipe.norm_momentum", "optim.name", "optim.lr", "optim.weight_decay", "train.lr_schedule")
    if setting.empty or not all(k in runs for k in needed):  # records older than the keys, or W&B's
        return []
    ref = setting.iloc[0]
    name = ref["dataset.name"]
    steps, batch = int(ref["train.steps"]), int(ref["data.workers"] * ref["data.per_worker_batch"])
    images = TRAIN_IMAGES.get(name)
    splits, schedules = [], []
    for claim, experiment in claim_experiments().items():
        frame = runs[runs["experiment"] == experiment]
        pairs = sorted({(int(w), int(b)) for w, b in zip(frame["data.workers"], frame["data.per_worker_batch"],
                                                          strict=True)}, key=lambda p: -p[1])
        splits.append(f"claim {claim}: " + ", ".join(f"{w} x {b}" for w, b in pairs))
        brn = frame[frame["norm.name"] == "brn"]
        if len(brn):
            schedules.append(f"claim {claim}: {_schedule_text(brn)}")
    keys = ["sampler.labels_per_batch", "sampler.images_per_label"]
    recipes = []
    if all(k in runs for k in ("sampler.name", *keys)):  # records without a non-i.i.d. run lack the keys
        non = runs[runs["sampler.name"] == "noniid"].dropna(subset=keys)
        recipes = sorted({f"{int(a)} labels x {int(b)} images" for a, b in zip(*(non[k] for k in keys), strict=True)})
    ema = ref.get("train.ema_decay")
    ours = {
        "dataset": f"{name}, {NUM_CLASSES.get(name, '?')} classes, {images or '?'} training images",
        "image size": f"{int(ref['dataset.image_size'])} x {int(ref['dataset.image_size'])}"
        if not pd.isna(ref.get("dataset.image_size")) else "native",
        "model": f"{ref['model.name']} width {ref.get('model.width', '-')}",
        "run length": f"{steps} steps of {batch}" + (f" = {steps * batch / images:.1f} epochs" if images else ""),
        "workers x per-worker batch": "; ".join(splits),
        "alpha (moving averages)": f"{float(ref['recipe.norm_momentum']):g} (time constant "
                                   f"{1 / float(ref['recipe.norm_momentum']):.0f} steps)",
        "BRN schedule": "; ".join(schedules) or "-",
        "non-i.i.d. recipe": ", ".join(recipes) + f", of {NUM_CLASSES.get(name, '?')} classes" if recipes else "-",
        "optimizer": f"{ref['optim.name']} lr {float(ref['optim.lr']):g} ({ref['train.lr_schedule']}), "
                     f"weight decay {float(ref['optim.weight_decay']):g}",
        "evaluation": "top-1 on the test set, " + ("moving averages of the parameters"
                                                    if ema and not pd.isna(ema) else "the trained parameters "
                                                    "(no parameter averaging)"),
        "seeds": "paired seeds per condition: " + "; ".join(
            f"claim {claim} {runs.loc[runs['experiment'] == experiment, 'seed'].nunique()}"
            for claim, experiment in claim_experiments().items()),
    }
    lines = ["## Deviations from the paper", "",
             "Every difference between the paper's setup and this reproduction's (ours read from the "
             "runs' configs). Each is a reason a number here may differ from the paper's; the "
             "regime checks ask whether the problem each claim is about still exists at this scale.", "",
             "| | paper | ours |", "|---|---|---|"]
    lines += [f"| {key} | {PAPER_SETUP[key]} | {ours[key]} |" for key in PAPER_SETUP]
    return lines + [""]
