"""How a figure tells its conditions apart: their order, one distinct colour each (and a
line style per second condition where that reads better), and text that contrasts with
its background (WCAG)."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.colors import to_rgb

from brn_repro.plots.labels import ANY


def sort_key(value):
    return (1, 0.0, "") if value == ANY else (0, value, "") if isinstance(value, int | float) else (0, 0.0, str(value))


def palette(levels: list[tuple]) -> dict[tuple, tuple]:
    """One distinct colour per level: ordered (viridis) where the levels are one number
    each, else qualitative (colourblind-safe up to 10, evenly spaced hues beyond)."""
    shown = [key for key in levels if ANY not in key]
    numeric = shown and all(len(k) == 1 and isinstance(k[0], int | float) for k in shown)
    if numeric:
        colours = sns.color_palette("viridis", len(shown) + 1)[:len(shown)]  # no pale yellow end
    else:
        colours = sns.color_palette("colorblind" if len(shown) <= 10 else "husl", len(shown))
    table = dict(zip(shown, colours, strict=True))
    table.update({key: (0.3, 0.3, 0.3) for key in levels if ANY in key})
    return table


LINE_STYLES = ("-", "--", ":", "-.")


def line_styles(hue_by: list[str], hues: list[tuple]) -> tuple[dict[tuple, tuple], dict[tuple, str]]:
    """(colour, line style) per condition. Conditions whose columns after the first take
    at most four values together (norm x sampler; norm x lr schedule and weight decay)
    read best as colour = the first, line style = the rest (BN blue, BRN orange; i.i.d.
    solid, non-i.i.d. dashed); otherwise one colour per condition, solid."""
    # the columns after the first as one (lr schedule and weight decay change together)
    seconds = sorted({h[1:] for h in hues}, key=lambda t: tuple(map(sort_key, t))) if len(hue_by) > 1 else []
    if not 1 < len(seconds) <= len(LINE_STYLES) or any(ANY in h for h in hues):
        return palette(hues), dict.fromkeys(hues, "-")
    firsts = palette(sorted({h[:1] for h in hues}, key=lambda k: sort_key(k[0])))
    return ({h: firsts[h[:1]] for h in hues},
            {h: LINE_STYLES[seconds.index(h[1:])] for h in hues})


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
