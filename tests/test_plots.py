"""Figures as a reader sees them: one distinct colour per condition in every figure of an
experiment, small multiples instead of long legends, legends outside the data, split-blind
runs drawn once, readable labels, the band stated (and cut to valid values), "diverged" only
where a run did, marks at the lr drops and at BRN's relaxation, no all-zero panels, the
accuracy against every per-worker batch that ran, PDF beside PNG, heatmap text that
contrasts with its cell, and pilot figures titled by their stage."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgb

from brn_repro.analysis import plots
from brn_repro.analysis.plots import labels
from brn_repro.norm import norm_spec
from tests.script_modules import load_script


@pytest.fixture
def figures(monkeypatch):
    """Every figure a call draws, as (figure facts) captured before it is closed; ``figure``
    is the matplotlib Figure itself (closed: drawn again only to measure it)."""
    seen: list[dict] = []
    save = plots._save

    def spy(fig, path):
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        legends = [*fig.legends, *(ax.get_legend() for ax in axes if ax.get_legend())]
        seen.append({
            "figure": fig,
            "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
            "legend": [t.get_text() for legend in legends for t in legend.get_texts()],
            "legend_colours": {t.get_text(): to_hex(_handle_colour(h)) for legend in legends
                               for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True)},
            "axes": [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                      "lines": [(line.get_label(), line.get_color(), line.get_linestyle(), line.get_marker())
                                for line in ax.get_lines()],
                      "texts": [(t.get_text(), t.get_position(), t.get_color()) for t in ax.texts],
                      "mesh": ax.collections[0] if ax.collections and hasattr(ax.collections[0], "get_array")
                      else None}
                     for ax in axes]})
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    yield seen
    plt.close("all")


def _handle_colour(handle):
    return handle.get_color() if hasattr(handle, "get_color") else handle.get_edgecolor()[0]


def _frame(conditions: list[dict], seeds=(0, 1), diverged: set = frozenset(), shared: str | None = None):
    """One run per condition and seed; ``shared``: a column whose values reuse one run where
    the norm is split-blind (the norm table's ``split_blind``). Curves at steps 10, 20, 30:
    accuracy = 50 + seed + index."""
    rows, curves = [], []
    for condition, seed in itertools.product(range(len(conditions)), seeds):
        values = conditions[condition]
        blind = "norm.name" in values and norm_spec(values["norm.name"]).split_blind  # one run whatever ``shared`` says
        key = tuple((k, v) for k, v in values.items() if k != shared or not blind) + (("seed", seed),)
        run_dir = f"run-{abs(hash(key))}"
        bad = (condition, seed) in diverged
        rows.append({"run_dir": run_dir, "seed": seed, "status": "diverged" if bad else "completed",
                     "diverged_step": 25 if bad else None, "test_acc": None if bad else 50.0 + seed + condition,
                     **values})
        if not any(c["run_dir"] == run_dir for c in curves):
            for step in (10, 20, 30)[: 2 if bad else 3]:
                curves.append({"run_dir": run_dir, "step": step, "test_acc": 50.0 + seed + condition + step / 10,
                               **{f"norm/mean/{k}": 0.1 for k, _ in plots.BRN_CORRECTIONS},
                               "ema_error/mean": 0.1, "ema_error/std": 0.05})
    return pd.DataFrame(rows), pd.DataFrame(curves)


RD = [{"norm.name": "brn", "norm.r_max": r, "norm.d_max": d}
      for r in (1.0, 1.5, 2.0, 3.0) for d in (0.0, 0.5, 2.0, 5.0)]
SWEEP = [{"norm.name": n, "data.per_worker_batch": b, "sampler.name": "iid"}
         for n in ("bn", "brn", "gn") for b in (1, 4, 32)]


@pytest.mark.parametrize("n", [3, 6, 12, 16])
def test_palette_has_one_distinct_colour_per_condition(n):
    numeric = plots.palette([(float(i),) for i in range(n)])
    names = plots.palette([(f"norm{i}", "iid") for i in range(n)])
    assert len(set(numeric.values())) == n and len(set(names.values())) == n


def test_many_conditions_become_small_multiples_in_distinct_colours(tmp_path, figures):
    frame, curves = _frame(RD)
    by = ["norm.r_max", "norm.d_max"]
    assert plots.curves_figure(frame, curves, by, "test_acc", tmp_path / "t.png", "t") is not None
    (fig,) = figures
    assert len(fig["axes"]) == 4  # one panel per r_max
    assert 0 < len(fig["legend"]) <= plots.MAX_LINES  # one legend: the four d_max
    drawn = set()
    for axis in fig["axes"]:
        solid = [(colour) for name, colour, style, _ in axis["lines"] if style == "-"]
        assert len(solid) == len(set(solid)) == 4  # four d_max, four colours
        drawn |= {(axis["title"], colour) for colour in solid}
    assert len(drawn) == 16  # every condition once


def test_split_blind_run_is_drawn_once(tmp_path, figures):
    frame, curves = _frame(SWEEP, shared="data.per_worker_batch")
    gn = frame[frame["norm.name"] == "gn"]
    assert gn["run_dir"].nunique() == 2 and len(gn) == 6  # one run per seed serves three batches
    by = ["norm.name", "data.per_worker_batch"]
    plots.curves_figure(frame, curves, by, "test_acc", tmp_path / "t.png", "t")
    plots.batch_size_figure(frame, tmp_path / "b.png", "t")
    curve_fig, batch_fig = figures
    (axis,) = curve_fig["axes"]  # 3 + 3 + 1 lines: one axis
    assert [name for name, *_ in axis["lines"] if name.startswith("GN")] == ["GN, one run for every b"]
    assert len([name for name, *_ in axis["lines"] if not name.startswith("_")]) == 7
    assert [text for text in batch_fig["legend"] if text.startswith("GN")] == ["GN (one run for every b)"]
    assert plots.runs_once(frame, by)["run_dir"].is_unique


def draw_step_figures(frame, curves, by, out):
    """The three figures against the training step (t.png, c.png, e.png)."""
    plots.curves_figure(frame, curves, by, "test_acc", out / "t.png", "t")
    plots.brn_corrections_figure(frame, curves, by, out / "c.png", "t")
    plots.ema_error_figure(frame, curves, by, out / "e.png", "t")


def test_labels_are_readable_with_integers_as_integers(tmp_path, figures):
    frame, curves = _frame(SWEEP[:6])
    by = ["norm.name", "data.per_worker_batch"]
    draw_step_figures(frame, curves, by, tmp_path)
    plots.batch_size_figure(frame, tmp_path / "b.png", "t")
    assert len(figures) == 4
    for fig in figures:
        for text in fig["legend"]:
            assert "_" not in text and ".0" not in text, text
        for axis in fig["axes"]:
            for text in (axis["xlabel"], axis["ylabel"], axis["title"]):
                assert "_" not in text and ".0" not in text, text
            assert "/" not in axis["xlabel"] + axis["ylabel"]
            assert axis["ylabel"] in {v[0] for v in labels.LABELS.values()}
    assert "BN, b = 4" in figures[0]["legend"]
    assert labels.label("test_acc") == "test accuracy (%)" and labels.label("step") == "training step"
    assert labels.condition_text(["norm.relax_start"], (0.0,)) == "relaxation from step = 0"


def test_each_figure_states_its_band_and_counts_diverged_runs(tmp_path, figures, monkeypatch):
    monkeypatch.setenv("BRN_FIGURE_FORMATS", "png,pdf")  # the default (conftest sets png)
    frame, curves = _frame(RD[:2], seeds=(0, 1, 2), diverged={(1, 2)})
    by = ["norm.r_max", "norm.d_max"]
    draw_step_figures(frame, curves, by, tmp_path)
    plots.heatmap_figure(frame, tmp_path / "h.png", "t")
    assert len(figures) == 4
    for fig in figures[:3]:
        assert "mean ± sd over 3 seeds" in fig["suptitle"]
        assert any("1 of 3 diverged" in entry for entry in fig["legend"])
        axis = fig["axes"][-1]
        assert sum(marker == "x" for *_, marker in axis["lines"]) == 1  # at the step it diverged
    # the heatmap's mean and sd are of completed runs: 3 and 2 per cell
    assert "mean ± sd over 2–3 seeds" in figures[3]["suptitle"]
    for png in ("t", "c", "e", "h"):
        assert (tmp_path / f"{png}.png").stat().st_size > 5000
        assert (tmp_path / f"{png}.pdf").read_bytes().startswith(b"%PDF")


def test_heatmap_text_contrasts_with_its_cell_and_shows_the_sd(tmp_path, figures):
    frame, _ = _frame(RD, seeds=(0, 1), diverged={(5, 0)})
    frame["test_acc"] = frame["test_acc"].where(frame["status"] != "completed",
                                                 frame["test_acc"] * 1.0 + np.arange(len(frame)) * 2.0)
    frame = frame[~((frame["norm.r_max"] == 1.0) & (frame["norm.d_max"] == 0.0))]  # a cell not run
    assert plots.heatmap_figure(frame, tmp_path / "h.png", "t") is not None
    (fig,) = figures
    (axis,) = [a for a in fig["axes"] if a["mesh"] is not None]
    mesh = axis["mesh"]
    values = np.ma.masked_invalid(mesh.get_array()).reshape(4, 4)
    seen = {}
    for text, (x, y), colour in axis["texts"]:
        i, j = int(y), int(x)
        seen[i, j] = text
        if values.mask[i, j]:
            assert text == "not run" or "diverged" in text
            continue
        cell = mesh.cmap(mesh.norm(values[i, j]))
        assert plots.contrast(colour, cell) >= 4.5, (text, colour, cell)
        assert "±" in text or "one run" in text
    assert len(seen) == 16 and seen[0, 0] == "not run"
    assert "1 of 2 diverged" in seen[1, 1]  # condition 5: r_max 1.5, d_max 0.5
    assert plots.text_colour((0.27, 0.0, 0.33)) == "white" and plots.text_colour((0.99, 0.9, 0.14)) == "black"


def _seed_of(frame: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    return curves["run_dir"].map(frame.drop_duplicates("run_dir").set_index("run_dir")["seed"])


def test_accuracy_against_the_per_worker_batch_shows_every_batch_a_reference_and_dodged_bars(tmp_path, figures):
    """Log x with a tick at every per-worker batch that ran, BN at b = 32 as a reference line,
    BN's and BRN's error bars side by side, and a y range that does not blow 0.16 points of
    difference (seeds 0.1 apart) up to the whole axis."""
    batches = [1, 2, 4, 8, 32]
    frame, _ = _frame([{"norm.name": n, "data.per_worker_batch": b} for n in ("bn", "brn") for b in batches],
                      seeds=(0, 1, 2))
    frame["test_acc"] = 88.0 + 0.16 * (frame["norm.name"] == "brn") + 0.1 * frame["seed"]
    assert plots.batch_size_figure(frame, tmp_path / "b.png", "t") is not None
    (ax,) = figures[0]["figure"].axes
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == batches and [t.get_text() for t in ax.get_xticklabels()] == list(map(str, batches))
    (reference,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert reference.get_ydata()[0] == pytest.approx(88.1)  # BN at 32: seeds at 88.0, 88.1, 88.2
    bn, brn = (container.lines[0].get_xdata() for container in ax.containers)
    assert all(a < b for a, b in zip(bn, brn, strict=True))  # side by side at every batch
    low, high = ax.get_ylim()
    assert high - low >= max(plots.MIN_SPAN, plots.NOISE_SPAN * 0.1)
    # a collapse (BN at b = 1) squeezes the rest: a second panel zooms in on them, the collapse a ▼ on its edge
    frame.loc[(frame["norm.name"] == "bn") & (frame["data.per_worker_batch"] == 1), "test_acc"] = 30.0
    plots.batch_size_figure(frame, tmp_path / "c.png", "t")
    full, zoom = figures[1]["figure"].axes
    assert full.get_ylim()[0] < 30 < 88 < zoom.get_ylim()[0] + plots.NEAR
    assert zoom.get_ylim()[1] - zoom.get_ylim()[0] >= plots.MIN_SPAN
    assert [line.get_marker() for line in zoom.get_lines()].count("v") == 1


def test_heatmap_colours_do_not_magnify_the_seeds_spread(tmp_path, figures):
    """Cells 0.5 points apart, seeds 0.2 apart: the colour scale spans at least MIN_SPAN points
    and NOISE_SPAN sds, not just the cells' 0.5 points."""
    frame, _ = _frame(RD, seeds=(0, 1))
    frame["test_acc"] = 88.0 + 0.5 * (frame["norm.d_max"] == 5.0) + 0.2 * frame["seed"]
    plots.heatmap_figure(frame, tmp_path / "h.png", "t")
    (axis,) = [a for a in figures[0]["axes"] if a["mesh"] is not None]
    norm = axis["mesh"].norm
    assert norm.vmax - norm.vmin >= max(plots.MIN_SPAN, plots.NOISE_SPAN * np.std([0.0, 0.2], ddof=1))


def _colour_distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(to_rgb(a), to_rgb(b))))


def test_a_condition_keeps_one_distinct_colour_in_every_figure_of_its_experiment(tmp_path, figures):
    """Fig. 3's four conditions: BRN non-i.i.d. is one colour in the accuracy, BRN-only and
    moving-average figures alike, and no two conditions share a colour or look alike (BN and
    BRN non-i.i.d. once were orange and vermillion)."""
    conditions = [{"norm.name": n, "sampler.name": s} for n in ("bn", "brn") for s in ("iid", "noniid")]
    frame, curves = _frame(conditions)
    frame["experiment"] = "fig3_noniid"
    curves["train_acc"] = curves["test_acc"]
    bn = frame.loc[frame["norm.name"] == "bn", "run_dir"]
    curves.loc[curves["run_dir"].isin(bn), [f"norm/mean/{key}" for key, _ in plots.BRN_CORRECTIONS]] = np.nan
    drawn = plots.experiment_figures("fig3_noniid", frame, curves, ["norm.name", "sampler.name"], tmp_path)
    assert [path.stem for path in drawn] == ["test_acc_vs_step", "train_acc_vs_step", "brn_corrections",
                                             "ema_error_vs_step"]
    colours: dict[str, set] = {}
    for fig in figures:
        for text, colour in fig["legend_colours"].items():
            colours.setdefault(text, set()).add(colour)
    names = ["BN, i.i.d.", "BN, non-i.i.d.", "BRN, i.i.d.", "BRN, non-i.i.d."]
    assert all(len(colours[name]) == 1 for name in names), colours
    assert sum("BRN, non-i.i.d." in fig["legend_colours"] for fig in figures) == 4
    one = [next(iter(colours[name])) for name in names]
    assert min(_colour_distance(a, b) for a, b in itertools.combinations(one, 2)) > 0.3
    # each condition brings a dashed batch-noise line there: one row of panels per norm
    assert [axis["title"].split(":")[0] for axis in figures[3]["axes"]] == ["BN", "BN", "BRN", "BRN"]


def test_legends_sit_outside_every_panel(tmp_path, figures):
    frame, curves = _frame(SWEEP[:6])
    draw_step_figures(frame, curves, ["norm.name", "data.per_worker_batch"], tmp_path)
    plots.batch_size_figure(frame, tmp_path / "b.png", "t")
    assert len(figures) == 4
    for fig in figures:
        figure = fig["figure"]
        figure.canvas.draw()
        assert all(ax.get_legend() is None for ax in figure.axes)
        (legend,) = figure.legends
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in figure.axes)


def test_diverged_is_said_only_where_a_run_diverged(tmp_path, figures):
    by = ["norm.name", "data.per_worker_batch"]
    for diverged in (frozenset(), {(1, 0)}):
        frame, curves = _frame(SWEEP[:6], diverged=diverged)
        draw_step_figures(frame, curves, by, tmp_path)
        plots.batch_size_figure(frame, tmp_path / "b.png", "t")
    assert len(figures) == 8
    for fig in figures[:4]:
        assert "diverged" not in fig["suptitle"] + " ".join(fig["legend"]), fig["suptitle"]
    for fig in figures[4:]:
        assert "diverged" in fig["suptitle"] and any("diverged" in text for text in fig["legend"])


def test_lr_drops_and_the_start_of_brns_relaxation_are_marked(tmp_path, figures):
    """Dotted at each evaluation where a step-schedule run's lr first stands lower (the
    milestones), dash-dotted at the BRN runs' norm.relax_start, in every panel; the legend
    says what each mark is and where."""
    frame, curves = _frame([{"norm.name": "bn"}, {"norm.name": "brn"}])
    frame["train.lr_schedule"] = "step"
    frame["norm.relax_start"] = np.where(frame["norm.name"] == "brn", 15.0, np.nan)
    curves["lr"] = curves["step"].map({10: 0.2, 20: 0.02, 30: 0.002})
    draw_step_figures(frame, curves, ["norm.name"], tmp_path)
    assert len(figures) == 3
    for fig in figures:
        for ax in fig["figure"].axes:
            marks = {(line.get_linestyle(), line.get_xdata()[0]) for line in ax.get_lines()
                     if line.get_label() == "_mark"}
            assert marks == {(":", 20), (":", 30), ("-.", 15)}
        assert "lr × 0.1: step 20, 30" in fig["legend"]
        assert any(text.startswith("BRN's relaxation starts") and text.endswith("step 15") for text in fig["legend"])
    # a constant-lr run has no drop; a figure of such runs and BN has no marks
    figures.clear()
    frame["train.lr_schedule"] = "constant"
    plots.curves_figure(frame[frame["norm.name"] == "bn"], curves, ["norm.name"], "test_acc", tmp_path / "t.png", "t")
    assert not [line for ax in figures[0]["figure"].axes for line in ax.get_lines() if line.get_label() == "_mark"]


def test_brn_corrections_draw_no_all_zero_panel_no_clipping_before_relaxation_and_valid_bands(tmp_path, figures):
    """While r_max = 1 (d_max = 0) every r (d) counts as clipped: not drawn. A fraction that is
    then 0 throughout gets no panel (the note names it); the sd band stays in [0, 1]."""
    frame, curves = _frame([{"norm.name": "brn"}])
    relaxed = curves["step"] >= 20
    curves["norm/mean/r_max"] = np.where(relaxed, 2.0, 1.0)
    curves["norm/mean/d_max"] = np.where(relaxed, 1.0, 0.0)
    curves["norm/mean/r_clip_frac"] = np.where(relaxed, 0.3 * _seed_of(frame, curves), 1.0)  # seeds 0 and 0.3
    curves["norm/mean/d_clip_frac"] = np.where(relaxed, 0.0, 1.0)
    assert plots.brn_corrections_figure(frame, curves, ["norm.name"], tmp_path / "c.png", "t") is not None
    (fig,) = figures
    assert [axis["title"] for axis in fig["axes"]] == ["fraction of r clipped", "mean |r − 1|", "mean |d|"]
    assert "fraction of d clipped" in fig["suptitle"]
    r_panel = fig["figure"].axes[0]
    (line,) = [line for line in r_panel.get_lines() if line.get_label() == "BRN"]
    assert list(line.get_xdata()) == [20, 30]
    band = r_panel.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() >= 0.0 and band.max() <= 1.0  # mean 0.15 ± 0.21 cut at 0


def test_pilot_figures_are_titled_by_their_stage(tmp_path, monkeypatch):
    pilot = load_script("pilot_protocol")
    assert set(pilot.STAGE_TITLES) == set(pilot.STAGES) - {"regime"}  # the stage without this figure
    steps = [10, 20]
    curves = pd.DataFrame([{"step": step, "per_worker_batch": b, "alpha": 0.1, "seed": 0,
                            "ema_error/mean": 0.05, "ema_error/std": 0.04, "batch_noise/mean": 0.1,
                            "batch_noise/std": 0.08} for step in steps for b in (32, 4)])
    drawn: list = []
    monkeypatch.setattr(pilot.plt, "close", drawn.append)  # keep each figure to read its title
    for stage in pilot.STAGE_TITLES:
        pilot.figure(curves, tmp_path / f"{stage}.png", stage)
    monkeypatch.undo()
    titles = [fig._suptitle.get_text() for fig in drawn]
    plt.close("all")
    assert len(set(titles)) == len(titles) == len(pilot.STAGE_TITLES)
    assert all(f"“{stage}”" in title for stage, title in zip(pilot.STAGE_TITLES, titles, strict=True))
