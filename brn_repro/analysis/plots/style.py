"""How a figure tells its conditions apart: their order, one distinct colour each (fixed for
every figure of an experiment), and text that contrasts with its background (WCAG)."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.colors import to_rgb

from brn_repro.analysis.plots.labels import ANY

# Okabe-Ito's colour-blind-safe colours, ordered so the first four differ most (orange, as
# close to vermillion as it is, comes only after five conditions; yellow left out: it does
# not read on white).
QUALITATIVE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#000000", "#8C6D31")
SHARED = (0.45, 0.45, 0.45)  # a run that serves every value of a column (labels.ANY)


def sort_key(value):
    return (1, 0.0, "") if value == ANY else (0, value, "") if isinstance(value, int | float) else (0, 0.0, str(value))


def palette(levels: list[tuple]) -> dict[tuple, tuple]:
    """One distinct colour per level: ordered (viridis) where the levels are one number
    each, else qualitative (``QUALITATIVE`` up to 8, evenly spaced hues beyond)."""
    shown = [key for key in levels if ANY not in key]
    numeric = shown and all(len(k) == 1 and isinstance(k[0], int | float) for k in shown)
    if numeric:
        colours = [c[:3] for c in plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(shown)))]  # no pale yellow end
    elif len(shown) <= len(QUALITATIVE):
        colours = [to_rgb(c) for c in QUALITATIVE[:len(shown)]]
    else:
        colours = sns.color_palette("husl", len(shown))
    table = dict(zip(shown, (tuple(c) for c in colours), strict=True))
    table.update({key: SHARED for key in levels if ANY in key})
    return table


@dataclass(frozen=True)
class Styles:
    """What every figure of one experiment shares: the panels' column (``facet_by``: one
    panel per value), the lines' columns (``hue_by``) and each line's colour, keyed by its
    values in ``hue_by`` (``plots.styles_for`` sets them on all the experiment's runs)."""

    facet_by: list[str]
    hue_by: list[str]
    colours: dict[tuple, tuple]


def contrast(a, b) -> float:
    """WCAG contrast ratio of two RGB colours (1 to 21)."""
    def lum(c):
        c = np.asarray(to_rgb(c))
        c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def text_colour(background) -> str:
    """Black or white, whichever reads better on ``background``."""
    return max(("black", "white"), key=lambda c: contrast(c, background))
