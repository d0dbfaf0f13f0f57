"""How a run executes on its device, chosen from measurements: precision, memory layout
and whether to compile. None of it is part of a run's identity (it changes rounding, not
the computation); the measurements live in results/bench/ and results/gpu/."""

from __future__ import annotations

import math

import torch

from brn_repro.schema import RunConfig

# train.precision. float32 means float32 on a GPU too: torch's default TF32 convolutions
# put the small CNN's gradient 7e-3 off float64 on an H100 (results/gpu/check.csv); tf32
# asks for that mode by name; float64 is for numerical checks (brn_repro.numerics).
PRECISIONS = {"float32": (torch.float32, False), "tf32": (torch.float32, True),
              "float64": (torch.float64, False)}


# train.channels_last=auto: the (model, device type, eager | compiled) whose norms train
# faster in channels-last, from scripts/bench_step.py (results/bench/step.csv). Eager bn
# and brn regroup the batch per worker, which costs 2x in channels-last at one example per
# worker: they take it from CL_MIN_PER_WORKER examples per group. Unmeasured: NCHW.
CHANNELS_LAST_FASTER: dict[tuple[str, str, str], frozenset[str]] = {
    ("small_cnn", "cpu", "eager"): frozenset({"bn", "brn", "moving_average", "none"}),
    ("small_cnn", "cpu", "compiled"): frozenset({"bn", "brn", "moving_average", "none"}),
}
CL_MIN_PER_WORKER = 4  # eager bn / brn only


def memory_format(cfg: RunConfig, device: torch.device,
                  compiled: bool = False) -> torch.memory_format:
    """The layout the model's weights and batches take (not part of a run's identity:
    it changes rounding, not the computation)."""
    choice = cfg.train.channels_last
    if choice == "auto":
        norm, mode = cfg.norm.name, "compiled" if compiled else "eager"
        choice = (norm in CHANNELS_LAST_FASTER.get((cfg.model.name, device.type, mode), ())
                  and (compiled or norm not in ("bn", "brn") or cfg.norm_batch >= CL_MIN_PER_WORKER))
    return torch.channels_last if choice else torch.contiguous_format


# train.compile=auto: compile a one-process run that trains at least this many images,
# where the faster step pays back the compilation (results/bench/step.csv on this
# project's CPU, results/bench/gpu.csv on an H100).
COMPILE_MIN_IMAGES = {"cpu": 100_000, "cuda": 750_000}


def wants_compile(cfg: RunConfig, device: torch.device, world_size: int,
                  model: torch.nn.Module) -> bool:
    """Whether the run compiles its model (``train.compile``; not part of a run's
    identity: it changes rounding, not the computation)."""
    if cfg.train.compile != "auto":
        return bool(cfg.train.compile)
    images = cfg.train.steps * cfg.global_batch
    # A layer that runs eager under the compiler (MABN) would split the graph at every use.
    return (world_size == 1 and images >= COMPILE_MIN_IMAGES.get(device.type, math.inf)
            and all(getattr(m, "compiles", True) for m in model.modules()))


def apply_precision(cfg: RunConfig) -> torch.dtype:
    """Set TF32 on or off for this run (torch's flags are global: every run sets them)
    and return the dtype the model and batches take."""
    dtype, tf32 = PRECISIONS[cfg.train.precision]
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return dtype
