"""`make bench`, third table: what pinning the CPU kernels costs (train.cpu_isa=avx2 over
native, brn_repro.kernels): images/s of the runner's training step in the quick profile's
setting, for the reproduction's configurations; writes results/bench/isa.csv.

The kernels are fixed per process, so two worker processes (one pinned, one native) time
the same configuration one after the other, round after round; the ratio is taken within
a round and the median over rounds, so the machine's drift cancels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
# (norm, per-worker batch, compiled): the reproduction's runs are compiled; eager for comparison
CONFIGS = (("bn", 32, True), ("brn", 32, True), ("bn", 4, True), ("brn", 4, True), ("brn", 4, False))


def worker(cpu_isa: str) -> None:
    """Serve timing requests (one JSON line each) on the kernels ``cpu_isa`` names."""
    from brn_repro.kernels import pin

    pin(cpu_isa)
    import torch
    from bench_step import compose_config, runner_step

    torch.set_num_threads(1)
    steps = {}
    for line in sys.stdin:
        norm, per_worker, compiled, count = json.loads(line)
        key = (norm, per_worker, compiled)
        if key not in steps:
            config = compose_config(f"norm={norm}", f"data.per_worker_batch={per_worker}",
                                    f"data.workers={128 // per_worker}", "train.compile=true")
            steps[key] = runner_step(config, torch.channels_last, torch.device("cpu"), compiled)
            for _ in range(20):  # the first steps compile and warm the caches
                steps[key]()
        start = time.perf_counter()
        for _ in range(count):
            steps[key]()
        print(json.dumps(count * 128 / (time.perf_counter() - start)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/isa.csv")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per configuration and round")
    parser.add_argument("--worker", choices=("native", "avx2"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    from brn_repro.files import write_csv
    from brn_repro.kernels import unpinned_environ

    env = unpinned_environ()
    workers = {isa: subprocess.Popen([sys.executable, __file__, "--worker", isa], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
               for isa in ("native", "avx2")}
    speeds = {(c, isa): [] for c in CONFIGS for isa in workers}
    for _ in tqdm(range(args.rounds), desc="isa bench", unit="round"):
        for config in CONFIGS:
            for isa, proc in workers.items():  # the two back to back: drift cancels in their ratio
                proc.stdin.write(json.dumps([*config, args.steps]) + "\n")
                proc.stdin.flush()
                speeds[(config, isa)].append(float(proc.stdout.readline()))
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    rows = []
    for norm, per_worker, compiled in CONFIGS:
        native, pinned = (speeds[((norm, per_worker, compiled), isa)] for isa in ("native", "avx2"))
        rows.append({"norm": norm, "per_worker_batch": per_worker, "compiled": compiled,
                     "native_images_per_second": round(statistics.median(native), 1),
                     "avx2_images_per_second": round(statistics.median(pinned), 1),
                     "avx2_over_native": round(statistics.median(p / n for p, n in zip(pinned, native, strict=True)),
                                               3),
                     "rounds": args.rounds})
        print(rows[-1])
    write_csv(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
