"""Figures of one experiment, from the runs frame and the evaluation curves.

Every figure is drawn from runs that happened and says what its band is (``mean ± sd
over n seeds``, cut to the values the metric can take); a diverged run is drawn as an
``x`` at the step it diverged and counted in the legend, never left out, and only a
figure that has one says so. A run that serves several conditions (a split-blind norm's:
``records.split_blind``, whose run does not depend on the per-worker batch) is drawn
once. More conditions than ``MAX_LINES`` are drawn as small multiples, one panel per
value of the first condition column. A condition keeps one colour in every figure of its
experiment (``styles_for``); the legend sits below the panels, with the marks at the lr
drops and at the start of BRN's relaxation; a panel whose values are all 0 is left out
and named in the note. Each figure is written as PNG (embedded in the report) and PDF
beside it.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from brn_repro.analysis import experiments  # noqa: E402
from brn_repro.analysis.plots import marks as vertical  # noqa: E402
from brn_repro.analysis.plots.labels import (  # noqa: E402
    ANY,
    VALID,
    condition_text,
    label,
    number_text,
    seeds_text,
    short,
    value_text,
)
from brn_repro.analysis.plots.style import (  # noqa: E402
    Styles,
    contrast,  # noqa: F401 (tests read it here)
    palette,
    sort_key,
    text_colour,
)
from brn_repro.files import write_atomic  # noqa: E402

MAX_LINES = 8  # conditions on one axis; more become small multiples
DIVERGED_NOTE = "× = a diverged run, at the step it diverged (on the bottom edge: before its first evaluation)"


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


def _legend_below(fig, entries: list[tuple], title: str | None = None) -> None:
    """One legend for the whole figure, under its panels (never over the data), in as many
    columns as its width holds."""
    if not entries:
        return
    widest = max(len(text) for _, text in entries)
    ncols = max(1, min(len(entries), int(fig.get_figwidth() / (0.068 * widest + 0.55))))
    fig.legend([h for h, _ in entries], [t for _, t in entries], loc="outside lower center", ncols=ncols,
               fontsize=8, title=title, title_fontsize=8, frameon=False)
    fig.set_figheight(fig.get_figheight() + 0.2 * -(-len(entries) // ncols) + 0.2 * bool(title))


def _note(counts: list[int], diverged: bool, extra: list[str]) -> str:
    return "; ".join([seeds_text(counts)] + [DIVERGED_NOTE] * diverged + extra)


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


def styles_for(frame: pd.DataFrame, by: list[str]) -> Styles:
    """The panels and colours of every figure of an experiment, set on all its runs: a
    condition keeps its colour in a figure that draws only some of the conditions (BRN's
    corrections, the norms that keep moving averages)."""
    runs = runs_once(frame, by)
    # a column with one value in the whole experiment tells no conditions apart
    by = [c for c in by if runs[c].map(_same).nunique() > 1] or by[:1]
    facet_by, hue_by = _layout(runs, by)
    return Styles(facet_by, hue_by, palette(conditions(runs, hue_by)))


@dataclass(frozen=True)
class Panels:
    """What a figure against the step draws: one column of panels per metric (``titles``
    names them), log y or not, per metric a second one drawn dashed in each condition's
    colour, and a sentence for the note."""

    metrics: tuple[str, ...]
    titles: dict[str, str] = field(default_factory=dict)
    log_y: bool = False
    dashed: dict[str, str] = field(default_factory=dict)
    note: str = ""
    empty: dict[str, str] = field(default_factory=dict)  # per metric: why a panel has no line


def _draw(ax, runs: pd.DataFrame, curves: pd.DataFrame, metric: str, colour, text: str,
          dashed: str | None = None) -> bool:
    """One condition on ``ax``: mean over its runs per step, ± sd band cut to the values the
    metric can take (``labels.VALID``), an ``x`` per diverged run at the step it diverged (on
    the bottom edge where that came before its first evaluation); ``dashed``: a second
    metric's mean, dashed."""
    data = curves[curves["run_dir"].isin(runs["run_dir"])]
    diverged = runs[(runs["status"] == "diverged") & runs["diverged_step"].notna()]
    logged = metric in data and data[metric].notna().any()
    if not logged and len(diverged) < len(runs):
        return False
    if logged:
        per_step = data.groupby("step")[metric].agg(["mean", "std"]).dropna(subset=["mean"])
        ax.plot(per_step.index, per_step["mean"], "-", color=colour, label=text, lw=1.6)
        sd, (low, high) = per_step["std"].fillna(0), VALID.get(metric, (None, None))
        # by hand, not seaborn's lineplot(errorbar="sd"): it cannot cut the band to VALID's limits
        ax.fill_between(per_step.index, (per_step["mean"] - sd).clip(lower=low),
                        (per_step["mean"] + sd).clip(upper=high), color=colour, alpha=0.13, lw=0)
    for run_dir, step in diverged[["run_dir", "diverged_step"]].itertuples(index=False):
        before = data[(data["run_dir"] == run_dir) & (data["step"] < step)][metric].dropna() if logged else []
        edge = {} if len(before) else {"transform": ax.get_xaxis_transform()}  # y in axes units
        ax.plot([float(step)], [before.iloc[-1] if len(before) else 0.03], "x", color=colour,
                markersize=9, mew=2, label="_diverged", **edge)
    if dashed and dashed in data and data[dashed].notna().any():
        noise = data.groupby("step")[dashed].mean().dropna()
        ax.plot(noise.index, noise.to_numpy(), "--", color=colour, label="_batch_noise", lw=1.2)
    return True


def _panels(facets: list[tuple], metrics: list[str]):
    """(figure, [(axes, facet, metric)]): rows of facets and columns of metrics where both are
    several, else one metric's facets (or one facet's metrics) wrapped; no empty axes; tick
    labels and the step's label under the lowest panel of each column."""
    cells = [(facet, metric) for facet in facets for metric in metrics]
    wide = len(metrics) > 1 and len(facets) > 1
    ncols = len(metrics) if wide else min(len(cells), 2 if len(cells) in (2, 4) else 3)
    nrows = -(-len(cells) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.6 * ncols, 8.0), 3.3 * nrows + 0.9), sharex=True,
                             squeeze=False, layout="constrained",
                             sharey="col" if wide else len(metrics) == 1 and len(facets) > 1)
    for ax in axes.flat[len(cells):]:
        ax.remove()
    for k, ax in enumerate(axes.flat[:len(cells)]):
        lowest = k + ncols >= len(cells)  # no panel below it
        ax.tick_params(labelbottom=lowest)
        ax.set_xlabel(label("step") if lowest else "")
    return fig, [(ax, facet, metric) for ax, (facet, metric) in zip(axes.flat, cells, strict=False)]


def _diverged_text(counts: list[tuple[int, int]]) -> str:
    """`` (2 of 6 diverged)`` over (runs, diverged runs) pairs; nothing where none diverged."""
    runs, bad = sum(n for n, _ in counts), sum(d for _, d in counts)
    return f" ({bad} of {runs} diverged)" if bad else ""


def _curve_legend(styles: Styles, tally: dict, faceted: bool, dashed: bool, shown: list) -> list[tuple]:
    """(handle, text) per condition drawn (``tally``: its runs and diverged runs per panel
    row, keyed by its values in ``styles.hue_by``; counted here unless ``faceted``: then in
    each panel's title), then what a dashed line and each kind of vertical mark mean."""
    entries = []
    for key in sorted({key for key, _ in tally}, key=lambda k: [sort_key(v) for v in k]):
        counts = [v for (k, _), v in tally.items() if k == key]
        text = condition_text(styles.hue_by, key) + ("" if faceted else _diverged_text(counts))
        entries.append((Line2D([], [], color=styles.colours[key], lw=1.6), text))
    if dashed:
        entries.append((Line2D([], [], ls="--", color="0.4", lw=1.2), "dashed: a per-worker batch's statistics"))
    for kind in dict.fromkeys(mark.kind for mark in shown):
        mark = next(m for m in shown if m.kind == kind)
        steps = ", ".join(number_text(m.step) for m in sorted(shown, key=lambda m: m.step) if m.kind == kind)
        entries.append((Line2D([], [], ls=mark.style, color=mark.colour, lw=1.1), f"{kind}: step {steps}"))
    return entries


def _figure_layout(styles: Styles, drawn: pd.DataFrame, panels: Panels) -> tuple[list[str], list[str]]:
    """The experiment's panels, except that where each condition brings a dashed line too,
    more than two conditions on one axis split into one row per value of the first column."""
    if panels.dashed and not styles.facet_by and len(styles.hue_by) > 1 and len(conditions(drawn, styles.hue_by)) > 2:
        return styles.hue_by[:1], styles.hue_by[1:]
    return styles.facet_by, styles.hue_by


def _curve_grid(frame, curves, by, panels: Panels, path: Path, title: str,
                styles: Styles | None = None) -> Path | None:
    """``panels.metrics`` against the step in ``styles``' panels and colours (the
    experiment's); a metric that is 0 or not logged at every evaluation of the runs drawn
    gets no panel, and the note says so."""
    styles = styles or styles_for(frame, by)
    by, metrics = styles.facet_by + styles.hue_by, list(panels.metrics)
    runs = runs_once(frame, by)
    have = runs["run_dir"].isin(curves.loc[curves[metrics].notna().any(axis=1), "run_dir"])
    drawn = runs[have | (runs["status"] == "diverged")]  # diverged before any evaluation: still drawn
    shown = [m for m in metrics if (curves.loc[curves["run_dir"].isin(drawn["run_dir"]), m].fillna(0) != 0).any()]
    if not have.any() or not shown:
        return None
    facet_by, hue_by = _figure_layout(styles, drawn, panels)
    fig, cells = _panels(conditions(drawn, facet_by), shown)
    marks, tally = [], {}
    for k, (ax, facet, metric) in enumerate(cells):
        for hue in conditions(drawn, hue_by):
            if not len(group := _rows(drawn, by, facet + hue)):
                continue
            key = tuple(group.iloc[0][c] for c in styles.hue_by)  # the colour's key: the experiment's columns
            if _draw(ax, group, curves, metric, styles.colours[key], condition_text(styles.hue_by, key),
                     panels.dashed.get(metric)):
                tally[key, facet] = (group["run_dir"].nunique(), int((group["status"] == "diverged").sum()))
        if not ax.get_lines():
            ax.text(0.5, 0.5, panels.empty.get(metric, "no values here"), ha="center", va="center", fontsize=9,
                    color="0.4", transform=ax.transAxes)
        here = vertical.marks(_rows(drawn, facet_by, facet), curves)  # BRN's relaxation only where BRN is
        vertical.draw(ax, here)
        marks += [mark for mark in here if mark not in marks]
        name, where = panels.titles.get(metric, ""), condition_text(facet_by, facet)
        # in the experiment's small multiples a legend entry spans panels: each counts its diverged runs
        where += _diverged_text([v for (_, f), v in tally.items() if f == facet]) if styles.facet_by else ""
        joint = ": " if len(where + name) < 45 else "\n"  # a long panel title on two lines
        ax.set_title(joint.join(t for t in (where, name) if t), fontsize=10)
        ax.set_ylabel(label(metric) if len(shown) > 1 or k % ax.get_gridspec().ncols == 0 else "")
        ax.set_yscale("log" if panels.log_y else "linear")
        ax.grid(alpha=0.3)
    dashed = any(line.get_linestyle() == "--" for ax, *_ in cells for line in ax.get_lines())
    _legend_below(fig, _curve_legend(styles, tally, bool(styles.facet_by), dashed, marks), _legend_title(styles.hue_by))
    extra = [panels.note] if panels.note else []
    if dropped := [panels.titles.get(m) or short(m) for m in metrics if m not in shown]:
        extra.append(f"no panel for what is 0 (or not logged) at every evaluation: {', '.join(dropped)}")
    if missing := len(conditions(runs, by)) - len(conditions(drawn, by)):
        extra.append(f"{missing} condition{'s' * (missing > 1)} without curves (not run yet)")
    note = _note([n for n, _ in tally.values()], any(bad for _, bad in tally.values()), extra)
    return _finish(fig, path, title, note, int(fig.get_figwidth() * 13))


def curves_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], metric: str,
                  path: Path, title: str, log_y: bool = False, styles: Styles | None = None) -> Path | None:
    """``metric`` against the step, mean ± sd over seeds per condition."""
    if curves.empty or metric not in curves.columns:
        return None
    return _curve_grid(frame, curves, by, Panels((metric,), log_y=log_y), path, title, styles)


BRN_CORRECTIONS = (("r_clip_frac", "fraction of r clipped"), ("d_clip_frac", "fraction of d clipped"),
                   ("r_dev_mean", "mean |r − 1|"), ("d_abs_mean", "mean |d|"))
# a fraction clipped -> the limit (logged beside it) and the value at which the limit is the
# identity: r_max = 1 forces r = 1 and d_max = 0 forces d = 0, so every r and d counts as clipped
CLIP_LIMITS = {"r_clip_frac": ("r_max", 1.0), "d_clip_frac": ("d_max", 0.0)}


def brn_corrections_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], path: Path,
                           title: str, styles: Styles | None = None) -> Path | None:
    """BRN's corrections against the step (``norm/mean/*``, the last training step before
    each evaluation, mean over layers): how often r and d hit r_max / d_max, beside how
    large they are. Clipping alone cannot tell "r and d rarely needed" (small |r - 1|)
    from "the limits are still tight" (large values pressed against them). A fraction
    clipped is drawn only where its limit lets r or d move (after relaxation starts)."""
    keys = [f"norm/mean/{key}" for key, _ in BRN_CORRECTIONS]
    if frame.empty or curves.empty or not all(key in curves.columns for key in keys):
        return None
    curves = curves.copy()
    for key, (limit, identity) in CLIP_LIMITS.items():
        if f"norm/mean/{limit}" in curves:
            curves.loc[curves[f"norm/mean/{limit}"] <= identity, f"norm/mean/{key}"] = np.nan
    titles = {f"norm/mean/{key}": name for key, name in BRN_CORRECTIONS}
    note = "clipping counted only where rₘₐₓ > 1 (dₘₐₓ > 0): before, the limit itself sets r = 1 (d = 0)"
    empty = {"norm/mean/r_clip_frac": "never counted:\nrₘₐₓ = 1 keeps r = 1 throughout",
             "norm/mean/d_clip_frac": "never counted:\ndₘₐₓ = 0 keeps d = 0 throughout"}
    return _curve_grid(frame, curves, by, Panels(tuple(keys), titles, note=note, empty=empty), path, title, styles)


def ema_error_figure(frame: pd.DataFrame, curves: pd.DataFrame, by: list[str], path: Path,
                     title: str, styles: Styles | None = None) -> Path | None:
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
    return _curve_grid(frame, curves, by, Panels(keys, titles, log_y=True, dashed=dashed), path, title, styles)


REFERENCE_BATCH = 32  # the per-worker batch every smaller one is measured against (the paper's Fig. 2)
MIN_SPAN = 2.0  # accuracy points: the least y range of the accuracy against the per-worker batch
NOISE_SPAN = 10  # ... and at least this many seed-to-seed sds (median over the points)
NEAR = 5.0  # accuracy points below the reference a mean may lie and still set the zoomed panel's range
DODGE = 0.07  # log2 units between norms' error bars at one per-worker batch


def _batch_table(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, sd and count of the completed runs' test accuracy per norm and per-worker batch
    (``b``: NaN for a split-blind norm's one run for every batch), by increasing batch."""
    ok = runs[runs["status"] == "completed"]
    ok = ok.assign(acc=ok["test_acc"].astype(float), b=pd.to_numeric(ok[column].where(ok[column] != ANY)))
    return (ok.groupby(["norm.name", "b"], dropna=False)["acc"].agg(["mean", "std", "count"])
            .fillna({"std": 0.0}).reset_index())


def _batch_series(ax, mine: pd.DataFrame, column: str, colour, place: tuple[float, int],
                  floor: float | None) -> list[tuple]:
    """One norm against the per-worker batch: mean ± sd of its completed runs at each batch
    (x ``place[0]``: side by side with the other norms), a split-blind norm's one run a level
    line and band across every batch; its diverged runs an ``x`` on the bottom edge, or
    where ``floor`` cuts the axis, its means below it a ``▼`` there with the value (raised
    by the norm's ``place[1]``, so that neighbours' values do not overlap)."""
    shift, rank = place
    text, entries = value_text("norm.name", mine["norm.name"].iloc[0]), []
    table = _batch_table(mine, column)
    if table["b"].isna().all() and len(table):  # one run serves every batch: drawn once, level
        (mean, sd), edge = table.loc[0, ["mean", "std"]], ax.get_yaxis_transform()
        entries.append((ax.axhline(mean, color=colour, ls="--", lw=1.4), f"{text} (one run for every b)"))
        ax.fill_between([0, 1], mean - sd, mean + sd, color=colour, alpha=0.08, lw=0, transform=edge)
    elif len(table):
        x = table["b"] * shift
        entries.append((ax.errorbar(x, table["mean"], yerr=table["std"], marker="o", ms=5, capsize=3, lw=1.4,
                                    color=colour), text))
        for b, mean in zip(x, table["mean"], strict=True):
            if floor is not None and mean < floor:
                ax.plot([b], [0.02], "v", color=colour, ms=7, transform=ax.get_xaxis_transform())
                ax.text(b, 0.05 + 0.045 * rank, f"{mean:.1f}", color=colour, fontsize=7.5, ha="center",
                        transform=ax.get_xaxis_transform())
    bad = mine[(mine["status"] == "diverged") & (mine[column] != ANY)]
    if len(bad) and floor is None:
        handle = ax.plot(bad[column].astype(float) * shift, [0.03] * len(bad), "x", color=colour, mew=2,
                         markersize=8, transform=ax.get_xaxis_transform())[0]
        entries.append((handle, f"{text}: {len(bad)} of {len(mine)} runs diverged"))
    return entries


def _reference(ax, runs: pd.DataFrame, column: str) -> list[tuple]:
    """BN at per-worker ``REFERENCE_BATCH``, a level line: what a small per-worker batch loses against."""
    if (reference := _reference_accuracy(_batch_table(runs, column))) is None:
        return []
    line = ax.axhline(reference, color="black", ls=":", lw=1.3, zorder=1)
    return [(line, f"reference: BN at b = {REFERENCE_BATCH} ({reference:.2f} %)")]


def _reference_accuracy(table: pd.DataFrame) -> float | None:
    at = table[(table["norm.name"] == "bn") & (table["b"] == REFERENCE_BATCH)]
    return float(at["mean"].iloc[0]) if len(at) else None


def accuracy_range(low: float, high: float, sds) -> tuple[float, float]:
    """``low`` to ``high`` widened to at least ``MIN_SPAN`` points and ``NOISE_SPAN`` times
    the median seed-to-seed sd, so that a difference of one sd never fills the axis."""
    span = max(high - low, MIN_SPAN, NOISE_SPAN * float(np.median(sds)))
    middle = (low + high) / 2
    return max(middle - 0.55 * span, 0.0), min(middle + 0.55 * span, 100.0)


def _batch_ranges(table: pd.DataFrame, reference: float) -> list[tuple[float, float]]:
    """The y range of every mean ± sd, and beside it, where that range would squeeze the
    norms near ``reference`` into under half of it, a second: the means within ``NEAR``."""
    full = accuracy_range((table["mean"] - table["std"]).min(), (table["mean"] + table["std"]).max(), table["std"])
    near = table.loc[table["mean"] >= reference - NEAR, "mean"]
    zoom = accuracy_range(min(near.min(), reference), max(near.max(), reference), table["std"])
    return [full, zoom] if zoom[1] - zoom[0] < (full[1] - full[0]) / 2 else [full]


def batch_size_figure(frame: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Final test accuracy against the per-worker batch (log x, a tick at every batch that
    ran), one colour per norm, error bars side by side, BN at per-worker 32 as the
    reference line; the y range does not magnify the seeds' spread (``accuracy_range``),
    and where a collapse (BN at b = 1) squeezes the rest, a second panel zooms in on them."""
    column = "data.per_worker_batch"
    if column not in frame.columns:
        return None
    runs = runs_once(frame, ["norm.name", column])
    drawn = [norm for norm in conditions(runs, ["norm.name"])
             if runs.loc[runs["norm.name"] == norm[0], "status"].isin(["completed", "diverged"]).any()]
    if not drawn:
        return None
    table, colours = _batch_table(runs, column), palette(drawn)
    reference = _reference_accuracy(table)
    ranges = _batch_ranges(table, table["mean"].max() if reference is None else reference) if len(table) else [(0, 100)]
    fig, axes = plt.subplots(1, len(ranges), figsize=(5.6 * len(ranges) + 2.0, 5.2), layout="constrained")
    batched = [n for (n,) in drawn if not (runs.loc[runs["norm.name"] == n, column] == ANY).all()]
    batches = sorted({float(b) for b in runs[column] if b != ANY and b is not None})
    legend = []
    for k, (ax, limits) in enumerate(zip(np.atleast_1d(axes), ranges, strict=True)):
        entries = _reference(ax, runs, column)
        for (norm,) in drawn:
            rank = batched.index(norm) if norm in batched else 0
            place = (2 ** (DODGE * (rank - (len(batched) - 1) / 2)) if norm in batched else 1.0, rank)
            entries += _batch_series(ax, runs[runs["norm.name"] == norm], column, colours[(norm,)], place,
                                     limits[0] if k else None)
        ax.set(xscale="log", ylim=limits, xlabel=label(column), ylabel=label("test_acc") if k == 0 else "")
        if len(ranges) > 1:
            ax.set_title(["every norm and batch", f"zoomed on the means within {number_text(NEAR)} points "
                          "of the reference"][k], fontsize=10)
        if batches:
            ax.set_xticks(batches, [number_text(b) for b in batches])
            ax.set_xlim(batches[0] / 2 ** 0.4, batches[-1] * 2 ** 0.4)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        legend = legend or entries  # the first panel's: the second has no diverged runs
    _legend_below(fig, legend, label("norm.name"))
    note = seeds_text(list(table["count"])) + " (error bars; completed runs)"
    note += "; × on the bottom edge = a diverged run" * bool((runs["status"] == "diverged").any())
    note += "; ▼ = a mean below the zoomed range" * (len(ranges) > 1)
    not_run = [value_text("norm.name", n) for (n,) in conditions(runs, ["norm.name"]) if (n,) not in drawn]
    note += f"; not run yet: {', '.join(not_run)}" * bool(not_run)
    return _finish(fig, path, title, note, int(fig.get_figwidth() * 13))


def heatmap_figure(frame: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Mean ± sd test accuracy over final r_max x d_max (r_max up); each cell counts its
    diverged runs; a cell without completed runs is hatched and says why. The colour scale
    spans at least what ``accuracy_range`` gives: cells one sd apart never look far apart."""
    if not {"norm.r_max", "norm.d_max"} <= set(frame.columns):
        return None
    r_values = sorted(frame["norm.r_max"].dropna().unique())
    d_values = sorted(frame["norm.d_max"].dropna().unique())
    mean = np.full((len(r_values), len(d_values)), np.nan)
    texts, counts, sds = {}, [], []
    for i, r in enumerate(r_values):
        for j, d in enumerate(d_values):
            cell = frame[(frame["norm.r_max"] == r) & (frame["norm.d_max"] == d)]
            done = cell.loc[cell["status"] == "completed", "test_acc"].astype(float)
            n_div = int((cell["status"] == "diverged").sum())
            lines = []
            if len(done):
                mean[i, j] = done.mean()
                counts.append(len(done))
                sds.append(np.nan_to_num(done.std()))
                spread = f"± {done.std():.1f}" if len(done) > 1 else "(one run)"
                lines.append(f"{done.mean():.1f}\n{spread}")
            if n_div:
                lines.append(f"{n_div} of {len(cell)} diverged")
            texts[i, j] = "\n".join(lines) or "not run"
    fig, ax = plt.subplots(figsize=(1.5 * len(d_values) + 2.6, 1.1 * len(r_values) + 1.9), layout="constrained")
    ax.set_facecolor("0.93")
    cmap = plt.get_cmap("viridis")
    vmin, vmax = accuracy_range(np.nanmin(mean), np.nanmax(mean), sds) if sds else (None, None)
    sns.heatmap(mean, ax=ax, cmap=cmap, mask=np.isnan(mean), annot=False, linewidths=1, linecolor="white",
                vmin=vmin, vmax=vmax,
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


# Each figure an experiment can get, by its file's stem (brn_repro.analysis.experiments lists which
# ones each gets), in the order the report shows them: (frame, its curves, condition
# columns, path, the experiment's title, its styles) -> the figure, or None where its runs
# lack the data.
FIGURES = {
    "test_acc_vs_step": lambda frame, curves, by, path, name, styles: curves_figure(
        frame, curves, by, "test_acc", path, f"{name}: test accuracy (inference mode)", styles=styles),
    "train_acc_vs_step": lambda frame, curves, by, path, name, styles: curves_figure(
        frame, curves, by, "train_acc", path, f"{name}: train accuracy (inference mode)", styles=styles),
    "acc_vs_per_worker_batch": lambda frame, curves, by, path, name, styles: batch_size_figure(
        frame, path, f"{name}: final test accuracy against the per-worker batch"),
    "rmax_dmax_heatmap": lambda frame, curves, by, path, name, styles: heatmap_figure(
        frame, path, f"{name}: final test accuracy (%)"),
    "brn_corrections": lambda frame, curves, by, path, name, styles: brn_corrections_figure(
        frame[frame["norm.name"] == "brn"], curves, by, path,
        f"{name}: BRN's r and d (how often clipped, how large)", styles),
    "loss_vs_step": lambda frame, curves, by, path, name, styles: curves_figure(
        frame, curves, by, "loss", path, f"{name}: training loss", log_y=True, styles=styles),
    "weight_norm_vs_step": lambda frame, curves, by, path, name, styles: curves_figure(
        frame, curves, by, "weight_norm", path, f"{name}: global weight norm", log_y=True, styles=styles),
    "ema_error_vs_step": lambda frame, curves, by, path, name, styles: ema_error_figure(
        frame, curves, by, path, f"{name}: moving averages against the population statistics", styles),
}


def experiment_figures(experiment: str, frame: pd.DataFrame, curves: pd.DataFrame,
                       by: list[str], out: Path) -> list[Path]:
    """The figures ``experiment``'s description lists (``experiments.figures``) that its
    runs have data for, written under ``out``, each condition in one colour throughout."""
    mine = curves[curves["run_dir"].isin(set(frame["run_dir"]))] if not curves.empty else curves
    name, wanted, styles = experiments.title(experiment), experiments.figures(experiment), styles_for(frame, by)
    drawn = [draw(frame, mine, by, out / f"{stem}.png", name, styles)
             for stem, draw in FIGURES.items() if stem in wanted]
    return [f for f in drawn if f is not None]
