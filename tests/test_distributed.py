"""Real multi-process training (gloo, 2 CPU processes) against one process with the
same number of virtual workers: the same parameters and moving statistics."""

import json
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
from brn_repro.schema import RunConfig
from brn_repro.train import run

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
PER_WORKER, STEPS = 3, 5
# data.workers in all: 1 and 2 virtual workers per process when there are 2 processes.
# One per process is the case that differed (one group took another code path).
WORKER_COUNTS = (2, 4)
NORMS = {
    "bn": {"per_worker_batch": PER_WORKER, "momentum": 0.3},
    # clipping from the first step: r and d really differ from 1 and 0
    "brn": {"per_worker_batch": PER_WORKER, "momentum": 0.3, "r_max": 1.05, "d_max": 0.05},
    "moving_average": {"per_worker_batch": PER_WORKER, "momentum": 0.3},
    # the SMAs and r from the second step on
    "mabn": {"per_worker_batch": PER_WORKER, "warmup_iters": 1, "r_warmup": 1, "buffer_size": 2},
    "syncbn": {"momentum": 0.3},
}


def _batches(workers: int):
    """STEPS global batches: real Fashion-MNIST images when Debian's package is there
    (28 x 28, cropped to 12 x 12 to keep the test fast), else Gaussian images."""
    generator = torch.Generator().manual_seed(7)
    count = STEPS * workers * PER_WORKER
    if (DEBIAN / "train-images-idx3-ubyte.gz").exists():
        from brn_repro.data import read_idx

        images = torch.from_numpy(read_idx(DEBIAN / "train-images-idx3-ubyte.gz")[:count].copy())
        labels = torch.from_numpy(read_idx(DEBIAN / "train-labels-idx1-ubyte.gz")[:count].copy())
        x = (images[:, 8:20, 8:20].float() / 255 - 0.3).view(STEPS, -1, 1, 12, 12)
        return x, labels.long().view(STEPS, -1)
    x = torch.randn(STEPS, workers * PER_WORKER, 1, 8, 8, generator=generator) * 2 + 0.5
    y = torch.randint(0, 10, (STEPS, workers * PER_WORKER), generator=generator)
    return x, y


def _train(name: str, ctx: distributed.Context, workers: int) -> dict[str, torch.Tensor]:
    """STEPS of SGD on fixed global batches; this process takes its slice."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_channels=1, width=4, norm_layer=build_norm(name, **NORMS[name]))
    net = distributed.wrap(model, ctx, distributed.CPU)
    moving_statistics = distributed.MovingStatistics(model, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    local = distributed.local_slice(workers * PER_WORKER, ctx)
    for x, y in zip(*_batches(workers), strict=True):
        loss = F.cross_entropy(net(x[local]), y[local])
        optimizer.zero_grad()
        loss.backward()
        moving_statistics.sync(loss)  # as the runner: after backward, before the next forward
        optimizer.step()
    # MABN's per-worker SMA histories are each process's own workers' by design.
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "buffer_" not in k}


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
    results = {f"{name}/{workers}": _train(name, ctx, workers) for name in NORMS for workers in WORKER_COUNTS}
    results["syncbn_layer"] = _syncbn_forward_backward(ctx)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_only_rank_0_speaks(capsys):
    distributed.Context(rank=1, world_size=2).say("from rank 1")
    distributed.Context(rank=0, world_size=2).say("from rank 0")
    assert capsys.readouterr().err == "from rank 0\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("name", ["bn", "brn", "moving_average", "mabn"])
def test_two_processes_equal_one_process_with_virtual_workers(two_process_results, name, workers):
    expected = _train(name, distributed.SINGLE_PROCESS, workers)
    for rank, results in enumerate(two_process_results):
        got = results[f"{name}/{workers}"]
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.allclose(got[key].double(), expected[key].double(), rtol=1e-4, atol=1e-5), \
                (rank, key, (got[key].double() - expected[key].double()).abs().max())
    # the run really moved: the statistics are far from their initial values
    moved = expected["features.1.running_var"] - 1 if name == "mabn" else expected["features.1.running_mean"]
    assert moved.abs().max() > 0.05


def test_statistics_would_differ_without_averaging(two_process_results):
    """The check above can fail: each process's own groups give other moving statistics."""
    x, _ = _batches(WORKER_COUNTS[-1])
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
    expected = _train("syncbn", distributed.SINGLE_PROCESS, WORKER_COUNTS[-1])
    for key, value in expected.items():
        assert torch.allclose(two_process_results[1][f"syncbn/{WORKER_COUNTS[-1]}"][key].double(), value.double(),
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


@pytest.mark.slow  # make test-slow; keeps make test under 15 minutes with the install
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


# --- one worker per process (issue 9): the issue's command, torchrun vs one process ------


def _issue_command(norm: str, runs: Path, tmp_path: Path, root: Path, *extra: str) -> list[str]:
    norm_options = {"bn": [], "brn": ["norm.relax_start=0", "norm.r_max_end_step=10",
                                      "norm.d_max_end_step=10"]}[norm]  # r and d active
    return ["dataset=fashion_mnist", f"dataset.root={root}", "dataset.download=false",
            "model=small_cnn", f"norm={norm}", *norm_options, "data.per_worker_batch=8",
            "data.workers=2", "train.steps=20", "logger=none", "train.progress=false",
            f"paths.runs={runs}", f"hydra.run.dir={tmp_path / 'outputs'}", *extra]


def _final_row(runs: Path) -> dict:
    (run_dir,) = runs.iterdir()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]


def _one_process(overrides: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "brn_repro.train", *overrides], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _fashion_root(tiny_fashion_mnist) -> Path:
    return DEBIAN if (DEBIAN / "train-images-idx3-ubyte.gz").exists() else tiny_fashion_mnist


# brn's is slow (make test-slow): the same DDP path as bn's plus BRN's corrections, which
# test_split_equivalence checks per layer; keeps make test under 15 minutes with the install
@pytest.mark.parametrize("norm", ["bn", pytest.param("brn", marks=pytest.mark.slow)])
def test_one_worker_per_process_equals_virtual_workers_in_float64(tmp_path, tiny_fashion_mnist, norm):
    """The issue's command at width 8, in float64: torchrun with one worker per process
    (one group each; bn crashed here, brn drifted 1.6%) against one process with two."""
    root, small = _fashion_root(tiny_fashion_mnist), ["model.width=8", "train.precision=float64",
                                                      "data.train_eval_size=200"]
    _torchrun(_issue_command(norm, tmp_path / "torchrun", tmp_path, root, *small), tmp_path)
    _one_process(_issue_command(norm, tmp_path / "single", tmp_path, root, *small))
    got, want = _final_row(tmp_path / "torchrun"), _final_row(tmp_path / "single")
    assert got["step"] == want["step"] == 20
    assert abs(got["loss"] - want["loss"]) <= 1e-9 * abs(want["loss"]), (got["loss"], want["loss"])
    assert got["test_acc"] == want["test_acc"] and got["train_acc"] == want["train_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "brn"])
def test_one_worker_per_process_equals_virtual_workers_in_float32(tmp_path, tiny_fashion_mnist, norm):
    """The issue's exact command, float32. The two runs cannot agree better than two
    roundings of one run: after 20 steps, float32 against float64 of the *same*
    one-process run differs by 6e-4 to 1.3e-2 in loss over seeds 0-4 (bn; brn 3e-6 to
    1.5e-3), from ReLU sign flips of pre-activations within rounding of 0. Seed 0
    measured: bn 2.0764 vs 2.0837 (3.5e-3), 17.67 vs 17.49%; brn 1e-4, 17.25 vs 17.26%."""
    root = _fashion_root(tiny_fashion_mnist)
    _torchrun(_issue_command(norm, tmp_path / "torchrun", tmp_path, root), tmp_path)
    _one_process(_issue_command(norm, tmp_path / "single", tmp_path, root))
    got, want = _final_row(tmp_path / "torchrun"), _final_row(tmp_path / "single")
    assert abs(got["loss"] - want["loss"]) <= 1e-2 * abs(want["loss"]), (got["loss"], want["loss"])
    assert abs(got["test_acc"] - want["test_acc"]) <= 0.5, (got["test_acc"], want["test_acc"])


def test_precision_is_checked_and_float32_means_float32_on_a_gpu():
    from brn_repro.config import validate
    from brn_repro.performance import PRECISIONS, apply_precision

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = OmegaConf.to_container(compose("config", overrides=["train.precision=fp16"]), resolve=True)
    with pytest.raises(ConfigError, match=r"train.precision='fp16' is not a precision; use one of float32, tf32"):
        validate(config)
    try:
        for name, (dtype, tf32) in PRECISIONS.items():
            config["train"]["precision"] = name
            assert apply_precision(RunConfig.parse(config)) == dtype
            assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
        assert PRECISIONS["float32"] == (torch.float32, False)  # torch's own default is TF32 convolutions
    finally:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = False


def test_precision_enters_the_run_identity():
    from brn_repro.records import config_hash

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = OmegaConf.to_container(compose("config"), resolve=True)
    default = config_hash(config)
    config["train"]["precision"] = "float64"
    assert config_hash(config) != default
