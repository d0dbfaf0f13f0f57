"""Figures of one experiment, from the runs frame and the evaluation curves.

Every figure is drawn from runs that happened; diverged runs are drawn as an
``x`` at the step they diverged and counted in the legend, never left out.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from brn_repro.records import write_atomic  # noqa: E402


def _label(key: tuple, by: list[str]) -> str:
    parts = []
    for column, value in zip(by, key, strict=True):
        if pd.isna(value):
            continue
        name = column.split(".")[-1].replace("per_worker_batch", "b").replace("type", "")
        parts.append(f"{name}={value}" if name else str(value))
    return ", ".join(parts)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return path


def _draw_curves(ax, frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], metric: str) -> None:
    """``metric`` against the step on ``ax``, mean over seeds with a +-1 std band per
    condition; a diverged run is an ``x`` at the step it diverged."""
    merged = curves.merge(frame[["run_dir", "status", "diverged_step", *by]], on="run_dir")
    for key, group in merged.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        per_step = group.groupby("step")[metric].agg(["mean", "std", "count"]).reset_index()
        runs = frame[(frame[by].astype(str) == pd.Series(key, index=by).astype(str)).all(axis=1)]
        diverged = runs[runs["status"] == "diverged"]
        label = _label(key, by) + (f" ({len(diverged)}/{len(runs)} diverged)" if len(diverged) else "")
        line, = ax.plot(per_step["step"], per_step["mean"], label=label)
        ax.fill_between(per_step["step"], per_step["mean"] - per_step["std"].fillna(0),
                        per_step["mean"] + per_step["std"].fillna(0), alpha=0.2, color=line.get_color())
        for step in diverged["diverged_step"].dropna():
            last = group[(group["run_dir"].isin(diverged["run_dir"])) & (group["step"] < step)]
            y = last[metric].iloc[-1] if len(last) else per_step["mean"].min()
            ax.plot([step], [y], "x", color=line.get_color(), markersize=9, mew=2)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def curves_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], metric: str,
                  path: Path, title: str, log_y: bool = False) -> Path | None:
    """``metric`` against the step, mean over seeds with a +-1 std band per condition."""
    if curves.empty or metric not in curves.columns:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _draw_curves(ax, frame, curves, by, metric)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    return _save(fig, path)


BRN_CORRECTIONS = (("r_clip_frac", "fraction of r clipped"), ("d_clip_frac", "fraction of d clipped"),
                   ("r_dev_mean", "mean |r - 1|"), ("d_abs_mean", "mean |d|"))


def brn_corrections_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], path: Path,
                           title: str) -> Path | None:
    """BRN's corrections against the step (``norm/mean/*``, the last training step before
    each evaluation, mean over layers): how often r and d hit r_max / d_max, beside how
    large they are. Clipping alone cannot tell "r and d rarely needed" (small |r - 1|)
    from "the limits are still tight" (large values pressed against them)."""
    keys = [(f"norm/mean/{key}", name) for key, name in BRN_CORRECTIONS]
    if curves.empty or not all(key in curves.columns for key, _ in keys):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    for ax, (key, name) in zip(axes.flat, keys, strict=True):
        _draw_curves(ax, frame, curves, by, key)
        ax.set_ylabel(name)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def ema_error_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], path: Path,
                     title: str) -> Path | None:
    """The moving averages' error against the population statistics of each layer's
    input (``ema_error/mean``, ``ema_error/std``: mean over layers) against the step,
    side by side: whether inference suffers from the moving averages themselves. Only
    the norms that keep moving statistics (the others have no such column); log y, as
    the error falls by orders of magnitude once the averages settle. Where the runs
    logged it, the same measure for the per-worker batch statistics (``batch_noise/...``)
    is a dashed line of each condition's colour: the reference, as the moving averages
    should be nearer the population than a batch is before BRN's relaxation starts."""
    keys = ("ema_error/mean", "ema_error/std")
    if curves.empty or not set(keys) <= set(curves.columns):
        return None
    having = frame["run_dir"].isin(curves.loc[curves[keys[0]].notna(), "run_dir"])
    if not having.any():
        return None
    # Every run of a norm that has the metric, its diverged runs included.
    frame = frame[frame["norm.type"].isin(frame.loc[having, "norm.type"])] if "norm.type" in frame else frame[having]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    whats = ("moving mean: |mu_ema - mu_pop| / sigma_pop", "moving std: |sigma_ema / sigma_pop - 1|")
    for ax, metric, what in zip(axes, keys, whats, strict=True):
        _draw_curves(ax, frame, curves, by, metric)
        _draw_batch_noise(ax, frame, curves, by, metric.replace("ema_error/", "batch_noise/"))
        ax.set_yscale("log")
        ax.set_ylabel("mean over channels and layers")
        ax.set_title(what, fontsize=10)
    fig.suptitle(title)
    return _save(fig, path)


def _draw_batch_noise(ax, frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], metric: str) -> None:
    """``metric`` (mean over seeds) dashed, in the colour ``_draw_curves`` gave each
    condition on ``ax``: its labelled lines come one per condition, in the same order."""
    if metric not in curves.columns or curves[metric].isna().all():
        return
    merged = curves.merge(frame[["run_dir", *by]], on="run_dir")
    drawn = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    conditions = [group for _, group in merged.groupby(by, dropna=False, sort=True)]
    for group, line in zip(conditions, drawn, strict=True):
        per_step = group.groupby("step")[metric].mean().dropna()
        if len(per_step):
            ax.plot(per_step.index, per_step.to_numpy(), "--", color=line.get_color(), label="_batch_noise")
    ax.plot([], [], "--", color="gray", label="dashed: per-worker batch statistics (batch_noise)")
    ax.legend(fontsize=7)


def batch_size_figure(frame: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Final test accuracy against the per-worker batch (log x), one line per norm."""
    if "data.per_worker_batch" not in frame.columns:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for norm, group in frame.groupby("norm.type", sort=True):
        done = group[group["status"] == "completed"]
        agg = done.groupby("data.per_worker_batch")["test_acc"].agg(["mean", "std"]).reset_index()
        line = ax.errorbar(agg["data.per_worker_batch"], agg["mean"], yerr=agg["std"].fillna(0),
                           marker="o", capsize=3, label=norm)
        diverged = group[group["status"] == "diverged"]
        if len(diverged):
            ax.plot(diverged["data.per_worker_batch"], [0] * len(diverged), "x", mew=2,
                    color=line[0].get_color(), label=f"{norm}: diverged ({len(diverged)})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("per-worker batch (examples per normalization group)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def heatmap_figure(frame: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Mean test accuracy over r_max x d_max; diverged runs are counted in the cell."""
    if not {"norm.r_max", "norm.d_max"} <= set(frame.columns):
        return None
    r_values = sorted(frame["norm.r_max"].dropna().unique())
    d_values = sorted(frame["norm.d_max"].dropna().unique())
    grid = np.full((len(r_values), len(d_values)), np.nan)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, r in enumerate(r_values):
        for j, d in enumerate(d_values):
            cell = frame[(frame["norm.r_max"] == r) & (frame["norm.d_max"] == d)]
            done = cell[cell["status"] == "completed"]["test_acc"]
            if len(done):
                grid[i, j] = done.mean()
            n_div = int((cell["status"] == "diverged").sum())
            text = "" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
            ax.text(j, i, text + (f"\n{n_div} div" if n_div else ""), ha="center", va="center", fontsize=8)
    image = ax.imshow(grid, cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    ax.set_xticks(range(len(d_values)), [f"{d:g}" for d in d_values])
    ax.set_yticks(range(len(r_values)), [f"{r:g}" for r in r_values])
    ax.set_xlabel("d_max (final)")
    ax.set_ylabel("r_max (final)")
    ax.set_title(title)
    return _save(fig, path)


def experiment_figures(experiment: str, frame: pd.DataFrame, curves: pd.DataFrame,
                       by: list[str], out: Path) -> list[Path]:
    run_dirs = set(frame["run_dir"])
    mine = curves[curves["run_dir"].isin(run_dirs)] if not curves.empty else curves
    figures = [curves_figure(frame, mine, by, "test_acc", out / "test_acc_vs_step.png",
                             f"{experiment}: test accuracy (inference mode)")]
    if experiment == "fig3_noniid":
        figures.append(curves_figure(frame, mine, by, "train_acc", out / "train_acc_vs_step.png",
                                     f"{experiment}: train accuracy (inference mode)"))
    if experiment in ("batch_size_sweep", "batch_size_sweep_extended", "fig2_small_batch"):
        figures.append(batch_size_figure(frame, out / "acc_vs_per_worker_batch.png",
                                         f"{experiment}: accuracy vs per-worker batch"))
    if experiment == "rd_schedule_ablation":
        figures.append(heatmap_figure(frame, out / "rmax_dmax_heatmap.png",
                                      "final test accuracy by final r_max x d_max"))
    brn = frame[frame["norm.type"] == "brn"]
    if len(brn) and not mine.empty:
        figures.append(brn_corrections_figure(brn, mine, by, out / "brn_corrections.png",
                                              f"{experiment}: BRN's r and d (clipped fraction, size)"))
    if experiment == "moving_average_question":
        figures.append(curves_figure(frame, mine, by, "loss", out / "loss_vs_step.png",
                                     "training loss", log_y=True))
        figures.append(curves_figure(frame, mine, by, "weight_norm", out / "weight_norm_vs_step.png",
                                     "global weight norm", log_y=True))
    figures.append(ema_error_figure(frame, mine, by, out / "ema_error_vs_step.png",
                                    f"{experiment}: moving averages vs population statistics"))
    return [f for f in figures if f is not None]
