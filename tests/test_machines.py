"""The report's "Numbers across machines" (brn_repro.machines) from hand-made records."""

import pandas as pd

from brn_repro.machines import kernels_text, machines_section, spread_text

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


def test_the_spread_is_the_largest_change_from_the_pinned_run_beside_the_seed_sd(tmp_path):
    (tmp_path / "kernels").mkdir()
    run = "bn-pwb32x4-iid-s0-abc"
    pd.DataFrame([{"run": run, "setting": "pinned", "status": "completed", "test_acc": 88.0},
                  {"run": run, "setting": "native", "status": "completed", "test_acc": 88.3},
                  {"run": run, "setting": "eager", "status": "completed", "test_acc": 87.5}]
                 ).to_csv(tmp_path / "kernels" / "spread.csv", index=False)
    text = spread_text(tmp_path, runs_frame())
    assert "differs from the pinned run's by up to 0.50 points (median 0.40" in text
    assert "eager 0.50, native 0.30" in text
    # the sd over seeds 0-2 of bn at per-worker 32: 88.0, 88.4, 87.6
    assert f"seed-to-seed sd of the same conditions is {pd.Series([88.0, 88.4, 87.6]).std():.2f}" in text
    section = machines_section(runs_frame(), tmp_path)
    assert section[0] == "## Numbers across machines" and any("kernels/spread.csv" in line for line in section)
