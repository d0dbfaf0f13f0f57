"""Real multi-process training (gloo, 2 CPU processes) against one process with the
same number of virtual workers: the same parameters and moving statistics."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from brn_repro import distributed
from brn_repro.config import ConfigError
from brn_repro.models.small_cnn import SmallCNN
from brn_repro.norm import build_norm
from brn_repro.records import RunRecord
from brn_repro.train import run

ROOT = Path(__file__).resolve().parents[1]
WORKERS, PER_WORKER, STEPS = 4, 3, 5  # 2 virtual workers per process when there are 2
NORMS = {
    "bn": {"per_worker_batch": PER_WORKER, "momentum": 0.3},
    # clipping from the first step: r and d really differ from 1 and 0
    "brn": {"per_worker_batch": PER_WORKER, "momentum": 0.3, "r_max": 1.05, "d_max": 0.05},
    "moving_average": {"per_worker_batch": PER_WORKER, "momentum": 0.3},
    "syncbn": {"momentum": 0.3},
}


def _batches():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(STEPS, WORKERS * PER_WORKER, 1, 8, 8, generator=generator) * 2 + 0.5
    y = torch.randint(0, 10, (STEPS, WORKERS * PER_WORKER), generator=generator)
    return x, y


def _train(name: str, ctx: distributed.Context) -> dict[str, torch.Tensor]:
    """STEPS of SGD on fixed global batches; this process takes its slice."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_channels=1, width=4, norm_layer=build_norm(name, **NORMS[name]))
    net = distributed.wrap(model, ctx, distributed.CPU)
    average = distributed.StatisticsAverager(model, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    local = distributed.local_slice(WORKERS * PER_WORKER, ctx)
    for x, y in zip(*_batches(), strict=True):
        loss = F.cross_entropy(net(x[local]), y[local])
        average(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _syncbn_forward_backward(ctx: distributed.Context):
    """The syncbn layer alone on this process's half of one batch."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 5, 5, generator=generator) * 3 + 1
    upstream = torch.randn(8, 3, 5, 5, generator=generator)
    layer = build_norm("syncbn", momentum=0.5)(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    local = distributed.local_slice(8, ctx)
    part = x[local].clone().requires_grad_()
    out = layer(part)
    (out * upstream[local]).sum().backward()
    return {"out": out.detach(), "grad_x": part.grad, "grad_w": layer.weight.grad,
            "grad_b": layer.bias.grad, "running_mean": layer.running_mean,
            "running_var": layer.running_var}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx, _ = distributed.init("cpu")
    results = {name: _train(name, ctx) for name in NORMS}
    results["syncbn_layer"] = _syncbn_forward_backward(ctx)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", ["bn", "brn", "moving_average"])
def test_two_processes_equal_one_process_with_virtual_workers(two_process_results, name):
    expected = _train(name, distributed.SINGLE_PROCESS)
    for rank, results in enumerate(two_process_results):
        got = results[name]
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.allclose(got[key].double(), expected[key].double(), rtol=1e-4, atol=1e-5), \
                (rank, key, (got[key].double() - expected[key].double()).abs().max())
    # the run really moved: the statistics are far from their initial values
    assert expected["features.1.running_mean"].abs().max() > 0.05


def test_statistics_would_differ_without_averaging(two_process_results):
    """The check above can fail: each process's own groups give other moving statistics."""
    x, _ = _batches()
    layer = build_norm("brn", **NORMS["brn"])(1)
    layer(x[0][: len(x[0]) // 2])
    alone = layer.running_mean.clone()
    layer = build_norm("brn", **NORMS["brn"])(1)
    layer(x[0])
    assert not torch.allclose(alone, layer.running_mean, atol=1e-4)


def test_syncbn_over_two_processes_equals_batchnorm_over_the_combined_batch(two_process_results):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 5, 5, generator=generator) * 3 + 1
    upstream = torch.randn(8, 3, 5, 5, generator=generator)
    reference = torch.nn.BatchNorm2d(3, momentum=0.5)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        reference.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    whole = x.clone().requires_grad_()
    out = reference(whole)
    (out * upstream).sum().backward()
    halves = [r["syncbn_layer"] for r in two_process_results]
    torch.testing.assert_close(torch.cat([h["out"] for h in halves]), out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([h["grad_x"] for h in halves]), whole.grad, rtol=1e-4, atol=1e-5)
    for h in halves:  # parameter gradients: DDP would average; each process holds its part
        torch.testing.assert_close(halves[0]["grad_w"] + halves[1]["grad_w"], reference.weight.grad)
        torch.testing.assert_close(halves[0]["grad_b"] + halves[1]["grad_b"], reference.bias.grad)
        torch.testing.assert_close(h["running_mean"], reference.running_mean)
        torch.testing.assert_close(h["running_var"], reference.running_var)
    # the syncbn model trained over 2 processes equals plain BN over the global batch
    expected = _train("syncbn", distributed.SINGLE_PROCESS)
    for key, value in expected.items():
        assert torch.allclose(two_process_results[1]["syncbn"][key].double(), value.double(),
                              rtol=1e-4, atol=1e-5), key


def test_workers_must_split_over_processes():
    with pytest.raises(ConfigError, match=r"data.workers=3 does not split over 2 processes"):
        distributed.check_workers(3, distributed.Context(rank=0, world_size=2))
    distributed.check_workers(4, distributed.Context(rank=1, world_size=2))
    assert distributed.local_slice(12, distributed.Context(rank=1, world_size=2)) == slice(6, 12)


def test_slurm_tasks_become_torch_ranks(monkeypatch):
    # set-then-delete: monkeypatch then also removes what the code under test exports
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # as inside a submitit job
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    ctx = distributed.context_from_environment()
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (3, 4, 1)
    assert os.environ["MASTER_ADDR"] == "gpu07"


# --- the command line: torchrun -m brn_repro.train -------------------------------------


def _overrides(root, runs, tmp_path):
    return [f"dataset.root={root}", "dataset.download=false", "logger=none", f"paths.runs={runs}",
            "norm=brn", "norm.momentum=0.2", "norm.relax_start=0", "norm.r_max_end_step=4",
            "norm.d_max_end_step=4", "norm.r_max=1.5", "norm.d_max=0.5",
            "data.per_worker_batch=4", "data.workers=4", "data.train_eval_size=200",
            "model.width=4", "train.steps=8", "train.eval_every=4", "train.checkpoint_every=4",
            "train.eval_batch=128", "train.progress=false", "optim.lr=0.1",
            f"hydra.run.dir={tmp_path / 'outputs'}"]


def _torchrun(overrides, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "brn_repro.train", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_run_stopped_and_resumed_equals_one_process(tmp_path, tiny_fashion_mnist):
    runs = tmp_path / "ddp"
    overrides = _overrides(tiny_fashion_mnist, runs, tmp_path)
    first = _torchrun([*overrides, "train.stop_at_step=4"], tmp_path)
    assert first.stdout.count("stopped at step 4") == 1  # rank 0 speaks, once
    second = _torchrun(overrides, tmp_path)
    assert second.stdout.count("resuming") == 1

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        single = OmegaConf.to_container(compose("config", overrides=_overrides(
            tiny_fashion_mnist, tmp_path / "single", tmp_path)[:-1]), resolve=True)
    expected = run(single)

    (run_dir,) = runs.iterdir()  # one run, named as the single-process one
    assert run_dir.name == Path(expected["run_dir"]).name
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.pt", "config.yaml", "metrics.jsonl", "summary.json"]
    record = RunRecord(runs, single)
    summary = record.summary()
    assert summary["status"] == "completed" and summary["processes"] == 2
    assert expected["processes"] == 1
    # only rank 0 wrote: one metrics line per evaluation, not one per process
    assert [row["step"] for row in record.read_metrics()] == [4, 8]
    got = record.load_checkpoint()["model"]
    want = RunRecord(tmp_path / "single", single).load_checkpoint()["model"]
    for key in want:
        assert torch.allclose(got[key].double(), want[key].double(), rtol=1e-4, atol=1e-5), key
    assert abs(summary["test_acc"] - expected["test_acc"]) <= 1.0


def test_device_choice_is_checked_before_training():
    with pytest.raises(ConfigError, match=r"train.device='tpu' is not a device; use one of auto, cpu, cuda"):
        distributed.resolve_device("tpu")
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train.device=cuda but torch sees no CUDA device"):
            distributed.resolve_device("cuda")
        assert distributed.resolve_device("auto") == torch.device("cpu")
