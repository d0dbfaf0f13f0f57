"""`make check-kernels`: does a pinned run (train.cpu_isa=avx2) give the same bits on
another CPU? Trains one short BRN run of the quick profile on this CPU and under
`qemu-x86_64 -cpu Haswell` (an Intel CPU with AVX2 and no AVX-512: another vendor, other
cache sizes, another MKL code path), for each setting below, and compares the final
weights bit for bit and every metrics row. Writes results/kernels/emulated.csv.

    python scripts/check_kernels.py      # ~10 min; needs Debian's qemu-user (installed when root)

An emulator is a stand-in, not a second machine: instructions whose results the hardware
only approximates (rcpps, rsqrtps) are computed exactly by qemu, so a path through them
(MKL's VML, which eager runs' Tensor.sqrt takes) can differ here and on real CPUs alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from brn_repro.files import write_atomic
from brn_repro.kernels import unpinned_environ

ROOT = Path(__file__).resolve().parents[1]
EMULATED_CPU = "Haswell"
RUN = ["profile=quick", "norm=brn", "data.per_worker_batch=4", "data.workers=32", "train.steps=30",
       "train.eval_every=15", "norm.relax_start=5", "norm.d_max_end_step=15", "norm.r_max_end_step=20",
       "logger=none", "train.progress=false"]
# name -> overrides; "pinned, compiled" is what the quick profile's reproduction runs
SETTINGS = {"pinned, compiled": ["train.cpu_isa=avx2", "train.compile=true"],
            "pinned, eager": ["train.cpu_isa=avx2", "train.compile=false"],
            "native, eager": ["train.cpu_isa=native", "train.compile=false"]}
COMPARED = ("loss", "test_acc", "train_acc", "test_loss", "weight_norm")


def qemu() -> str:
    if found := shutil.which("qemu-x86_64"):
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-user"], capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if found := shutil.which("qemu-x86_64"):
        return found
    sys.exit("error: qemu-x86_64 not found; install Debian's qemu-user (apt-get install qemu-user) and rerun")


def train(overrides: list[str], runs: Path, emulator: list[str]) -> Path:
    """One run in a fresh process (on the emulated CPU when ``emulator``); its record."""
    env = unpinned_environ()  # the run pins its own
    env["TORCHINDUCTOR_CACHE_DIR"] = str(runs / "inductor")  # compiled here, for this run's CPU
    command = [*emulator, sys.executable, "-m", "brn_repro.train", *RUN, *overrides, f"paths.runs={runs}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if "TCG doesn't support" not in line]
        sys.exit(f"error: {' '.join(command[:3])} ... exited {done.returncode}: {' | '.join(said[-3:])}")
    (record,) = [p.parent for p in runs.glob("*/summary.json")]
    return record


def compare(here: Path, there: Path) -> dict:
    a = torch.load(here / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(there / "checkpoint.pt", weights_only=True)["model"]
    weights = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (here, there)]
    same_rows = all(r[k] == s[k] for r, s in zip(*rows, strict=True) for k in COMPARED)
    return {"max_weight_difference": weights, "identical": weights == 0 and same_rows,
            "compared": f"weights and {len(rows[0])} evaluations of {', '.join(COMPARED)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/kernels/emulated.csv")
    args = parser.parse_args()
    emulator = [qemu(), "-cpu", EMULATED_CPU]
    rows = []
    for setting, overrides in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            here = train(overrides, Path(tmp) / "here", [])
            there = train(overrides, Path(tmp) / "there", emulator)
            rows.append({"setting": setting, "cpu": f"emulated Intel {EMULATED_CPU} (qemu)",
                         "steps": 30, **compare(here, there)})
            print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
