"""Benchmark one training step (forward, backward, SGD) of a CIFAR ResNet-20 on
32x32x3 input for every normalization, and write results/bench/norm.csv.

Ratios are taken within one process against torch's BatchNorm2d at the same
batch with no groups, in the same precision. Configurations are timed round-robin
(one step of each per round) so that drift of a shared machine hits all of them
alike; the median over rounds is reported. Rows with ``precision=bf16`` run the
forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the norms keep
float32 statistics, as torch's BatchNorm2d): BRN's and per-worker BN's cost under
mixed precision, against torch's BatchNorm2d under the same autocast.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from brn_repro.files import write_csv
from brn_repro.models import ResNetCifar
from brn_repro.norm import NORM_NAMES, build_norm, norm_spec, swap_conv

NORMS = NORM_NAMES
# The targets of the issue that asked for this benchmark (ratio to BN, same batch).
TARGETS = {("brn", 128, 128): 1.05, ("brn", 4, 4): 1.15, ("bn", 128, 4): 1.15, ("brn", 128, 4): 1.15}


PRECISIONS = ("float32", "bf16")


def configurations(norms: tuple[str, ...] = NORMS) -> list[tuple[str, int, int, str]]:
    norms = tuple(n for n in NORMS if n in norms or n == "bn")  # bn: every ratio's base
    configs = [(norm, batch, batch, "float32") for batch in (128, 4) for norm in norms]
    configs += [(n, 128, 4, "float32") for n in ("bn", "brn") if n in norms]
    # mixed precision: BRN and per-worker BN against torch's BN under the same autocast
    configs += [(n, b, pwb, "bf16") for b, pwb in ((128, 128), (4, 4), (128, 4))
                for n in ("bn", "brn") if n in norms and (n, b, pwb) != ("bn", 128, 4)]
    configs += [("bn", 128, 4, "bf16")] if "brn" in norms else []
    return configs


def make_step(norm: str, batch: int, per_worker_batch: int, precision: str = "float32", seed: int = 0):
    torch.manual_seed(seed)
    options = {"per_worker_batch": per_worker_batch} if norm_spec(norm).per_worker else {}
    if norm == "mabn":
        options.update(warmup_iters=0, r_warmup=0)  # timed in its steady state: SMAs and r
    if norm == "brn":
        options.update(r_max=3.0, d_max=5.0)  # the paper's final limits: clipping active
    if per_worker_batch == batch:
        options.pop("per_worker_batch", None)
    factory = build_norm(norm, **options)
    # with the convolutions the norm pairs with (MABN: centred, GN+WS: standardized)
    model = swap_conv(ResNetCifar(20, 10, 3, norm_layer=factory), getattr(factory, "conv", None)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def mixed_step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss_fn(out.float(), y).backward()
        opt.step()

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {PRECISIONS}")
    return step if precision == "float32" else mixed_step


def run(rounds: int, warmup: int, norms: tuple[str, ...] = NORMS) -> list[dict]:
    configs = configurations(norms)
    steps = {c: make_step(*c) for c in configs}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    gc.collect()
    gc.disable()  # a collection landing inside one timing would only add noise
    for _ in tqdm(range(rounds), desc="bench rounds", unit="round"):
        for c in configs:
            # Small batches are timed over several steps so timer noise stays negligible.
            repeats = 1 if c[1] >= 64 else 20
            start = time.perf_counter()
            for _ in range(repeats):
                steps[c]()
            times[c].append((time.perf_counter() - start) / repeats * 1e3)
    gc.enable()
    medians = {c: statistics.median(t) for c, t in times.items()}
    rows = []
    for norm, batch, pwb, precision in configs:
        # The ratio is taken within each round (BN timed moments before), then the median
        # over rounds: drift of a shared machine's speed between rounds cancels out.
        base = times[("bn", batch, batch, precision)]
        ratios = [t / b for t, b in zip(times[(norm, batch, pwb, precision)], base, strict=True)]
        rows.append(
            {
                "norm": norm,
                "batch": batch,
                "per_worker_batch": pwb,
                "ms_median": round(medians[(norm, batch, pwb, precision)], 3),
                "ratio_vs_bn": round(statistics.median(ratios), 3),
                "precision": precision,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/norm.csv")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--norms", default=",".join(NORMS),
                        help="comma-separated norms to time (bn always: the base of every ratio)")
    args = parser.parse_args()
    norms = tuple(args.norms.split(","))
    unknown = sorted(set(norms) - set(NORMS))
    if unknown:
        parser.error(f"--norms: {', '.join(unknown)} not in {', '.join(NORMS)}")
    rows = run(args.rounds, args.warmup, norms)
    out = Path(args.out)
    write_csv(out, rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; wrote {out}")
    print(f"{'norm':<16}{'batch':>6}{'pwb':>6}{'precision':>10}{'ms_median':>11}{'ratio_vs_bn':>13}  target")
    for r in rows:
        target = TARGETS.get((r["norm"], r["batch"], r["per_worker_batch"])) if r["precision"] == "float32" else None
        verdict = "" if target is None else (
            f"<= {target}  {'met' if r['ratio_vs_bn'] <= target else 'MISSED'}"
        )
        print(
            f"{r['norm']:<16}{r['batch']:>6}{r['per_worker_batch']:>6}{r['precision']:>10}{r['ms_median']:>11.3f}"
            f"{r['ratio_vs_bn']:>13.3f}  {verdict}"
        )


if __name__ == "__main__":
    main()
