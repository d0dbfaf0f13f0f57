"""Figures as a reader sees them: distinct colours per condition, small multiples instead of
long legends, split-blind runs drawn once, readable labels, the band stated, PDF beside PNG,
heatmap text that contrasts with its cell."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from brn_repro import plots
from brn_repro.norm import norm_spec
from brn_repro.plots import labels


@pytest.fixture
def figures(monkeypatch):
    """Every figure a call draws, as (figure facts) captured before it is closed."""
    seen: list[dict] = []
    save = plots._save

    def spy(fig, path):
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        seen.append({
            "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
            "axes": [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                      "lines": [(line.get_label(), line.get_color(), line.get_linestyle(), line.get_marker())
                                for line in ax.get_lines()],
                      "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
                      "texts": [(t.get_text(), t.get_position(), t.get_color()) for t in ax.texts],
                      "mesh": ax.collections[0] if ax.collections and hasattr(ax.collections[0], "get_array")
                      else None}
                     for ax in axes]})
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    yield seen
    plt.close("all")


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


def _legend_entries(axis) -> list[str]:
    return axis["legend"]


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
    drawn = set()
    for axis in fig["axes"]:
        entries = _legend_entries(axis)
        assert 0 < len(entries) <= plots.MAX_LINES
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
    (axis,) = batch_fig["axes"]
    gn_lines = [name for name, *_ in axis["lines"] if name.startswith("GN")]
    assert gn_lines == ["GN (one run for every b)"]
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
        for axis in fig["axes"]:
            for text in (axis["xlabel"], axis["ylabel"], axis["title"], *axis["legend"]):
                assert "_" not in text and ".0" not in text, text
            assert "/" not in axis["xlabel"] + axis["ylabel"]
            assert axis["ylabel"] in {v[0] for v in labels.LABELS.values()}
    assert "BN, b = 4" in figures[0]["axes"][0]["legend"]
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
        axis = fig["axes"][-1]
        assert any("1 of 3 diverged" in entry for entry in axis["legend"])
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


def test_two_condition_columns_read_as_colour_and_line_style():
    """norm x sampler: BN and BRN each one colour, i.i.d. solid and non-i.i.d. dashed, so
    the four curves are told apart by what they mean, not by four unrelated colours."""
    from brn_repro.plots import line_styles

    hues = [("bn", "iid"), ("bn", "noniid"), ("brn", "iid"), ("brn", "noniid")]
    colours, styles = line_styles(["norm.name", "sampler.name"], hues)
    assert colours[("bn", "iid")] == colours[("bn", "noniid")] != colours[("brn", "iid")]
    assert colours[("brn", "iid")] == colours[("brn", "noniid")]
    assert styles[("bn", "iid")] == styles[("brn", "iid")] == "-"
    assert styles[("bn", "noniid")] == styles[("brn", "noniid")] == "--"
    assert len({(colours[h], styles[h]) for h in hues}) == 4
    # claim 4: lr schedule and weight decay change together: one line style per setting
    settings = [(n, lr, wd) for n in ("bn", "moving_average") for lr, wd in (("constant", 0.0), ("step", 5e-4))]
    colours, styles = line_styles(["norm.name", "train.lr_schedule", "optim.weight_decay"], settings)
    assert len(set(colours.values())) == 2 and set(styles.values()) == {"-", "--"}
    assert styles[("bn", "constant", 0.0)] == styles[("moving_average", "constant", 0.0)]
    # one column, or a second with many values: one colour per condition, solid
    many = [("brn", float(d)) for d in range(6)]
    colours, styles = line_styles(["norm.name", "norm.d_max"], many)
    assert len(set(colours.values())) == 6 and set(styles.values()) == {"-"}
