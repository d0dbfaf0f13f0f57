"""The protocol pilot of issue 11, on batchnorm only (no BRN run is trained or read).

What it decides, before any BRN result is seen:
- run length: BN at per-worker 32, i.i.d., global batch 128 must gain under 0.5 point
  of test accuracy over the last quarter of its run (mean over seeds);
- alpha (the moving-average rate, ``recipe.norm_momentum``) and relax_start: BRN's r and d
  compare each worker's batch statistics with the moving averages, so the averages
  must be closer to the population statistics than one worker's batch is before r and
  d may move. A BN run keeps the very same averages (torch's momentum is alpha), so
  its ``ema_error`` against ``batch_noise`` (``brn_repro.evaluate.moving_average_errors``)
  says, per alpha and per-worker batch, from which step that holds.

    python scripts/pilot_protocol.py --stage alpha   # trains the sweep (2 jobs), then analyses
    python scripts/pilot_protocol.py --stage length  # per-worker 32 at twice the length
    python scripts/pilot_protocol.py --analyse ...   # the analysis of runs already there

Writes results/pilot/<stage>/{pilot_runs.csv, pilot_curves.csv, crossing.csv,
convergence.csv, ema_error_vs_batch_noise.png}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from brn_repro.analysis.aggregate import load_runs  # noqa: E402
from brn_repro.analysis.protocol import below_from  # noqa: E402
from brn_repro.files import write_atomic  # noqa: E402

SETTINGS = [  # one home for the pilot's numbers; every evaluation on the whole test set,
    # so the last quarter's gain compares like with like
    "profile=quick", "norm=bn", "recipe.global_batch=128",
    "train.compile=true", "train.eval_test_size=null",
]  # (stage crossing overrides eval_test_size: it reads the averages, not the accuracy)
REGIME_EVAL = ["train.eval_every=75", "train.eval_test_size=1000", "train.checkpoint_every=1800"]
# Stage 1 (alpha, relax_start): both splits, three rates. Stage 2 (run length): per-worker
# 32 at twice the length. alpha changes BN's inference statistics, never its training.
STAGES = {
    "alpha": ["train.steps=700", "train.eval_every=35", "train.checkpoint_every=350",
              "data.per_worker_batch=32,4", "recipe.norm_momentum=0.01,0.03,0.1", "seed=0,1"],
    "length": ["train.steps=1400", "train.eval_every=70", "train.checkpoint_every=700",
               "data.per_worker_batch=32", "recipe.norm_momentum=0.03,0.1", "seed=0,1"],
    # Stage 3 (schedule): 3 epochs of cosine did not converge (stage length), and 5 seeds of
    # every primary condition leave ~2 epochs per run in make reproduce's budget. The step
    # schedule trains the last quarter at lr/100, so "converged" there means the drop to
    # lr/100 and a quarter of the run at it add < 0.5 point. Lengths 1.5 and 2 epochs,
    # lr 0.05 (the profile's) and 0.1, alpha 0.1 (stage alpha); both splits for the crossing.
    "schedule": ["train.steps=700,940", "train.eval_every='${div:${train.steps},20}'",
                 "train.checkpoint_every='${train.steps}'", "train.lr_schedule=step",
                 "data.per_worker_batch=32,4", "recipe.norm_momentum=0.1", "optim.lr=0.05,0.1", "seed=0,1"],
    # Stage 4 (subset): the step schedule at 1.5 epochs ended at 83-85.5% and still gained
    # 0.6-1.3 points over its last quarter (stage schedule). The budget holds ~100k images
    # per run, so the runs see a fixed class-balanced subset many times (data.train_size)
    # until BN's test accuracy stops moving; cosine lr as the profile's.
    "subset": ["train.steps=780", "train.eval_every=78", "train.checkpoint_every=780",
               "data.train_size=10000,20000", "data.per_worker_batch=32", "recipe.norm_momentum=0.1",
               "optim.lr=0.05,0.1", "seed=0,1"],
    # Stage 5 (width): the subset did not help (train accuracy 83-85% on 10k images after
    # 100k: the model underfits; more steps, not fewer images, are missing). Width 8 is
    # ~3.2x the images/s of width 16 (compiled, one thread), so 3-4 epochs fit the budget.
    "width": ["model.width=8", "train.steps=1400,1880", "train.eval_every='${div:${train.steps},8}'",
              "train.checkpoint_every='${train.steps}'", "data.per_worker_batch=32",
              "recipe.norm_momentum=0.1", "optim.lr=0.1,0.2", "seed=0,1"],
    # Stage 6 (small): width 8 at 3 epochs still gained 1-3 points over its last quarter
    # (stage width) and underfits (train accuracy 90%). Shrinking the images to 14 x 14
    # (area averaging) cuts the step ~4x, so ~10 epochs fit; no augmentation, which slows
    # a model this small down more than it regularizes it. lr 0.2 beat 0.1 at width 8.
    "small": ["model.width=8", "dataset.image_size=14", "dataset.augment.crop_padding=0",
              "train.steps=2400,4800", "train.eval_every='${div:${train.steps},8}'",
              "train.checkpoint_every='${train.steps}'", "data.per_worker_batch=32",
              "recipe.norm_momentum=0.1", "optim.lr=0.2,0.4", "seed=0,1"],
    # Stage 7 (step): at 14 x 14, width 8, 10 epochs of cosine lr 0.2 still gain ~1 point
    # over the last quarter (stage small): the anneal itself lifts this underfitting model.
    # The step schedule (lr / 10 at 1/2 and 3/4) trains its last quarter at the final lr,
    # so the gain over it says whether training at the final lr has levelled off.
    "step": ["model.width=8", "dataset.image_size=14", "dataset.augment.crop_padding=0",
             "train.lr_schedule=step", "train.steps=3600,4800", "train.eval_every='${div:${train.steps},8}'",
             "train.checkpoint_every='${train.steps}'", "data.per_worker_batch=32",
             "recipe.norm_momentum=0.1", "optim.lr=0.2", "seed=0,1"],
    # Stage 8 (crossing): the chosen run (step lr 0.2, 3600 steps = 7.7 epochs at 14 x 14,
    # width 8) at both splits, evaluated every 75 steps (test accuracy on 1000 images: only
    # the averages' error is read here) for when the averages beat one worker's batch.
    "crossing": ["model.width=8", "dataset.image_size=14", "dataset.augment.crop_padding=0",
                 "train.lr_schedule=step", "train.steps=3600", "train.eval_every=75",
                 "train.eval_test_size=1000", "train.checkpoint_every=3600",
                 "data.per_worker_batch=32,4", "recipe.norm_momentum=0.1", "optim.lr=0.2", "seed=0,1"],
    # Stage 9 (regime, issue 22): the quick profile as it stands, BN only, on seeds 100-102
    # (apart from the deciding seeds 0..n-1, so no regime is chosen on the runs that are
    # then tested), evaluated every 75 steps on 1000 test images (the last on all of them).
    # Three sweeps: (1) i.i.d. at per-worker 32..1: where BN's small-batch problem starts,
    # its size (claim 2's per-worker batch and regime margin) and the paired seed-to-seed
    # spread every margin and power derives from; when the averages beat one worker's batch
    # at 32 (claim 1's relaxation). (2) non-i.i.d. at per-worker 32, recipes 2 x 16, 4 x 8,
    # 8 x 4: claim 3's recipe and regime margin, and when the averages beat a non-i.i.d.
    # worker's batch (batch_noise_noniid: claim 3's relaxation). (3) constant lr without
    # weight decay: BN's weight growth from initialization (claim 4's threshold).
    "regime": [
        ["data.per_worker_batch=32,8,4,2,1", "seed=100,101,102", *REGIME_EVAL],
        ["sampler=noniid", "data.per_worker_batch=32", "recipe.noniid.labels_per_batch=2,4,8",
         "recipe.noniid.images_per_label='${div:32,${recipe.noniid.labels_per_batch}}'",
         "seed=100,101,102", *REGIME_EVAL],
        ["data.per_worker_batch=32", "train.lr_schedule=constant", "optim.weight_decay=0.0",
         "seed=100,101,102", *REGIME_EVAL],
    ],
}
KEYS = ["per_worker_batch", "alpha", "lr", "steps", "train_size", "lr_schedule"]  # what a stage varies besides the seed


def train(runs: Path, jobs: int, stage: str) -> None:
    sweeps = STAGES[stage] if isinstance(STAGES[stage][0], list) else [STAGES[stage]]
    for sweep in sweeps:
        command = [sys.executable, "-m", "brn_repro.train", "-m", *SETTINGS, *sweep, f"paths.runs={runs}",
                   "hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"]
        print(" ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)


def crossing(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (per-worker batch, alpha): the first evaluated step from which the averages'
    error stays below one worker's batch noise, for the mean and for the std (means
    over seeds)."""
    rows = []
    for (pwb, alpha, lr, steps, size, lr_schedule), group in curves.groupby(KEYS, dropna=False):
        mean = group.groupby("step")[["ema_error/mean", "batch_noise/mean", "ema_error/std",
                                      "batch_noise/std"]].mean()
        row = {"per_worker_batch": pwb, "alpha": alpha, "lr": lr, "steps": steps, "train_size": size,
               "lr_schedule": lr_schedule,
               "time_constant_steps": round(1 / alpha)}
        for kind in ("mean", "std"):
            row[f"below_from_step_{kind}"] = below_from(mean[f"ema_error/{kind}"] < mean[f"batch_noise/{kind}"])
            row[f"ema_error_{kind}_end"] = round(float(mean[f"ema_error/{kind}"].iloc[-1]), 4)
            row[f"batch_noise_{kind}_end"] = round(float(mean[f"batch_noise/{kind}"].iloc[-1]), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def convergence(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy gained over the last quarter of each run (BN, per-worker 32 and 4)."""
    rows = []
    for run_dir, run in curves.groupby("run_dir"):
        start = run.loc[run["step"] >= 0.75 * run["step"].max(), "step"].min()
        first = run.loc[run["step"] == start, "test_acc"].iloc[0]
        last = run.loc[run["step"] == run["step"].max(), "test_acc"].iloc[0]
        meta = runs[runs["run_dir"] == run_dir].iloc[0]
        rows.append({**{key: meta[key] for key in KEYS}, "seed": meta["seed"], "test_acc_at_3/4": first,
                     "test_acc_end": last, "gain_last_quarter": round(last - first, 2)})
    return pd.DataFrame(rows).sort_values([*KEYS, "seed"])


# Each stage's figure says which stage it is and what the stage tried (STAGES has the why).
STAGE_TITLES = {
    "alpha": "moving-average rate α 0.01, 0.03, 0.1 (700 steps, cosine lr)",
    "length": "twice the length (1400 steps, cosine lr), α 0.03 and 0.1",
    "schedule": "step lr 0.05 and 0.1 at 700 and 940 steps",
    "subset": "a fixed 10k or 20k-image training subset (780 steps, lr 0.05 and 0.1)",
    "width": "width 8 at 1400 and 1880 steps, lr 0.1 and 0.2",
    "small": "14 × 14 images, width 8, 2400 and 4800 steps, lr 0.2 and 0.4",
    "step": "14 × 14, width 8, step lr 0.2 at 3600 and 4800 steps",
    "crossing": "the chosen run (step lr 0.2, 3600 steps) at per-worker 32 and 4",
}


def figure(curves: pd.DataFrame, path: Path, stage: str) -> None:
    """Each pilot condition's moving-average error against one worker's batch noise (dashed),
    mean over its seeds; one row per split, mean and std error side by side."""
    from brn_repro.analysis.plots.labels import label, number_text, seeds_text

    names = {"alpha": "α", "lr": "lr", "steps": "steps", "train_size": "images", "lr_schedule": "lr"}
    varying = [k for k in names if k in curves and curves[k].astype(str).nunique() > 1] or ["alpha"]
    keys = sorted({str(k if isinstance(k, tuple) else (k,)) for k, _ in curves.groupby(varying, dropna=False)})
    colours = dict(zip(keys, sns.color_palette("colorblind", len(keys)), strict=True))
    splits = sorted(curves["per_worker_batch"].unique(), reverse=True)
    fig, axes = plt.subplots(len(splits), 2, figsize=(12, 3.6 * len(splits) + 0.9), sharex=True,
                             squeeze=False, layout="constrained")
    seeds = []
    for row, pwb in enumerate(splits):
        for col, kind in enumerate(("mean", "std")):
            ax = axes[row, col]
            part = curves[curves["per_worker_batch"] == pwb]
            for key, group in part.groupby(varying, dropna=False):
                key = key if isinstance(key, tuple) else (key,)
                seeds.append(group["seed"].nunique())
                mean = group.groupby("step")[[f"ema_error/{kind}", f"batch_noise/{kind}"]].mean()
                text = ", ".join(f"{names[k]} = {'all' if pd.isna(v) else number_text(v)}"
                                 for k, v in zip(varying, key, strict=True))
                ax.plot(mean.index, mean[f"ema_error/{kind}"], color=colours[str(key)], label=text)
                ax.plot(mean.index, mean[f"batch_noise/{kind}"], "--", color=colours[str(key)], alpha=0.6)
            ax.set_yscale("log")
            ax.set_title(f"BN, per-worker batch {pwb} (× {128 // pwb} workers)", fontsize=10)
            ax.set_xlabel(label("step"))
            ax.set_ylabel(label(f"ema_error/{kind}"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7.5, title="solid: moving averages; dashed: one worker's batch",
                      title_fontsize=7.5)
    fig.suptitle(f"Pilot stage “{stage}” (BN only): {STAGE_TITLES[stage]}\n"
                 "the moving averages' error against one worker's batch noise; "
                 + seeds_text(seeds).replace("mean ± sd", "mean"), fontsize=11)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def replot(out: Path, stage: str) -> None:
    """The figure again from the stage's saved tables (no run records needed)."""
    runs, curves = pd.read_csv(out / "pilot_runs.csv"), pd.read_csv(out / "pilot_curves.csv")
    keys = [k for k in KEYS if k in runs]  # tables of older stages lack some keys
    curves = curves.drop(columns=[k for k in (*KEYS, "seed") if k in curves]).merge(
        runs[["run_dir", *keys, "seed"]], on="run_dir")
    figure(curves, out / "ema_error_vs_batch_noise.png", stage)


# --- stage regime (issue 22): the protocol's numbers, each derived from BN alone -------------
# The paper's effect sizes the powers are computed at: Fig 2, BRN recovers 76.5 - 74.2 = 2.3 of
# BN's 78.3 - 74.2 = 4.1 points lost to microbatches of 4; Fig 3, BRN non-i.i.d. (78.6) recovers
# all of BN's 78.3 - 67.0 = 11.3 points.
SHARE_FIG2, SHARE_FIG3 = 2.3 / 4.1, 1.0
POWER = 0.8  # the power every margin is set for
SEED_COUNTS = (5, 10, 15)  # deciding seeds per condition, the fewest that give POWER
SAME_ORDER = 10.0  # accuracy points: a penalty above is another regime (its spread is not pooled)


def relaxation(start: int, steps: int) -> dict[str, int]:
    """BRN's schedule from the step the averages beat a worker's batch (rounded up to 100):
    the paper's proportions relax_start : d_max end : r_max end = 5 : 25 : 40, with r_max's end
    brought forward to 2/3 of the run where it would lie later (then d_max's end keeps its
    place between them: 20/35), so r_max = 3 and d_max = 5 hold for at least the last third."""
    start = -(-start // 100) * 100
    r_end = min(8 * start, 2 * steps // 3)
    return {"relax_start": start, "d_max_end_step": start + round((r_end - start) * 20 / 35 / 100) * 100
            if r_end < 8 * start else 5 * start, "r_max_end_step": r_end}


def regime_tables(runs: pd.DataFrame, curves: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Stage regime's BN-only tables: the small-batch and non-i.i.d. penalties (paired by
    seed), when the averages beat one worker's batch, and BN's weight growth."""
    from brn_repro.analysis.stats import superiority

    step_lr = runs[runs["lr_schedule"] == "step"]
    iid = step_lr[step_lr["sampler.name"] == "iid"].pivot(index="seed", columns="per_worker_batch",
                                                          values="test_acc")
    rows = []  # BN's small-batch penalty against per-worker 32, paired by seed
    for b in sorted(iid.columns, reverse=True):
        pen = iid[32] - iid[b]
        test = superiority(pen) if b != 32 else None
        rows.append({"per_worker_batch": b, "bn_test_acc": round(iid[b].mean(), 2),
                     "penalty_vs_32": round(pen.mean(), 2), "penalty_sd": round(pen.std(ddof=1), 3),
                     "penalty_per_seed": " ".join(f"{v:+.2f}" for v in pen),
                     "one_sided_p": round(test.p, 4) if test else None})
    small = pd.DataFrame(rows)
    rows = []
    for recipe, group in step_lr[step_lr["sampler.name"] == "noniid"].groupby("recipe", sort=False):
        acc = group.set_index("seed")
        pen = iid[32].loc[acc.index] - acc["test_acc"]
        rows.append({"recipe": recipe, "labels_per_batch": int(acc["recipe.noniid.labels_per_batch"].iloc[0]),
                     "bn_test_acc": round(acc["test_acc"].mean(), 2),
                     "bn_train_acc": round(acc["train_acc"].mean(), 2),
                     "penalty_vs_iid_32": round(pen.mean(), 2), "penalty_sd": round(pen.std(ddof=1), 3),
                     "penalty_per_seed": " ".join(f"{v:+.2f}" for v in pen)})
    noniid = pd.DataFrame(rows).sort_values("labels_per_batch", ascending=False)
    return {"small": small, "noniid": noniid, "cross": crossing_table(curves), "growth": growth_table(runs, curves)}


def crossing_table(curves: pd.DataFrame) -> pd.DataFrame:
    """When BN's averages beat one worker's batch (mean over seeds), i.i.d. and non-i.i.d."""
    rows = []
    for (sampler, pwb, recipe, schedule), group in curves.groupby(
            ["sampler.name", "per_worker_batch", "recipe", "lr_schedule"]):
        noise = "batch_noise_noniid/mean" if sampler == "noniid" else "batch_noise/mean"
        mean = group.groupby("step")[["ema_error/mean", noise]].mean()
        rows.append({"sampler": sampler, "per_worker_batch": pwb, "recipe": recipe if sampler == "noniid" else "-",
                     "lr_schedule": schedule, "noise": noise.split("/")[0],
                     "below_from_step": below_from(mean["ema_error/mean"] < mean[noise]),
                     "ema_error_end": round(mean["ema_error/mean"].iloc[-1], 4),
                     "noise_end": round(mean[noise].iloc[-1], 4)})
    return pd.DataFrame(rows)


def growth_table(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """BN's weight growth from initialization at per-worker 32 (claim 4's setting, and the profile's)."""
    last = curves.sort_values("step").groupby("run_dir").tail(1).set_index("run_dir")["weight_norm"]
    bn32 = runs[(runs["sampler.name"] == "iid") & (runs["per_worker_batch"] == 32)]
    growth = bn32.assign(weight_norm_end=bn32["run_dir"].map(last))
    growth = growth.assign(growth_from_init=growth["weight_norm_end"] - growth["weight_norm_init"])
    return growth[["lr_schedule", "optim.weight_decay", "seed", "weight_norm_init", "weight_norm_end",
                   "growth_from_init"]].round({"weight_norm_init": 3, "weight_norm_end": 3, "growth_from_init": 3})


def pooled_sd(table: pd.DataFrame, penalty: str) -> float:
    """The paired spread, pooled over the candidates whose penalty is under SAME_ORDER points
    (3 seeds each give too rough a sd; a penalty of tens of points, per-worker 1 or the
    2 x 16 recipe, is another regime with another spread)."""
    same = table[(table[penalty] > 0) & (table[penalty] < SAME_ORDER)]
    return float((same["penalty_sd"] ** 2).mean() ** 0.5)


def tost_seeds(delta: float, sd: float) -> int | None:
    from brn_repro.analysis.stats import power_equivalence

    return next((n for n in SEED_COUNTS if power_equivalence(0.0, delta, sd, n) >= POWER), None)


def regime_margin(sd: float, n: int, share: float) -> float:
    """The BN penalty at which the claim's test has POWER if BRN recovers ``share`` of it."""
    from brn_repro.analysis.stats import effect_for_power

    return effect_for_power(sd, n, power=POWER) / share


def first_fit(candidates, sd: float, share: float):
    """The first (candidate, n) whose pilot penalty clears the regime margin with POWER:
    the regime check (one-sided against the margin) is then expected to pass."""
    from brn_repro.analysis.stats import power_superiority

    for key, penalty in candidates:
        for n in SEED_COUNTS:
            m = regime_margin(sd, n, share)
            if power_superiority(penalty, sd, n, shift=m) >= POWER:
                return key, n, m
    return None, None, None


def regime_design(tables: dict[str, pd.DataFrame], steps: int) -> dict[str, object]:
    """The claims' regimes, margins, seeds and schedules, each from the tables."""
    from brn_repro.analysis.stats import power_equivalence, power_superiority

    small, noniid, cross = tables["small"], tables["noniid"], tables["cross"]
    by_b = small.set_index("per_worker_batch")
    sd2 = pooled_sd(small, "penalty_vs_32")
    # Claim 2: the paper's 4 first, then the larger of the smaller batches.
    b2, n2, m2 = first_fit([(b, float(by_b.loc[b, "penalty_vs_32"])) for b in (4, 2, 1) if b in by_b.index],
                           sd2, SHARE_FIG2)
    penalty2 = float(by_b.loc[b2, "penalty_vs_32"]) if b2 else float("nan")
    delta = penalty2 / 2  # "matches": closer to BN at 32 than halfway to the small-batch problem
    design = {"paired_sd_small_batch": sd2, "claim2_per_worker_batch": b2, "claim2_seeds": n2,
              "claim2_regime_margin": m2, "bn_penalty_at_claim2_batch": penalty2, "equivalence_margin": delta}
    # Claim 3: the recipe with the most labels (the paper's 2 images per label) first.
    sd3 = pooled_sd(noniid, "penalty_vs_iid_32") * 2 ** 0.5  # d holds two penalties
    recipe3, n3, m3 = first_fit([(r["recipe"], float(r["penalty_vs_iid_32"])) for _, r in noniid.iterrows()],
                                sd3, SHARE_FIG3)
    design |= {"paired_sd_did": sd3, "claim3_recipe": recipe3, "claim3_seeds": n3, "claim3_regime_margin": m3}
    at = {c["per_worker_batch"] if c["sampler"] == "iid" else c["recipe"]: c["below_from_step"]
          for _, c in cross[cross["lr_schedule"] == "step"].iterrows()}
    for claim, key in (("claim1", 32), ("claim2", b2), ("claim3", recipe3)):
        if at.get(key) is not None:
            design |= {f"{claim}_{k}": v for k, v in relaxation(int(at[key]), steps).items()}
    # Claim 1 pairs with claim 2's BN at 32 (its regime check), claim 3(b) is a TOST too: each
    # takes at least the seeds its TOST needs for POWER at a true difference of 0.
    n_tost = tost_seeds(delta, sd2) or max(SEED_COUNTS)
    n1, n3 = max(n2 or 0, n_tost), max(n3 or 0, n_tost)
    design |= {"claim1_seeds": n1, "claim3_seeds": n3}
    if recipe3:  # the margin at the seeds claim 3 runs with
        design["claim3_regime_margin"] = regime_margin(sd3, n3, SHARE_FIG3)
    design["power_claim1_tost"] = power_equivalence(0.0, delta, sd2, n1)
    if n2:
        design["power_claim2"] = power_superiority(SHARE_FIG2 * penalty2, sd2, n2)
    if recipe3:
        p3 = float(noniid.set_index("recipe").loc[recipe3, "penalty_vs_iid_32"])
        design["power_claim3a"] = power_superiority(SHARE_FIG3 * p3, sd3, n3)
        design["power_claim3b_tost"] = power_equivalence(0.0, delta, sd2, n3)
    growth_const = tables["growth"].query("lr_schedule == 'constant'")["growth_from_init"]
    return design | {"bn_constant_lr_growth_min": float(growth_const.min()),
                     "bn_constant_lr_growth_max": float(growth_const.max())}


def regime(runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> None:
    """Stage regime's tables and design, written to ``out`` and printed."""
    runs = runs.assign(recipe=runs["recipe.noniid.labels_per_batch"].astype(int).astype(str) + " x "
                       + runs["recipe.noniid.images_per_label"].astype(int).astype(str))
    tables = regime_tables(runs, curves)
    design = regime_design(tables, int(runs["steps"].iloc[0]))
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{"quantity": k, "value": round(v, 4) if isinstance(v, float) else v}
                          for k, v in design.items()])
    for frame, name in ((runs, "pilot_runs.csv"), (curves, "pilot_curves.csv"), (tables["small"], "small_batch.csv"),
                        (tables["noniid"], "noniid.csv"), (tables["cross"], "crossing.csv"),
                        (tables["growth"], "weight_growth.csv"), (table, "design.csv")):
        write_atomic(out / name, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    pd.set_option("display.width", 200)
    for frame in (*tables.values(), table):
        print(frame.to_string(index=False), end="\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), default="alpha")
    parser.add_argument("--runs", default=None, help="default: runs/pilot_<stage>")
    parser.add_argument("--out", default=None, help="default: results/pilot/<stage>")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--analyse", action="store_true", help="only analyse existing runs")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the figure from <out>/pilot_{runs,curves}.csv")
    args = parser.parse_args()
    if args.replot:
        return replot(ROOT / (args.out or f"results/pilot/{args.stage}"), args.stage)
    args.runs = args.runs or f"runs/pilot_{args.stage}"
    args.out = args.out or f"results/pilot/{args.stage}"
    if not args.analyse:
        train(ROOT / args.runs, args.jobs, args.stage)
    runs, curves = load_runs(ROOT / args.runs)
    if args.stage == "regime":
        return _regime_main(runs, curves, ROOT / args.out)
    runs = runs.rename(columns={"norm.name": "norm", "data.per_worker_batch": "per_worker_batch",
                                "norm.momentum": "alpha", "optim.lr": "lr", "train.steps": "steps",
                                "data.train_size": "train_size",
                                "train.lr_schedule": "lr_schedule"})
    for key in KEYS:  # runs older than a key (data.train_size) did not vary it
        if key not in runs:
            runs[key] = None
    if (runs["norm"] != "bn").any():
        sys.exit("error: the pilot reads batchnorm runs only")
    # (the curves log the step's lr too: the run's lr comes from its config)
    curves = curves.drop(columns=[k for k in (*KEYS, "seed") if k in curves]).merge(
        runs[["run_dir", *KEYS, "seed"]], on="run_dir")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    table, conv = crossing(curves), convergence(runs, curves)
    for frame, name in ((runs, "pilot_runs.csv"), (curves, "pilot_curves.csv"), (table, "crossing.csv"),
                        (conv, "convergence.csv")):
        write_atomic(out / name, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    figure(curves, out / "ema_error_vs_batch_noise.png", args.stage)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    print(conv.to_string(index=False))
    print(conv.groupby(KEYS, dropna=False)[["test_acc_end", "gain_last_quarter"]].mean().round(2).to_string())


def _regime_main(runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> None:
    runs = runs.rename(columns={"data.per_worker_batch": "per_worker_batch", "train.steps": "steps",
                                "train.lr_schedule": "lr_schedule"})
    if (runs["norm.name"] != "bn").any():
        sys.exit("error: the pilot reads batchnorm runs only")
    keys = ["run_dir", "sampler.name", "per_worker_batch", "lr_schedule", "seed",
            "recipe.noniid.labels_per_batch", "recipe.noniid.images_per_label"]
    curves = curves.drop(columns=[k for k in keys[1:] if k in curves]).merge(runs[keys], on="run_dir")
    curves["recipe"] = (curves["recipe.noniid.labels_per_batch"].astype(int).astype(str) + " x "
                        + curves["recipe.noniid.images_per_label"].astype(int).astype(str))
    regime(runs, curves, out)


if __name__ == "__main__":
    main()
