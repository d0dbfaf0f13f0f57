"""The report's "Numbers across machines" (brn_repro.analysis.machines) from hand-made records."""

import pandas as pd

from brn_repro.analysis.machines import kernels_text, machines_section, spread_lines

PINNED = {"kernels.cpu": "AMD EPYC", "kernels.aten": "AVX2", "kernels.onednn": "AVX2", "kernels.mkl": "COMPATIBLE",
          "kernels.inductor": "avx2", "kernels.march": "x86-64-v3", "kernels.compiler": "g++ 12.2.0",
          "kernels.torch": "2.14.1", "kernels.threads": 1, "kernels_mixed": False}


def runs_frame():
    rows = []
    for seed, acc in enumerate([88.0, 88.4, 87.6]):
        rows.append({"experiment": "fig1_baseline", "norm.name": "bn", "data.per_worker_batch": 32,
                     "sampler.name": "iid", "seed": seed, "status": "completed", "test_acc": acc,
                     "run_dir": f"/x/runs/bn-pwb32x4-iid-s{seed}-abc", **PINNED})
    rows.append({**rows[0], "experiment": "fig2_small_batch", "run_dir": "/x/runs/other",
                 "kernels.aten": "AVX512", "kernels.mkl": "auto", "kernels_mixed": True})
    return pd.DataFrame(rows)


def test_the_kernels_are_counted_by_set_and_a_mixed_resume_is_said():
    text = kernels_text(runs_frame())
    assert "3 runs on AMD EPYC: ATen AVX2, oneDNN AVX2, MKL COMPATIBLE, inductor avx2 -march=x86-64-v3" in text
    assert "1 runs on AMD EPYC: ATen AVX512, oneDNN AVX2, MKL auto" in text
    assert "1 runs resumed on other kernels (kernels_mixed)" in text
    eager = runs_frame().assign(**{"kernels.inductor": None, "kernels.march": None, "kernels.compiler": None})
    assert "MKL COMPATIBLE, eager, torch 2.14.1" in kernels_text(eager) and "nan" not in kernels_text(eager)


def test_the_spread_is_the_largest_change_from_the_pinned_run_beside_the_seed_sd(tmp_path):
    (tmp_path / "kernels").mkdir()
    run = "bn-pwb32x4-iid-s0-abc"
    kernels = {"kernels.aten": "AVX2", "kernels.onednn": "AVX2", "kernels.mkl": "COMPATIBLE", "kernels.inductor": None}
    pd.DataFrame([{"run": run, "setting": "pinned", "status": "completed", "test_acc": 88.0, **kernels},
                  {"run": run, "setting": "native", "status": "completed", "test_acc": 88.3, **kernels},
                  {"run": run, "setting": "eager", "status": "completed", "test_acc": 87.5, **kernels}]
                 ).to_csv(tmp_path / "kernels" / "spread.csv", index=False)
    lines = spread_lines(tmp_path, runs_frame())
    # the sd over seeds 0-2 of bn at per-worker 32: 88.0, 88.4, 87.6
    sd = pd.Series([88.0, 88.4, 87.6]).std()
    assert f"| {run} | 88.00 | 87.50 | 88.30 | 0.50 | {sd:.2f} |" in lines
    assert "Largest difference over the runs: 0.50 points (median 0.40)." in lines[-1]
    section = machines_section(runs_frame(), tmp_path)
    assert section[0] == "## Numbers across machines" and any("`native`: ATen AVX2" in line for line in section)
