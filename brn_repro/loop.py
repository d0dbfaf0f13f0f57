"""The run-level pieces of ``brn_repro.train``'s loop: what a checkpoint holds
(``Training``, ``Progress``), resuming and checkpointing, the divergence watch, and
the summary every run ends with, in one shape whether it completed, diverged or
stopped (``train.stop_at_step``). Rank 0 alone writes and speaks: the record, the
logger and ``Context.say`` know the rank, so nothing here asks for it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from brn_repro import distributed
from brn_repro.data import TrainingData
from brn_repro.evaluate import WeightEMA
from brn_repro.kernels import DECIDING, same_kernels
from brn_repro.loggers import RunLogger
from brn_repro.records import RunRecord, run_name


@dataclass
class Training:
    """What a training step changes: with the progress, what a checkpoint holds."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: TrainingData
    ema: WeightEMA | None

    def update(self) -> None:
        """The step's update, from the gradients ``forward_backward`` left."""
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "data": self.data.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


@dataclass
class Progress:
    """How far a run is, over every call that trained it (a resume goes on from the
    checkpoint's step, best accuracy and clocks), and this call's own clocks."""

    step: int = 0  # steps taken
    best_test_acc: float = -1.0  # -1: no evaluation yet
    wall_before: float = 0.0  # seconds the calls before this one trained
    eval_seconds: float = 0.0  # of all the wall time, spent evaluating
    start_step: int = 0  # where this call started
    status: str = "completed"  # until the loop ends otherwise: diverged | stopped
    diverged_step: int | None = None  # the first step with a non-finite loss
    last: dict[str, float] = field(default_factory=dict)  # this call's last evaluation
    compile_seconds: float | None = None  # this call's first step, when compiled
    kernels: dict[str, Any] | None = None  # what computed the steps so far (brn_repro.kernels.describe)
    kernels_mixed: bool = False  # resumed on other kernels than the steps before
    weight_norm_init: float | None = None  # at step 0: claim 4 measures growth from initialization
    started: float = 0.0  # this call's loop began (perf_counter)
    window_started: float = 0.0  # the throughput's window: since the last evaluation
    window_steps: int = 0

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Progress:
        return cls(step=state["step"], best_test_acc=state["best_test_acc"], wall_before=state["wall_seconds"],
                   eval_seconds=state["eval_seconds"],
                   start_step=state["step"], kernels=state["kernels"], kernels_mixed=state["kernels_mixed"],
                   weight_norm_init=state["weight_norm_init"])

    def checkpoint(self) -> dict[str, Any]:
        return {"step": self.step, "best_test_acc": self.best_test_acc, "wall_seconds": self.wall_seconds(),
                "eval_seconds": self.eval_seconds, "kernels": self.kernels, "kernels_mixed": self.kernels_mixed,
                "weight_norm_init": self.weight_norm_init}

    def use_kernels(self, here: dict[str, Any], ctx: distributed.Context) -> None:
        """This call's kernels; a resume on other ones than the steps before is said and recorded."""
        if self.kernels is not None and not same_kernels(self.kernels, here):
            self.kernels_mixed = True
            changed = ", ".join(f"{k} {self.kernels.get(k)} -> {here.get(k)}" for k in DECIDING
                                if self.kernels.get(k) != here.get(k))
            ctx.say(f"note: resuming on other kernels than the steps before ({changed}): the numbers will "
                    "differ from an uninterrupted run's (recorded: kernels_mixed)", logging.WARNING)
        self.kernels = here

    def start_clocks(self) -> None:
        self.started = time.perf_counter()
        self.restart_window()

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def took_step(self, step: int) -> None:
        self.step = step
        self.window_steps += 1

    def images_per_second(self, global_batch: int) -> float:
        """Training throughput since the last evaluation (evaluations not counted)."""
        return self.window_steps * global_batch / (time.perf_counter() - self.window_started)

    def restart_window(self) -> None:
        self.window_started, self.window_steps = time.perf_counter(), 0

    @contextmanager
    def timing_evaluation(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.eval_seconds += time.perf_counter() - start

    def evaluated(self, row: dict[str, float]) -> None:
        self.best_test_acc = max(self.best_test_acc, row["test_acc"])
        self.last = row


class FirstNonFinite:
    """The first step whose loss is NaN or inf, kept on the device. The host reads it
    every step on a CPU (a read is free) but only every ``every`` steps, and when
    asked (before evaluating or checkpointing), on a GPU, so the loop does not wait
    for the GPU every step. The step it gives is the first non-finite one either way."""

    def __init__(self, every: int, device: torch.device):
        self.every = every
        self.first = torch.zeros((), dtype=torch.long, device=device)

    def check(self, loss: torch.Tensor, step: int, read_now: bool = False) -> int | None:
        """Notes ``loss`` as ``step``'s; the first non-finite step when the host reads
        it at this step and there is one, else None."""
        self.first = torch.where((self.first == 0) & ~torch.isfinite(loss), step, self.first)
        if not (read_now or step % self.every == 0):
            return None
        return int(self.first) or None


def resume(record: RunRecord, training: Training, ctx: distributed.Context) -> Progress:
    """Where the run goes on from. Rank 0 judges the record (cuts the metrics back to
    the checkpoint, or starts afresh when there is none or it is damaged); every
    process then loads the same checkpoint."""
    found = record.resume()  # None off rank 0
    if not distributed.broadcast(found is not None, ctx):
        return Progress()
    state = found or record.load_checkpoint()
    training.load_state_dict(state)
    ctx.say(f"resuming {record.dir} from step {state['step']}")
    return Progress.from_checkpoint(state)


def save_checkpoint(record: RunRecord, training: Training, progress: Progress) -> None:
    record.save_checkpoint({**progress.checkpoint(), **training.state_dict()})  # rank 0 writes


def summarize(progress: Progress, config: dict[str, Any], record: RunRecord, global_batch: int,
              compiled: bool, ctx: distributed.Context, device: torch.device) -> dict[str, Any]:
    """The run's summary, one shape for every end (completed, diverged, stopped); what
    does not apply to it is None."""
    completed = progress.status == "completed"
    steps_done = progress.diverged_step - 1 if progress.diverged_step else progress.step
    return {
        "status": progress.status,
        "name": run_name(config),
        "run_dir": str(record.dir),
        "attempt_id": record.attempt_id,  # the W&B run's id: this training from step 0
        "steps_done": steps_done,
        "diverged_step": progress.diverged_step,
        "test_acc": progress.last.get("test_acc") if completed else None,
        "train_acc": progress.last.get("train_acc") if completed else None,
        "minibatch_stats_acc": progress.last.get("minibatch_stats_acc") if completed else None,
        "best_test_acc": progress.best_test_acc if progress.best_test_acc >= 0 else None,
        "wall_seconds": round(progress.wall_seconds(), 2),
        "eval_seconds": round(progress.eval_seconds, 2),  # of wall_seconds, spent evaluating
        "compiled": compiled,
        # the first step's wall time, which holds the compilation of forward and backward
        # (evaluation compiles on its first call, inside eval_seconds); this call's only
        "compile_seconds": None if progress.compile_seconds is None else round(progress.compile_seconds, 2),
        "images_per_second": round((steps_done - progress.start_step) * global_batch
                                   / max(time.perf_counter() - progress.started, 1e-9), 1),
        "processes": ctx.world_size,
        "device": device.type,
        "kernels": progress.kernels,  # the last call's; kernels_mixed: an earlier call's differed
        "kernels_mixed": progress.kernels_mixed,
        "weight_norm_init": progress.weight_norm_init,
    }


def finish(summary: dict[str, Any], record: RunRecord, logger: RunLogger, ctx: distributed.Context) -> None:
    """A completed or diverged run leaves its summary; a stopped one (a job's share of the
    run, ``train.stop_at_step``) is checkpointed and has none yet."""
    if summary["status"] == "stopped":
        ctx.say(f"stopped at step {summary['steps_done']} (train.stop_at_step); run the same command "
                f"without it to resume: {record.dir}")
        logger.finish()
        return
    diverged = summary["status"] == "diverged"
    if diverged:
        ctx.say(f"diverged at step {summary['diverged_step']} (non-finite loss): recorded in {record.summary_path}")
    record.write_summary(summary)
    logger.summary(summary)
    logger.finish(exit_code=1 if diverged else 0)
