"""Which CPU kernels compute a run (brn_repro.kernels): the pin, the record, and the
inductor cache key that once trained to NaN at step 1 under ATEN_CPU_CAPABILITY=avx2."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train import make_config

from brn_repro import kernels
from brn_repro.config import ConfigError
from brn_repro.records import RunRecord
from brn_repro.train import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, with the session's pinned kernels taken out of its
    environment (``env`` puts back what a case wants)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, env=kernels.unpinned_environ() | env, timeout=600)


COMPILE_AND_COMPARE = """
    import torch
    from brn_repro.train import compile_model
    torch.manual_seed(0)
    x = torch.randn(64, 37)
    def f(x):  # reductions and pointwise ops: what a norm layer's compiled forward holds
        return (x - x.mean(0)).square().mean(0).sqrt() * 2 + x.sum(0)
    print((compile_model(f)(x) - f(x)).abs().max().item())
"""


@pytest.mark.skipif(not torch.cpu._is_avx512_supported(), reason="needs a CPU with two vector ISAs (AVX-512, AVX2)")
def test_a_graph_compiled_at_another_isa_is_not_reused_from_the_cache(tmp_path):
    """torch 2.14 keys inductor's FX graph cache without the vector ISA: a graph compiled
    at AVX-512 was served under ATEN_CPU_CAPABILITY=avx2, its kernels rebuilt for AVX2
    (errors of 1e28, and a double free the other way round). compile_model keys it."""
    cache = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    errors = [float(python(COMPILE_AND_COMPARE, **cache, **isa).stdout.split()[-1])
              for isa in ({}, {"ATEN_CPU_CAPABILITY": "avx2"}, {})]
    assert max(errors) < 1e-4, errors


def test_pinning_after_torch_ran_is_one_line():
    out = python("""
        import torch
        torch.ones(3).add_(1)  # fixes this process's kernels at the CPU's widest
        from brn_repro.kernels import pin
        pin("avx2")
    """)
    if torch.cpu._is_avx512_supported():  # elsewhere the widest is AVX2 itself
        assert "train.cpu_isa=avx2: this process already runs AVX512 kernels" in out.stderr
        assert "start a new process, or set train.cpu_isa=native" in out.stderr


def test_pinning_needs_avx2(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: False)
    with pytest.raises(ConfigError, match="train.cpu_isa=avx2 needs an x86-64 CPU with AVX2"):
        kernels.pin("avx2")
    with pytest.raises(ConfigError, match="train.cpu_isa='avx512' is not a kernel set"):
        kernels.pin("avx512")


def test_a_pinned_run_records_the_kernels_it_ran_on(tmp_path, tiny_fashion_mnist):
    config = make_config(tmp_path, tiny_fashion_mnist, "train.cpu_isa=avx2", "train.steps=20")
    summary = run(config)
    assert summary["kernels"] | {"cpu": None, "torch": None} == {
        "cpu": None, "aten": "AVX2", "onednn": "AVX2", "mkl": "COMPATIBLE", "threads": torch.get_num_threads(),
        "torch": None}
    assert summary["kernels"]["torch"].startswith(torch.__version__) and not summary["kernels_mixed"]


def test_a_resume_on_other_kernels_is_said_and_recorded(tmp_path, tiny_fashion_mnist, capsys):
    config = make_config(tmp_path, tiny_fashion_mnist, "train.stop_at_step=20")
    run(config)
    record = RunRecord(tmp_path, config)
    state = torch.load(record.checkpoint_path, weights_only=True)
    state["kernels"] = state["kernels"] | {"aten": "AVX512", "mkl": "auto"}  # trained elsewhere
    torch.save(state, record.checkpoint_path)
    summary = run(make_config(tmp_path, tiny_fashion_mnist))
    assert summary["kernels_mixed"] and json.loads(record.summary_path.read_text())["kernels_mixed"]
    assert ("note: resuming on other kernels than the steps before (aten AVX512 -> AVX2, mkl auto -> "
            "COMPATIBLE)") in capsys.readouterr().err
