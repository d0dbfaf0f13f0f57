"""Keep the norm layers' moving statistics equal across the processes of DDP.

DDP averages gradients, but each process updates its norm layers' moving averages
from its own examples, and ``broadcast_buffers=True`` (DDP's default) overwrites
them with rank 0's, dropping the other processes' batches. Batch Renorm and the
moving-average norm also *use* the moving averages in training (r, d), so every
process must use the same ones. ``sync_moving_statistics(model)`` after each step
replaces them by their mean over processes: the update ``(1 - alpha) m + alpha s``
is linear in the batch statistic s, so the mean over K processes is the update one
process would make from all K processes' workers (``per_worker_batch`` groups) --
what ``brn_repro.distributed.MovingStatistics`` does for the harness::

    model = DDP(model, broadcast_buffers=False)
    for x, y in loader:
        loss_fn(model(x), y).backward()
        optimizer.step(); optimizer.zero_grad()
        sync_moving_statistics(model)  # one all-reduce per dtype

torch only: nothing here needs the harness's packages.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
from torch import Tensor, nn

from brn_repro.norm.registry import moving_statistics


@torch.no_grad()
def sync_moving_statistics(model: nn.Module, group: dist.ProcessGroup | None = None) -> list[Tensor]:
    """All-reduce the moving statistics of ``model``'s norm layers (BRN's and the
    moving-average norm's ``running_mean`` / ``running_std``, batchnorms' ``running_mean``
    / ``running_var``, MABN's ``running_var``) to their mean over the processes of
    ``group`` (default: all), in place; returns the buffers. Call it after the backward
    pass (a layer's backward may hold the buffers) and before the next forward, every
    step. Without an initialized process group, or with one process, it does nothing.
    Works on DDP-wrapped or bare models, on gloo and NCCL."""
    buffers = moving_statistics(model)
    if not (dist.is_available() and dist.is_initialized()):
        return buffers
    world = dist.get_world_size(group)
    if world == 1 or not buffers:
        return buffers
    by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = defaultdict(list)
    for buffer in buffers:
        by_kind[(buffer.dtype, buffer.device)].append(buffer)
    for same in by_kind.values():
        flat = torch.cat([b.reshape(-1) for b in same])
        dist.all_reduce(flat, group=group)
        flat /= world
        offset = 0
        for buffer in same:
            buffer.copy_(flat[offset:offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()
    return buffers
