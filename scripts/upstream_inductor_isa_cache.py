"""Reproduce, for an upstream report, torch inductor serving a cached graph built for
another vector ISA: FxGraphHashDetails keys CPU graphs by thread count but not by the
vector ISA, which ATEN_CPU_CAPABILITY picks (cpu_vec_isa.pick_vec_isa). Writes the
report with this machine's output to results/upstream/inductor_fx_cache_vec_isa.md.

    python scripts/upstream_inductor_isa_cache.py

Each case is a fresh process on one fresh cache directory, in order.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from brn_repro.files import write_atomic

REPRO = '''\
import os, torch
from torch._inductor.cpu_vec_isa import pick_vec_isa
torch.manual_seed(0)
x = torch.randn(64, 37)
def f(x):
    return (x - x.mean(0)).square().mean(0).sqrt() * 2 + x.sum(0)
err = (torch.compile(f, dynamic=False)(x) - f(x)).abs().max().item()
print(f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')} isa={pick_vec_isa()} "
      f"max|compiled - eager| = {err:.3g}")
'''
CASES = (("cache filled at the CPU's widest ISA, then read at avx2", (None, "avx2")),
         ("cache filled at avx2, then read at the CPU's widest ISA", ("avx2", None)))


def run_case(order: tuple[str | None, ...]) -> list[str]:
    """The repro in one fresh process per entry of ``order``, sharing one fresh cache."""
    lines = []
    with tempfile.TemporaryDirectory() as cache:
        for capability in order:
            env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
            env["TORCHINDUCTOR_CACHE_DIR"] = cache
            if capability:
                env["ATEN_CPU_CAPABILITY"] = capability
            out = subprocess.run([sys.executable, "-c", REPRO], env=env, capture_output=True, text=True)
            said = [line for line in (out.stdout + out.stderr).splitlines()
                    if "CUDA runtime" not in line and line.strip()]
            lines.append(f"$ {'ATEN_CPU_CAPABILITY=' + capability + ' ' if capability else ''}python repro.py"
                         f"   # exit {out.returncode}")
            lines += said[-1:] if out.returncode == 0 else said[-3:]
    return lines


def report(outputs: dict[str, list[str]]) -> str:
    from brn_repro.kernels import cpu_model

    blocks = "\n\n".join(f"{title}:\n\n```console\n" + "\n".join(lines) + "\n```"
                         for title, lines in outputs.items())
    return f"""# [inductor] FX graph cache ignores the vector ISA (ATEN_CPU_CAPABILITY): wrong results, heap corruption

torch {torch.__version__} ({torch.version.git_version}), {cpu_model()}, Linux x86_64, gcc.
Found by brn-repro (a compiled BatchRenorm model trained to NaN at step 1 under
`ATEN_CPU_CAPABILITY=avx2` after an earlier run had compiled it without the variable).

## What happens
`cpu_vec_isa.pick_vec_isa()` takes the vector ISA from `ATEN_CPU_CAPABILITY` when
`config.cpp.simdlen` is None, and the generated C++ is written for that ISA's vector width.
`FxGraphHashDetails` keys CPU graphs by `parallel_num_threads()` but not by the ISA, so a
process with another `ATEN_CPU_CAPABILITY` is served the cached graph, whose kernel source is
rebuilt with its own ISA's flags: AVX-512 source (16 lanes) compiled for AVX2 (8 lanes)
computes garbage; AVX2 source compiled for AVX-512 corrupts the heap. The same happens
to a cache shared between machines of different ISAs (a network home, a remote cache).

## Reproduce (`repro.py`)

```python
{REPRO}```

{blocks}

## Expected
The same small error (~1e-6) in every process.

## Suggested fix
In `FxGraphHashDetails.__init__`, beside `cpp_runtime_thread_count`, key graphs that may
generate CPU C++ by the ISA: `self.cpp_vec_isa = str(pick_vec_isa())` (and the `-march`
the build will use). Workaround (brn-repro's): set `torch._inductor.config.cpp.simdlen` to
`pick_vec_isa().bit_width()` before compiling; the config is part of the key.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/upstream/inductor_fx_cache_vec_isa.md")
    args = parser.parse_args()
    if not torch.cpu._is_avx512_supported():
        sys.exit("error: this needs a CPU with AVX-512 (two vector ISAs to switch between); run it on one")
    outputs = {title: run_case(order) for title, order in CASES}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, report(outputs))
    print("\n".join(line for lines in outputs.values() for line in lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
