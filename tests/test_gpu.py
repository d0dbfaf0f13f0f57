"""The GPU path (skipped without CUDA; `make gpu-check` runs these on a GPU machine):
every batch-statistics norm on CUDA against its CPU result, float64 training on CUDA
against the CPU's, and syncbn in one GPU process against BatchNorm2d."""

import copy
import json
from pathlib import Path

import pytest
import torch

from brn_repro.norm import build_norm
from brn_repro.numerics import layer_step, per_worker_step, relative_errors

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
OPTIONS = {"bn": {"momentum": 0.3}, "brn": {"momentum": 0.3, "r_max": 1.5, "d_max": 0.5},
           "moving_average": {"momentum": 0.3}, "mabn": {"warmup_iters": 0, "r_warmup": 0, "buffer_size": 2}}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("norm", list(OPTIONS))
def test_norms_on_cuda_match_their_cpu_results(norm, layout):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 8, 6, 6, generator=generator) * 2 + 1).contiguous(memory_format=layout)
    upstream = torch.randn(16, 8, 6, 6, generator=generator).contiguous(memory_format=layout)
    layer = build_norm(norm, per_worker_batch=4, **OPTIONS[norm])(8)
    layer(x.clone())  # one step first: the moving statistics away from their init
    for step in (layer_step, lambda *a: per_worker_step(*a, workers=4)):
        want = step(copy.deepcopy(layer), x, upstream)
        got = step(copy.deepcopy(layer).to(CUDA), x.to(CUDA), upstream.to(CUDA))
        for key, error in relative_errors(got, want).items():
            assert error < 2e-5, (norm, key, error)


@pytest.mark.parametrize("norm", ["bn", "brn"])
def test_training_on_cuda_equals_the_cpu_in_float64(tmp_path, tiny_fashion_mnist, norm):
    from test_train import make_config

    from brn_repro.train import run

    rows = {}
    for device in ("cpu", "cuda"):
        summary = run(make_config(tmp_path / device, tiny_fashion_mnist, f"norm={norm}", "train.steps=20",
                                  "train.precision=float64", f"train.device={device}"))
        assert summary["device"] == device
        rows[device] = json.loads((Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(rows["cuda"]["loss"] / rows["cpu"]["loss"] - 1) < 1e-9
    assert rows["cuda"]["test_acc"] == rows["cpu"]["test_acc"]


def test_syncbn_in_one_gpu_process_is_batchnorm():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 5, 5, generator=generator) * 3 + 1
    upstream = torch.randn(8, 3, 5, 5, generator=generator)
    layer = build_norm("syncbn", momentum=0.5)(3).to(CUDA)
    reference = torch.nn.BatchNorm2d(3, momentum=0.5)
    got, want = layer_step(layer, x.to(CUDA), upstream.to(CUDA)), layer_step(reference, x, upstream)
    for key, error in relative_errors(got, want).items():
        assert error < 1e-5, (key, error)


def test_compiled_training_on_cuda_equals_eager_in_float64(tmp_path, tiny_fashion_mnist):
    """train.compile=true on the GPU: BRN relaxing within the run, the plain-ops
    formulation compiled against the fused kernels eager."""
    from test_train import make_config

    from brn_repro.train import run

    losses = {}
    for choice in ("false", "true"):
        summary = run(make_config(tmp_path / choice, tiny_fashion_mnist, "norm=brn", "data.per_worker_batch=4",
                                  "data.workers=8", "norm.relax_start=2", "norm.r_max_end_step=8",
                                  "norm.d_max_end_step=8", "train.steps=12", "train.eval_every=6",
                                  "train.precision=float64", "train.device=cuda", f"train.compile={choice}"))
        assert summary["compiled"] == (choice == "true") and summary["device"] == "cuda"
        losses[choice] = [json.loads(line)["loss"]
                          for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-9)
