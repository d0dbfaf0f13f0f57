"""Figures of one experiment, from the runs frame and the evaluation curves.

Every figure is drawn from runs that happened and says what its band is (``mean ± sd
over n seeds``); diverged runs are drawn as an ``x`` at the step they diverged and
counted in the legend, never left out. A run that serves several conditions (a
split-blind norm's: ``records.split_blind``, whose run does not depend on the
per-worker batch) is drawn once. More conditions than ``MAX_LINES`` are drawn as small
multiples, one panel per value of the first condition column. Each figure is written
as PNG (embedded in the report) and PDF beside it.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from brn_repro import experiments  # noqa: E402
from brn_repro.files import write_atomic  # noqa: E402
from brn_repro.plots.labels import (  # noqa: E402
    ANY,
    condition_text,
    label,
    number_text,
    seeds_text,
    short,
    value_text,
)
from brn_repro.plots.style import (  # noqa: E402
    contrast,  # noqa: F401 (tests read it here)
    line_styles,
    palette,
    sort_key,
    text_colour,
)

MAX_LINES = 8  # conditions on one axis; more become small multiples
DIVERGED_NOTE = "× = a diverged run, at the step it diverged"


# The formats each figure is written in: BRN_FIGURE_FORMATS=png skips the PDFs (a third of
# an aggregate's time; the test suite sets it).
FIGURE_FORMATS_ENV = "BRN_FIGURE_FORMATS"


def _save(fig, path: Path) -> Path:
    """``path`` (PNG) and the same figure as PDF beside it, each written atomically."""
    formats = os.environ.get(FIGURE_FORMATS_ENV, "png,pdf").split(",")
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        if "pdf" in formats:
            write_atomic(path.with_suffix(".pdf"), lambda tmp: fig.savefig(tmp, format="pdf"))
    finally:
        plt.close(fig)
    return path


def _finish(fig, path: Path, title: str, note: str, width: int = 100) -> Path:
    """Saved under its title and, wrapped to ``width`` characters below it, the note that
    says what the band is and what is not drawn (diverged, not run yet)."""
    fig.suptitle(f"{title}\n" + "\n".join(textwrap.wrap(note, width)), fontsize=11)
    return _save(fig, path)


def runs_once(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per run: a run that serves several conditions keeps one row, the condition
    columns its conditions differ in set to ``ANY`` (drawn once, "one run for every b")."""
    frame = frame.copy()
    if frame.empty:
        return frame
    for column in by:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        varying = frame.groupby("run_dir")[column].agg(lambda s: s.map(_same).nunique() > 1)
        frame.loc[frame["run_dir"].map(varying), column] = ANY
    return frame.drop_duplicates("run_dir")


def conditions(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    keys = {tuple(row) for row in frame[columns].itertuples(index=False)} if columns else {()}
    return sorted(keys, key=lambda key: [sort_key(v) for v in key])


def _same(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _rows(frame: pd.DataFrame, columns: list[str], key: tuple) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in zip(columns, key, strict=True):
        mask &= frame[column].map(_same).to_numpy(dtype=object) == _same(value)
    return frame[mask]


def _layout(frame: pd.DataFrame, by: list[str]) -> tuple[list[str], list[str]]:
    """(facet columns, hue columns): small multiples over the first condition column
    when more than ``MAX_LINES`` conditions would share an axis."""
    if len(by) > 1 and len(conditions(frame, by)) > MAX_LINES:
        return by[:1], by[1:]
    return [], by


def _legend_title(columns: list[str]) -> str | None:
    """The column's name where the entries are bare values or a symbol (``b = 4``)."""
    if len(columns) == 1 and (columns[0] == "norm.name" or len(short(columns[0])) <= 4):
        return label(columns[0]).split(" (")[0]
    return None


def _draw(ax, runs: pd.DataFrame, curves: pd.DataFrame, metric: str, colour, text: str,
          dashed: str | None = None, style: str = "-") -> bool:
    """One condition on ``ax``: mean over its runs per step, ± sd band, an ``x`` per
    diverged run at the step it diverged; ``dashed``: a second metric's mean, dashed."""
    data = curves[curves["run_dir"].isin(runs["run_dir"])]
    diverged = runs[runs["status"] == "diverged"]
    if len(diverged):
        text += f" ({len(diverged)} of {len(runs)} diverged)"
    if metric not in data or data[metric].isna().all():
        if len(diverged) == len(runs):  # diverged before its first evaluation: an x at the bottom
            ax.plot(diverged["diverged_step"].astype(float), [0.03] * len(diverged), "x", color=colour,
                    markersize=9, mew=2, label=text, transform=ax.get_xaxis_transform())
            return True
        return False
    per_step = data.groupby("step")[metric].agg(["mean", "std"]).dropna(subset=["mean"])
    ax.plot(per_step.index, per_step["mean"], style, color=colour, label=text, lw=1.6)
    sd = per_step["std"].fillna(0)
    ax.fill_between(per_step.index, per_step["mean"] - sd, per_step["mean"] + sd, color=colour, alpha=0.18, lw=0)
    for run_dir, step in diverged[["run_dir", "diverged_step"]].itertuples(index=False):
        if step is None or pd.isna(step):
            continue
        before = data[(data["run_dir"] == run_dir) & (data["step"] < step)][metric].dropna()
        y = before.iloc[-1] if len(before) else per_step["mean"].min()
        ax.plot([step], [y], "x", color=colour, markersize=9, mew=2, label="_diverged")
    if dashed and dashed in data and data[dashed].notna().any():
        noise = data.groupby("step")[dashed].mean().dropna()
        ax.plot(noise.index, noise.to_numpy(), "--", color=colour, label="_batch_noise", lw=1.2)
    return True


def _curve_grid(frame, curves, by, metrics, titles, path: Path, title: str, log_y: bool = False,
                dashed: dict[str, str] | None = None) -> Path | None:
    """``metrics`` against the step, one column of panels per metric (a single metric's
    panels wrap), small multiples when a panel would hold more than ``MAX_LINES`` lines."""
    runs = runs_once(frame, by)
    have = runs["run_dir"].isin(curves.loc[curves[list(metrics)].notna().any(axis=1), "run_dir"])
    drawn = runs[have | (runs["status"] == "diverged")]  # diverged before any evaluation: still drawn
    if not have.any():
        return None
    # a column with one value here (BRN's runs only, say) is said once, not in every entry
    by = [c for c in by if drawn[c].map(_same).nunique() > 1] or by[:1]
    facet_by, hue_by = _layout(drawn, by)
    facets = conditions(drawn, facet_by)
    hues = conditions(drawn, hue_by)
    # (where a dashed line already means a second metric, conditions stay solid)
    colours, styles = (line_styles(hue_by, hues) if not dashed
                       else (palette(hues), dict.fromkeys(hues, "-")))
    cells = [(facet, metric) for facet in facets for metric in metrics]
    wide = len(metrics) > 1 and len(facets) > 1  # rows: facets, columns: metrics
    ncols = len(metrics) if wide else min(len(cells), 2 if len(metrics) > 1 or len(cells) == 4 else 3)
    nrows = -(-len(cells) // ncols)
    outside = len(metrics) > 1  # one legend per row, right of the panels
    width = max(4.6 * ncols + (2.6 if outside else 0), 8.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.3 * nrows + 1.0), sharex=True, squeeze=False,
                             layout="constrained", sharey="col" if wide else len(metrics) == 1 and len(facets) > 1)
    counts = []
    for k, (ax, (facet, metric)) in enumerate(zip(axes.flat, cells, strict=False)):
        for hue in hues:
            group = _rows(drawn, facet_by + hue_by, facet + hue)
            if len(group) and _draw(ax, group, curves, metric, colours[hue],
                                    condition_text(hue_by, hue) or condition_text(facet_by, facet),
                                    (dashed or {}).get(metric), styles[hue]):
                counts.append(group["run_dir"].nunique())
        name = titles.get(metric, "")
        ax.set_title(f"{condition_text(facet_by, facet)}: {name}" if facet_by and name
                     else condition_text(facet_by, facet) or name, fontsize=10)
        ax.set_xlabel(label("step"))
        ax.set_ylabel(label(metric))
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if dashed and metric in dashed and any(line.get_linestyle() == "--" for line in ax.get_lines()):
            ax.plot([], [], "--", color="gray", label="dashed: a per-worker\nbatch's statistics")
        last_in_row = (k + 1) % ncols == 0 or k + 1 == len(cells)
        if ax.get_legend_handles_labels()[0] and (last_in_row or not outside):
            where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if outside else {"loc": "best"}
            ax.legend(fontsize=7.5, title=_legend_title(hue_by),
                      title_fontsize=7.5, framealpha=0.85, **where)
    for ax in axes.flat[len(cells):]:
        ax.set_visible(False)
    missing = len(conditions(runs, by)) - len(conditions(drawn, by))
    note = seeds_text(counts) + "; " + DIVERGED_NOTE
    if missing:
        note += f"; {missing} condition{'s' * (missing > 1)} without curves (not run yet)"
    return _finish(fig, path, title, note, int(width * 13))


def curves_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], metric: str,
                  path: Path, title: str, log_y: bool = False) -> Path | None:
    """``metric`` against the step, mean ± sd over seeds per condition."""
    if curves.empty or metric not in curves.columns:
        return None
    return _curve_grid(frame, curves, by, [metric], {}, path, title, log_y)


BRN_CORRECTIONS = (("r_clip_frac", "fraction of r clipped"), ("d_clip_frac", "fraction of d clipped"),
                   ("r_dev_mean", "mean |r − 1|"), ("d_abs_mean", "mean |d|"))


def brn_corrections_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], path: Path,
                           title: str) -> Path | None:
    """BRN's corrections against the step (``norm/mean/*``, the last training step before
    each evaluation, mean over layers): how often r and d hit r_max / d_max, beside how
    large they are. Clipping alone cannot tell "r and d rarely needed" (small |r - 1|)
    from "the limits are still tight" (large values pressed against them)."""
    keys = [f"norm/mean/{key}" for key, _ in BRN_CORRECTIONS]
    if frame.empty or curves.empty or not all(key in curves.columns for key in keys):
        return None
    titles = {f"norm/mean/{key}": name for key, name in BRN_CORRECTIONS}
    return _curve_grid(frame, curves, by, keys, titles, path, title)


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
    frame = frame[frame["norm.name"].isin(frame.loc[having, "norm.name"])] if "norm.name" in frame else frame[having]
    titles = {"ema_error/mean": "moving mean vs population", "ema_error/std": "moving std vs population"}
    dashed = {key: key.replace("ema_error/", "batch_noise/") for key in keys}
    return _curve_grid(frame, curves, by, list(keys), titles, path, title, log_y=True, dashed=dashed)


def batch_size_figure(frame: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Final test accuracy against the per-worker batch (log x), one line per norm; a
    split-blind norm's one run is a level line with its band across every batch."""
    column = "data.per_worker_batch"
    if column not in frame.columns:
        return None
    runs = runs_once(frame, ["norm.name", column])
    norms = conditions(runs, ["norm.name"])
    done = runs[runs["status"] == "completed"]
    drawn = [norm for norm in norms if (done["norm.name"] == norm[0]).any()
             or ((runs["norm.name"] == norm[0]) & (runs["status"] == "diverged")).any()]
    if not drawn:
        return None
    colours = palette(drawn)
    batches = sorted({b for b in runs[column] if b != ANY and b is not None})
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    counts = []
    for (norm,) in drawn:
        mine = runs[runs["norm.name"] == norm]
        ok = done[done["norm.name"] == norm]
        diverged = mine[mine["status"] == "diverged"]
        text = value_text("norm.name", norm)
        if (mine[column] == ANY).all():  # one run serves every batch: drawn once, level
            mean, sd = ok["test_acc"].astype(float).mean(), ok["test_acc"].astype(float).std()
            ax.axhline(mean, color=colours[(norm,)], ls="--", lw=1.6, label=f"{text} (one run for every b)")
            ax.axhspan(mean - np.nan_to_num(sd), mean + np.nan_to_num(sd), color=colours[(norm,)], alpha=0.12)
            counts.append(len(ok))
        elif len(ok):
            agg = ok.groupby(column)["test_acc"].agg(["mean", "std", "count"]).reset_index()
            counts += list(agg["count"])
            ax.errorbar(agg[column].astype(float), agg["mean"], yerr=agg["std"].fillna(0), marker="o",
                        capsize=3, color=colours[(norm,)], label=text)
        if len(diverged):
            ax.plot(diverged[column].astype(float), [0] * len(diverged), "x", mew=2, markersize=9,
                    color=colours[(norm,)], label=f"{text}: {len(diverged)} of {len(mine)} diverged")
    ax.set_xscale("log", base=2)
    ax.set_xticks([float(b) for b in batches], [number_text(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel(label(column))
    ax.set_ylabel(label("test_acc"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=label("norm.name"), title_fontsize=8)
    not_run = [value_text("norm.name", n) for (n,) in norms if (n,) not in drawn]
    note = seeds_text(counts) + " (error bars; completed runs)" + "; × at 0 = a diverged run"
    if not_run:
        note += f"; not run yet: {', '.join(not_run)}"
    return _finish(fig, path, title, note)


def heatmap_figure(frame: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Mean ± sd test accuracy over final r_max x d_max (r_max up); each cell counts its
    diverged runs; a cell without completed runs is hatched and says why."""
    if not {"norm.r_max", "norm.d_max"} <= set(frame.columns):
        return None
    r_values = sorted(frame["norm.r_max"].dropna().unique())
    d_values = sorted(frame["norm.d_max"].dropna().unique())
    mean = np.full((len(r_values), len(d_values)), np.nan)
    texts, counts = {}, []
    for i, r in enumerate(r_values):
        for j, d in enumerate(d_values):
            cell = frame[(frame["norm.r_max"] == r) & (frame["norm.d_max"] == d)]
            done = cell.loc[cell["status"] == "completed", "test_acc"].astype(float)
            n_div = int((cell["status"] == "diverged").sum())
            lines = []
            if len(done):
                mean[i, j] = done.mean()
                counts.append(len(done))
                spread = f"± {done.std():.1f}" if len(done) > 1 else "(one run)"
                lines.append(f"{done.mean():.1f}\n{spread}")
            if n_div:
                lines.append(f"{n_div} of {len(cell)} diverged")
            texts[i, j] = "\n".join(lines) or "not run"
    fig, ax = plt.subplots(figsize=(1.5 * len(d_values) + 2.6, 1.1 * len(r_values) + 1.9), layout="constrained")
    ax.set_facecolor("0.93")
    cmap = plt.get_cmap("viridis")
    sns.heatmap(mean, ax=ax, cmap=cmap, mask=np.isnan(mean), annot=False, linewidths=1, linecolor="white",
                cbar_kws={"label": "mean " + label("test_acc")},
                xticklabels=[number_text(d) for d in d_values], yticklabels=[number_text(r) for r in r_values])
    mesh = ax.collections[0]
    for (i, j), text in texts.items():
        if np.isnan(mean[i, j]):
            ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, hatch="//", edgecolor="0.75", lw=0))
            colour, background = "0.2", "0.93"
        else:
            background = mesh.cmap(mesh.norm(mean[i, j]))
            colour = text_colour(background)
        ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8.5, color=colour,
                bbox={"boxstyle": "square,pad=0.1", "fc": background, "ec": "none"} if colour == "0.2" else None)
    ax.invert_yaxis()  # r_max grows upward
    ax.set_xlabel(label("norm.d_max"))
    ax.set_ylabel(label("norm.r_max"))
    ax.tick_params(rotation=0)
    return _finish(fig, path, title, f"{seeds_text(counts)} per cell (completed runs)")


# Each figure an experiment can get, by its file's stem (brn_repro.experiments lists which
# ones each gets), in the order the report shows them: (frame, its curves, condition
# columns, path, the experiment's title) -> the figure, or None where its runs lack the data.
FIGURES = {
    "test_acc_vs_step": lambda frame, curves, by, path, name: curves_figure(
        frame, curves, by, "test_acc", path, f"{name}: test accuracy (inference mode)"),
    "train_acc_vs_step": lambda frame, curves, by, path, name: curves_figure(
        frame, curves, by, "train_acc", path, f"{name}: train accuracy (inference mode)"),
    "acc_vs_per_worker_batch": lambda frame, curves, by, path, name: batch_size_figure(
        frame, path, f"{name}: final test accuracy against the per-worker batch"),
    "rmax_dmax_heatmap": lambda frame, curves, by, path, name: heatmap_figure(
        frame, path, f"{name}: final test accuracy (%)"),
    "brn_corrections": lambda frame, curves, by, path, name: brn_corrections_figure(
        frame[frame["norm.name"] == "brn"], curves, by, path,
        f"{name}: BRN's r and d (how often clipped, how large)"),
    "loss_vs_step": lambda frame, curves, by, path, name: curves_figure(
        frame, curves, by, "loss", path, f"{name}: training loss", log_y=True),
    "weight_norm_vs_step": lambda frame, curves, by, path, name: curves_figure(
        frame, curves, by, "weight_norm", path, f"{name}: global weight norm", log_y=True),
    "ema_error_vs_step": lambda frame, curves, by, path, name: ema_error_figure(
        frame, curves, by, path, f"{name}: moving averages against the population statistics"),
}


def experiment_figures(experiment: str, frame: pd.DataFrame, curves: pd.DataFrame,
                       by: list[str], out: Path) -> list[Path]:
    """The figures ``experiment``'s description lists (``experiments.figures``) that its
    runs have data for, written under ``out``."""
    mine = curves[curves["run_dir"].isin(set(frame["run_dir"]))] if not curves.empty else curves
    name, wanted = experiments.title(experiment), experiments.figures(experiment)
    drawn = [draw(frame, mine, by, out / f"{stem}.png", name)
             for stem, draw in FIGURES.items() if stem in wanted]
    return [f for f in drawn if f is not None]
