"""Data-parallel training over real processes: torchrun, or SLURM tasks (submitit).

The paper trained on 50 synchronized workers, each normalizing over its own 32
(or 4) examples. One process emulates that with virtual workers (groups of
``per_worker_batch`` in one global batch); this module spreads the same global
batch over K processes so that the numbers do not change:

- Every process draws the same global batch (same seed, same sampler) and keeps
  its contiguous slice: rank r takes workers ``[r*W/K, (r+1)*W/K)``, so each
  process holds ``W/K`` virtual workers of ``per_worker_batch``. The sequence of
  global batches depends only on the seed, never on K.
- Gradients are averaged by DDP; the loss is a mean over the process's slice, so
  the average over processes is the mean over the global batch, as in one process.
- Moving statistics: every process updates its norm layers' running buffers from
  its own groups; after each step's backward pass (a layer's backward may hold the
  buffers) they are all-reduced to their mean over processes, in one flat
  all-reduce together with the loss. The update ``(1 - alpha) m + alpha * mean over
  groups`` is linear in the groups' statistics, so the mean over processes equals
  the single-process update over all W groups. Doing it every step (not only before
  evaluation) matters: Batch Renorm and the moving-average norm use the moving
  averages in the next forward pass, and must use the same ones on every process.
- A worker's numbers do not depend on how many workers share its process: one
  group takes the same code as many (``norm._grouped``), so K processes equal one
  process with virtual workers to float64 rounding (``train.precision=float64``: 1e-15
  after 20 steps); in float32 the two are as far apart as any two roundings.
- ``syncbn`` normalizes over the whole global batch across processes instead.
- Only rank 0 writes run records, checkpoints and W&B, and prints (``Context.say``):
  the record and the logger are built knowing the rank and do nothing elsewhere
  (``RunRecord(main=...)``, ``build_logger(main=...)``); every process reads the
  checkpoint to resume. Evaluation is sharded over processes and all-reduced.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from brn_repro.config import ConfigError
from brn_repro.norm.registry import moving_statistics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process stands; ``Context()`` is the single-process default."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def say(self, message: str, level: int = logging.INFO) -> None:
        """Log ``message`` from rank 0 only: one process speaks for the run (Hydra's job
        log holds it; its console shows it, conf/hydra/job_logging/brn.yaml)."""
        if self.is_main:
            log.log(level, message)


SINGLE_PROCESS = Context()
CPU = torch.device("cpu")


def _export_slurm_environment() -> None:
    """Under SLURM with several tasks (Hydra's submitit launcher, ``tasks_per_node``),
    set the env:// variables torchrun would set, from submitit's job environment."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception as err:  # not a submitit job (e.g. srun by hand): read SLURM's variables
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(f"SLURM job with {os.environ['SLURM_NTASKS']} tasks but no MASTER_ADDR "
                               f"({err}); launch through Hydra's submitit launcher or export "
                               "MASTER_ADDR/MASTER_PORT") from None


def context_from_environment() -> Context:
    """The ranks torchrun (or SLURM, via submitit) put in the environment."""
    _export_slurm_environment()
    return Context(rank=int(os.environ.get("RANK", 0)),
                   world_size=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, ctx: Context = SINGLE_PROCESS) -> torch.device:
    """``train.device``: auto (CUDA when there is one), cpu or cuda; a process of a
    multi-GPU run takes the GPU of its local rank."""
    if name not in DEVICES:
        raise ConfigError(f"train.device={name!r} is not a device; use one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but torch sees no CUDA device; use train.device=cpu (or auto)")
    if ctx.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {ctx.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                          "start as many processes per node as GPUs")
    torch.cuda.set_device(ctx.local_rank)
    return torch.device("cuda", ctx.local_rank)


def init(device_name: str = "auto") -> tuple[Context, torch.device]:
    """This process's context and device; joins the process group when launched with
    several processes (gloo on CPU, NCCL on GPU). Safe to call once per job of a sweep."""
    ctx = context_from_environment()
    device = resolve_device(device_name, ctx)
    if ctx.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)
        # One group for all the jobs of a sweep in this process; left cleanly at exit.
        atexit.register(dist.destroy_process_group)
    return ctx, device


def check_workers(workers: int, ctx: Context) -> None:
    """``data.workers`` (virtual workers in all) must split evenly over processes."""
    if workers % ctx.world_size:
        raise ConfigError(f"data.workers={workers} does not split over {ctx.world_size} processes; "
                          f"use a multiple of {ctx.world_size} (each process takes workers / processes)")


def local_slice(global_batch: int, ctx: Context) -> slice:
    """This process's contiguous part of the global batch (whole virtual workers)."""
    size = global_batch // ctx.world_size
    return slice(ctx.rank * size, (ctx.rank + 1) * size)


def wrap(model: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """DDP around ``model`` when there are several processes. ``broadcast_buffers``
    is off: rank 0's moving statistics are not everyone's (see ``MovingStatistics``)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


class MovingStatistics:
    """The model's norms' moving statistics, kept equal on every process: ``sync``
    replaces them by their mean over processes (= one process with all the workers,
    see the module's docstring). Call it after the backward pass (it rewrites the
    buffers in place, and a layer's backward may have saved them) and before the next
    forward, which uses them. One process: nothing to synchronize."""

    def __init__(self, model: nn.Module, ctx: Context):
        self.ctx = ctx
        self.buffers = moving_statistics(model)  # the norm table's moving_statistics

    @torch.no_grad()
    def sync(self, loss: Tensor) -> Tensor:
        """All-reduce the moving statistics to their mean over processes; returns
        ``loss``'s mean over processes (the global batch's loss), carried in the same
        all-reduce so a step costs one collective, not two."""
        if not self.ctx.enabled:
            return loss.detach()
        parts = [b.reshape(-1) for b in self.buffers] + [loss.detach().reshape(1)]
        flat = torch.cat(parts).to(loss.dtype)  # float64 runs stay float64
        dist.all_reduce(flat)
        flat /= self.ctx.world_size
        offset = 0
        for buffer in self.buffers:
            buffer.copy_(flat[offset:offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()
        return flat[-1]


def all_reduce_sum(values: list[float], ctx: Context, device: torch.device) -> list[float]:
    """Sums over processes (float64), e.g. correct / total / loss sums of a sharded evaluation."""
    if not ctx.enabled:
        return values
    flat = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return flat.tolist()


def all_reduce_mean(row: dict[str, float], ctx: Context, device: torch.device) -> dict[str, float]:
    """Mean over processes of a dict of floats with the same keys everywhere."""
    if not ctx.enabled or not row:
        return row
    keys = sorted(row)
    sums = all_reduce_sum([float(row[k]) for k in keys], ctx, device)
    return {k: s / ctx.world_size for k, s in zip(keys, sums, strict=True)}


def broadcast(value: Any, ctx: Context) -> Any:
    """Rank 0's ``value`` on every process (a picklable object)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
