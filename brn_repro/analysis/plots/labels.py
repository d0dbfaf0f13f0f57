"""The one table from column and metric names to the words a figure prints.

Every axis label, legend entry, panel and figure title goes through ``label`` /
``value_text`` / ``condition_text``: readable words with units, no ``/`` or ``_``,
integers printed as integers (``4``, not ``4.0``).
"""

from __future__ import annotations

import math
from typing import Any

# A shared run (a split-blind norm's, ``records.split_blind``) stands for every
# value of the condition columns its conditions differ in; it is drawn once, as this.
ANY = "any"

# column or metric -> (axis label with units, short name for legends and panel titles)
LABELS: dict[str, tuple[str, str]] = {
    "step": ("training step", "step"),
    "test_acc": ("test accuracy (%)", "test accuracy"),
    "train_acc": ("train accuracy (%)", "train accuracy"),
    "loss": ("training loss (cross-entropy)", "loss"),
    "weight_norm": ("global weight norm (L2)", "weight norm"),
    "norm/mean/r_clip_frac": ("fraction of r clipped at rₘₐₓ", "fraction of r clipped"),
    "norm/mean/d_clip_frac": ("fraction of d clipped at dₘₐₓ", "fraction of d clipped"),
    "norm/mean/r_dev_mean": ("mean |r − 1| over channels", "mean |r − 1|"),
    "norm/mean/d_abs_mean": ("mean |d| over channels", "mean |d|"),
    "ema_error/mean": ("|μₑₘₐ − μₚₒₚ| ÷ σₚₒₚ (mean over layers)", "moving mean"),
    "ema_error/std": ("|σₑₘₐ ÷ σₚₒₚ − 1| (mean over layers)", "moving std"),
    "norm.name": ("normalization", "norm"),
    "data.per_worker_batch": ("per-worker batch b (examples per normalization group)", "b"),
    "data.workers": ("workers", "workers"),
    "sampler.name": ("sampler", "sampler"),
    "norm.r_max": ("final rₘₐₓ", "rₘₐₓ"),
    "norm.d_max": ("final dₘₐₓ", "dₘₐₓ"),
    "norm.relax_start": ("relaxation starts at step", "relaxation from step"),
    "norm.r_max_end_step": ("rₘₐₓ final from step", "rₘₐₓ final at"),
    "norm.d_max_end_step": ("dₘₐₓ final from step", "dₘₐₓ final at"),
    "norm.momentum": ("moving-average rate α", "α"),
    "norm.momentum_start": ("moving-average rate at step 0", "α from"),
    "train.lr_schedule": ("learning-rate schedule", "lr"),
    "optim.weight_decay": ("weight decay", "weight decay"),
}
# metric -> (lowest, highest) value it can take: a ± sd band is cut there (None: no limit)
VALID: dict[str, tuple[float | None, float | None]] = {
    "test_acc": (0.0, 100.0), "train_acc": (0.0, 100.0), "minibatch_stats_acc": (0.0, 100.0),
    "norm/mean/r_clip_frac": (0.0, 1.0), "norm/mean/d_clip_frac": (0.0, 1.0),
    **dict.fromkeys(("loss", "weight_norm", "norm/mean/r_dev_mean", "norm/mean/d_abs_mean", "ema_error/mean",
                     "ema_error/std", "batch_noise/mean", "batch_noise/std"), (0.0, None)),
}
# categorical values -> words
VALUES: dict[str, str] = {
    "bn": "BN", "brn": "BRN", "gn": "GN", "ln": "LN", "in": "IN", "none": "no norm", "frn": "FRN",
    "evonorm_s0": "EvoNorm-S0", "gn_ws": "GN + WS", "mabn": "MABN", "syncbn": "SyncBN",
    "moving_average": "moving averages in training",
    "iid": "i.i.d.", "noniid": "non-i.i.d.", "noniid_split": "non-i.i.d. split",
    "constant": "constant lr", "step": "step lr", "cosine": "cosine lr",
}


def _plain(name: str) -> str:
    return name.split("/")[-1].split(".")[-1].replace("_", " ")


def label(name: str) -> str:
    """Axis label, with units, of a column or metric."""
    return LABELS[name][0] if name in LABELS else _plain(name)


def short(name: str) -> str:
    return LABELS[name][1] if name in LABELS else _plain(name)


def number_text(value: Any) -> str:
    """``4.0`` -> ``4``, ``0.5`` -> ``0.5``, ``1e-05`` -> ``1e-05``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def value_text(column: str, value: Any) -> str:
    if isinstance(value, str):
        return VALUES.get(value, value.replace("_", " "))
    return number_text(value)


def condition_text(columns: list[str], values: tuple, with_names: bool = True) -> str:
    """``BN, b = 4``; a shared run: ``GN, one run for every b``; missing values left out."""
    parts = []
    for column, value in zip(columns, values, strict=True):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if value == ANY:
            parts.append(f"one run for every {short(column)}")
        elif isinstance(value, str) or not with_names:  # a norm's or sampler's name says itself
            parts.append(value_text(column, value))
        else:
            parts.append(f"{short(column)} = {value_text(column, value)}")
    return ", ".join(parts)


def seeds_text(counts: list[int]) -> str:
    """The band, stated: ``mean ± sd over 3 seeds`` (``3–5 seeds`` where conditions differ)."""
    counts = sorted({int(c) for c in counts if c})
    if not counts:
        return "no completed runs"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± sd over {n} seed{'s' if counts[-1] > 1 else ''}"
