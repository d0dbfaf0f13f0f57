"""Which CPU kernels a run's numbers come from, and pinning them (``train.cpu_isa``).

One config and seed give one set of numbers only on one set of kernels, and on a CPU
torch picks them from the machine: ATen's vectorized kernels and inductor's generated
C++ take the widest instruction set the CPU has (AVX-512 or AVX2), oneDNN's convolutions
theirs, and MKL's GEMM a code path by CPU vendor. Rounding differences then grow over
thousands of steps (results/kernels/spread.csv measures by how much).

``train.cpu_isa=avx2`` (the quick profile's) pins all four to what every x86-64-v3 CPU
(AVX2 + FMA: Intel since Haswell, AMD since Zen) runs the same way: ATen and inductor at
AVX2, inductor's C++ built for x86-64-v3 rather than ``-march=native``, oneDNN at AVX2,
and MKL on its COMPATIBLE branch (on AMD CPUs MKL ignores ``MKL_CBWR=AVX2``: the only
vendor-independent branch). Pinned so, a compiled and an eager run trained to the same bits
on this machine's AMD EPYC (AVX-512) and on an emulated Intel Haswell (``make
check-kernels``, results/kernels/emulated.csv); the norms take their square roots by
ATen's kernels, not ``Tensor.sqrt``, which torch hands to MKL's VML, whose last bit
depends on the CPU whatever the branch (``norm._grouped.sqrt``). Not covered: another
torch build or C++ compiler (the record names both), and GPUs.

The pin is environment variables read once, at each library's first use in a process,
so it must come before the process runs any torch op: ``pin`` checks that it took.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from brn_repro.schema import ConfigError

CPU_ISAS = ("native", "avx2")
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
PINNED_MARCH = "x86-64-v3"  # inductor's -march: AVX2 + FMA, whatever the CPU has beyond
# mkl_cbwr_get's branch codes (mkl_service.h)
MKL_BRANCHES = {0: "off", 1: "off", 2: "auto", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
                8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512", 14: "AVX512_E1"}


def pin(cpu_isa: str) -> None:
    """Make this process run the kernels ``cpu_isa`` names (``native``: leave them to the
    CPU). One ConfigError line when it cannot: a CPU without AVX2, or a process that ran
    torch kernels before (they are fixed at their first use)."""
    if cpu_isa not in CPU_ISAS:
        raise ConfigError(f"train.cpu_isa={cpu_isa!r} is not a kernel set; use one of {', '.join(CPU_ISAS)}")
    if cpu_isa == "native":
        return
    if platform.machine() not in ("x86_64", "AMD64") or not torch.cpu._is_avx2_supported():
        raise ConfigError(f"train.cpu_isa=avx2 needs an x86-64 CPU with AVX2; this is {cpu_model()} "
                          f"({platform.machine()}): use train.cpu_isa=native (its numbers differ from the "
                          "committed ones by about the spread in results/kernels/spread.csv)")
    os.environ.update(PINNED_ENV)
    inductor = inductor_config()
    inductor.cpp.march, inductor.cpp.simdlen = PINNED_MARCH, 256  # in the graph cache's key (below)
    if (running := torch.backends.cpu.get_cpu_capability()) != "AVX2":
        raise ConfigError(f"train.cpu_isa=avx2: this process already runs {running} kernels (torch ran "
                          "before the pin); start a new process, or set train.cpu_isa=native")


def unpinned_environ() -> dict[str, str]:
    """This process's environment without the pin: for a child that pins, or not, by itself."""
    return {k: v for k, v in os.environ.items() if k not in PINNED_ENV}


def inductor_config() -> Any:
    import torch._inductor.config

    return torch._inductor.config


def key_compiled_graphs_by_isa() -> None:
    """Before compiling: name the vector ISA in inductor's config, where its FX graph cache
    key sees it. torch 2.14 leaves the ISA out of the key (results/upstream/
    inductor_fx_cache_vec_isa.md): a graph cached by an AVX-512 process was rebuilt for
    AVX2 under ATEN_CPU_CAPABILITY=avx2 and trained to NaN at step 1."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    inductor_config().cpp.simdlen = pick_vec_isa().bit_width() or None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mkl_branch() -> str | None:
    """MKL's code path (``mkl_cbwr_get``), read from the library torch carries."""
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):  # a build without MKL (aarch64, macOS)
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return MKL_BRANCHES.get(get(1), str(get(1)))


@functools.cache
def compiler_version() -> str | None:
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        out = subprocess.run([get_cpp_compiler(), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.splitlines() or [None])[0]


def describe(compiled: bool) -> dict[str, Any]:
    """What decides the run's numbers beyond its config (kept in its summary)."""
    kernels = {"cpu": cpu_model(), "aten": torch.backends.cpu.get_cpu_capability(),
               "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"), "mkl": mkl_branch(),
               "threads": torch.get_num_threads(),
               "torch": f"{torch.__version__} ({(torch.version.git_version or '')[:10]})"}
    if compiled:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        kernels |= {"inductor": str(pick_vec_isa()), "march": inductor_config().cpp.march or "native",
                    "compiler": compiler_version()}
    return kernels


# The keys whose equality makes two runs of one config compute the same bits (the CPU
# model is not one of them: with the pin it must not matter).
DECIDING = ("aten", "onednn", "mkl", "threads", "torch", "inductor", "march", "compiler")


def same_kernels(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in DECIDING)
