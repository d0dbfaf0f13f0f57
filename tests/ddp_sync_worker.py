"""Run by tests/test_norm_ddp.py under ``torchrun --nproc_per_node=2`` (gloo, CPU):
DDP training of a small BRN / per-worker BN model on each process's half of a global
batch, once with ``sync_moving_statistics`` after each step and once without; each
rank saves both models' state."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from brn_repro.norm import BatchNorm1d, BatchRenorm2d, sync_moving_statistics

GLOBAL_BATCH, PER_WORKER, STEPS = 8, 2, 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        BatchRenorm2d(4, momentum=0.3, r_max=1.5, d_max=0.5, per_worker_batch=PER_WORKER,
                      r_max_end_step=None, d_max_end_step=None),
        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 6),
        BatchNorm1d(6, momentum=0.3, per_worker_batch=PER_WORKER), nn.Linear(6, 2),
    ).double()


def batch(step: int) -> torch.Tensor:
    """The global batch of a step; the workers' statistics differ (a shift per worker)."""
    g = torch.Generator().manual_seed(step)
    shift = torch.arange(GLOBAL_BATCH // PER_WORKER, dtype=torch.float64).repeat_interleave(PER_WORKER)
    return torch.randn(GLOBAL_BATCH, 3, 7, 7, generator=g, dtype=torch.float64) + shift.view(-1, 1, 1, 1)


def train(model: nn.Module, rank: int, world: int, sync: bool) -> nn.Module:
    ddp = DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    size = GLOBAL_BATCH // world
    for step in range(STEPS):
        x = batch(step)[rank * size:(rank + 1) * size]
        ddp(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        if sync:
            sync_moving_statistics(ddp)
    return model


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    states = {f"sync={sync}": train(make_model(), rank, world, sync).state_dict() for sync in (True, False)}
    torch.save(states, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
