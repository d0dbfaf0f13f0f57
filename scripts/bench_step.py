"""`make bench`, second table: images/s of the runner's own training step (a batch
from the sampler, to the device and layout, forward, backward, the divergence flag,
SGD and the lr schedule) for each norm and split, NCHW and channels-last, eager and
compiled (``train.compile``), beside a bare NCHW loop of the same model with torch's
BatchNorm2d and the no-norm model; writes results/bench/step.csv. The first step of
each configuration is timed apart (``first_step_seconds``: a compiled one compiles).

Configurations are timed round-robin (a few steps of each per round), and ratios
are taken within a round, then the median over rounds: a shared machine's drift
between rounds cancels. One thread, as `make reproduce` runs each job.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from brn_repro import distributed  # noqa: E402
from brn_repro.config import norm_factory  # noqa: E402
from brn_repro.data import TrainingData  # noqa: E402
from brn_repro.files import write_csv  # noqa: E402
from brn_repro.loop import FirstNonFinite  # noqa: E402
from brn_repro.models import build_model  # noqa: E402
from brn_repro.norm import NORM_NAMES, build_norm, norm_spec  # noqa: E402
from brn_repro.optim import build_lr_schedule, build_optimizer  # noqa: E402
from brn_repro.performance import apply_precision  # noqa: E402
from brn_repro.schema import RunConfig  # noqa: E402
from brn_repro.train import DIVERGENCE_SYNC_EVERY, compile_model, forward_backward, place  # noqa: E402

BATCH_NORMS = tuple(name for name in NORM_NAMES if norm_spec(name).per_worker)
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# Targets of issue 10 (ratios within one run).
TARGETS = {"runner bn / bare loop": (">=", 1.35), "brn / bn at pwb 4": ("<=", 1.10),
           "none / bn": ("<=", 1.15)}


def compose_config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["profile=quick", "logger=none", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def runner_step(config: dict, layout: torch.memory_format, device: torch.device,
                compiled: bool) -> Callable[[], None]:
    """The runner's training step for ``config``, as `brn_repro.train.train_run` takes it."""
    data = TrainingData(RunConfig.parse(config))
    torch.manual_seed(0)
    model = build_model(config["model"]["name"], num_classes=data.num_classes, in_channels=data.in_channels,
                        image_size=data.image_size, norm_layer=norm_factory(RunConfig.parse(config)),
                        width=config["model"]["width"])
    dtype = apply_precision(RunConfig.parse(config))
    model.to(device, dtype, memory_format=layout).train()
    optimizer = build_optimizer(RunConfig.parse(config), model.parameters())
    scheduler = build_lr_schedule(RunConfig.parse(config), optimizer)
    moving_statistics = distributed.MovingStatistics(model, distributed.SINGLE_PROCESS)
    net = compile_model(model) if compiled else model
    # as the runner: the divergence flag read every step on a CPU, every 50 on a GPU
    divergence = FirstNonFinite(DIVERGENCE_SYNC_EVERY.get(device.type, 50), device)
    counter = [0]

    def step() -> None:
        counter[0] += 1
        x, y = place(data.train_batch(), device, dtype, layout)
        divergence.check(forward_backward(net, x, y, optimizer, moving_statistics), counter[0])
        optimizer.step()
        scheduler.step()

    return step


def bare_step(config: dict, norm: str | None, device: torch.device, compiled: bool) -> Callable[[], None]:
    """A bare NCHW loop of the same model: one fixed batch, torch's BatchNorm2d
    (``norm="bn"``) or no norm, SGD; eager, the reference the runner is measured against."""
    torch.manual_seed(0)
    factory = build_norm("bn" if norm == "bn" else "none")
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28, norm_layer=factory,
                        width=config["model"]["width"]).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batch = config["data"]["per_worker_batch"] * config["data"]["workers"]
    x, y = torch.randn(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)
    net = compile_model(model) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    return step


def configurations(global_batch: int, width: int, device: torch.device, modes: tuple[str, ...],
                   layouts: tuple[str, ...], norms: tuple[str, ...], splits: tuple[int, ...]
                   ) -> dict[tuple, Callable[[], None]]:
    """(step, norm, per-worker batch, layout, mode) -> step. MABN is eager only: it
    runs eager inside a compiled model (``MABN2d.compiles``)."""
    base = [f"recipe.global_batch={global_batch}", f"model.width={width}"]
    steps: dict[tuple, Callable[[], None]] = {}
    splits = sorted({min(global_batch, b) for b in splits}, reverse=True)
    for mode in modes:
        compiled = mode == "compiled"
        for layout_name in layouts:
            layout = LAYOUTS[layout_name]
            for norm in norms:
                if compiled and norm == "mabn":
                    continue
                for pwb in splits if norm in BATCH_NORMS else splits[:1]:
                    config = compose_config(*base, f"norm={norm}", f"data.per_worker_batch={pwb}",
                                            f"data.workers={global_batch // pwb}", "train.steps=100000")
                    steps[("runner", norm, pwb, layout_name, mode)] = runner_step(config, layout, device, compiled)
        config = compose_config(*base, f"data.per_worker_batch={global_batch}", "data.workers=1")
        steps[("bare", "bn", global_batch, "nchw", mode)] = bare_step(config, "bn", device, compiled)
        steps[("bare", "none", global_batch, "nchw", mode)] = bare_step(config, None, device, compiled)
    return steps


def measure(steps: dict[tuple, Callable[[], None]], rounds: int, repeats: int,
            device: torch.device) -> tuple[dict[tuple, list[float]], dict[tuple, float]]:
    """Seconds per step of each configuration in each round, and its first step's."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first: dict[tuple, float] = {}
    for key, step in tqdm(steps.items(), desc="first steps (compiling)", unit="config"):
        sync()
        start = time.perf_counter()
        step()
        sync()
        first[key] = time.perf_counter() - start
        step()  # warm-up: allocator, second-call costs
    seconds: dict[tuple, list[float]] = {key: [] for key in steps}
    gc.collect()
    gc.disable()
    for _ in tqdm(range(rounds), desc="step bench rounds", unit="round"):
        for key, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            sync()
            seconds[key].append((time.perf_counter() - start) / repeats)
    gc.enable()
    return seconds, first


def rows_for(name: str, global_batch: int, seconds: dict[tuple, list[float]],
             first: dict[tuple, float]) -> list[dict]:
    """``ratio_vs_bare_bn``: throughput over the bare eager NCHW BatchNorm2d loop's;
    ``ratio_time_vs_bn``: step time over the runner's bn at the same split, layout, mode."""
    bare = seconds[("bare", "bn", global_batch, "nchw", "eager")]
    rows = []
    for key, times in seconds.items():
        kind, norm, pwb, layout, mode = key
        same_bn = seconds.get(("runner", "bn", pwb, layout, mode))
        rows.append({
            "setting": name, "step": kind, "norm": norm, "global_batch": global_batch, "per_worker_batch": pwb,
            "layout": layout, "mode": mode, "first_step_seconds": round(first[key], 2),
            "images_per_second": round(global_batch / statistics.median(times), 1),
            "ratio_vs_bare_bn": round(statistics.median([b / t for t, b in zip(times, bare, strict=True)]), 3),
            "ratio_time_vs_bn": "" if kind == "bare" or same_bn is None else
            round(statistics.median([t / b for t, b in zip(times, same_bn, strict=True)]), 3),
        })
    return rows


def targets(rows: list[dict]) -> list[str]:
    """Issue 10's three targets, read off the global-128 rows of each layout and mode
    (the runner always against the bare *eager* NCHW loop)."""
    lines = []
    modes = sorted({r["mode"] for r in rows}, reverse=True)
    for mode in modes:
        for layout in LAYOUTS:
            pick = {(r["norm"], r["per_worker_batch"]): r for r in rows
                    if r["setting"] == "global 128" and r["step"] == "runner" and r["layout"] == layout
                    and r["mode"] == mode}
            values = {}
            if ("bn", 32) in pick:
                values["runner bn / bare loop"] = pick[("bn", 32)]["ratio_vs_bare_bn"]
            if ("brn", 4) in pick:
                values["brn / bn at pwb 4"] = pick[("brn", 4)]["ratio_time_vs_bn"]
            if ("none", 32) in pick:
                values["none / bn"] = round(1 / pick[("none", 32)]["ratio_time_vs_bn"], 3)
            for name, value in values.items():
                sign, target = TARGETS[name]
                met = value >= target if sign == ">=" else value <= target
                lines.append(f"{mode:<9}{layout:<14}{name:<24}{value:>7}  {sign} {target}  "
                             f"{'met' if met else 'MISSED'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/step.csv")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="cpu (one thread, as make reproduce) or cuda")
    parser.add_argument("--modes", default="eager,compiled", help="eager, compiled, or both (comma-separated)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="nchw, channels_last, or both")
    parser.add_argument("--norms", default=",".join((*BATCH_NORMS, "gn", "none")),
                        help="the runner's norms (bn must be one: the ratios are to it)")
    parser.add_argument("--splits", default="32,4,1", help="per-worker batches of the batch-statistics norms")
    parser.add_argument("--settings", default="global 128,quick profile", help="global 128, quick profile, or both")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes, layouts, norms = (tuple(a.split(",")) for a in (args.modes, args.layouts, args.norms))
    splits = tuple(int(b) for b in args.splits.split(","))
    settings = [s for s in (("global 128", 128, 2), ("quick profile", 32, 8)) if s[0] in args.settings.split(",")]
    torch.set_num_threads(1)
    # Every configuration compiles its own model from the same code objects: let the
    # compiler keep them all rather than fall back to eager after 8.
    torch._dynamo.config.cache_size_limit = torch._dynamo.config.accumulated_cache_size_limit = 1024
    rows = []
    # global 128 at the quick profile's width; then the quick profile itself (global 32)
    for name, global_batch, repeats in settings:
        steps = configurations(global_batch, 16, device, modes, layouts, norms, splits)
        seconds, first = measure(steps, args.rounds, repeats, device)
        rows += rows_for(name, global_batch, seconds, first)
    out = Path(args.out)
    write_csv(out, rows)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU, 1 thread"
    print(f"torch {torch.__version__}, {where}; wrote {out}")
    print(f"{'setting':<14}{'step':<7}{'norm':<16}{'pwb':>4} {'layout':<14}{'mode':<9}{'first s':>8}"
          f"{'img/s':>9}{'vs bare bn':>11}{'time vs bn':>11}")
    for r in rows:
        print(f"{r['setting']:<14}{r['step']:<7}{r['norm']:<16}{r['per_worker_batch']:>4} {r['layout']:<14}"
              f"{r['mode']:<9}{r['first_step_seconds']:>8}{r['images_per_second']:>9}{r['ratio_vs_bare_bn']:>11}"
              f"{r['ratio_time_vs_bn']!s:>11}")
    print("targets (global 128; 'none / bn' is throughput, the others as named):")
    print("\n".join(targets(rows)))


if __name__ == "__main__":
    main()
