"""Train one configuration end to end; with ``-m``, a Hydra sweep of them.

    python -m brn_repro.train norm=brn data.per_worker_batch=4 data.workers=16
    python -m brn_repro.train -m norm=bn,brn data.per_worker_batch=1,2,4,32
    python -m brn_repro.train -m experiment=fig2_small_batch profile=quick   # conf/experiment/
    torchrun --nproc_per_node=2 -m brn_repro.train norm=brn data.per_worker_batch=4 data.workers=16

Installed, the same command is ``brn-train`` (``brn-train --help``: the common commands and
the config groups; ``eval "$(brn-train -sc install=bash)"``: Hydra's shell completion).

A global batch of ``data.workers x data.per_worker_batch`` examples goes through
the model in one call; batch-statistics norms normalize it in groups of the
per-worker batch (the paper's synchronized workers), the gradient is over all of
it. Under torchrun (or SLURM tasks) the same global batch is spread over the
processes, each normalizing its own workers (``brn_repro.distributed``). The run
leaves one record (``brn_repro.records``); re-running a finished config does
nothing, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from brn_repro import distributed
from brn_repro.config import (
    CONF_DIR,
    ConfigError,
    apply_precision,
    build_lr_schedule,
    build_optimizer,
    check_command_line,
    memory_format,
    norm_batch,
    norm_factory,
    relaxation_warning,
    resolve,
    validate,
    wants_compile,
)
from brn_repro.data import DatasetError, TrainingData
from brn_repro.evaluate import (
    WeightEMA,
    accuracy_counts,
    minibatch_stats_counts,
    moving_average_errors,
    percent,
)
from brn_repro.lease import LockError
from brn_repro.loggers import build_logger, wandb_run_id
from brn_repro.models import as_layout, build_model, check_model_input
from brn_repro.norm import norm_diagnostics
from brn_repro.provenance import git_commit
from brn_repro.records import RecordError, RunRecord, public_config, run_name

# How often the host reads whether the loss went non-finite (on a CPU a read is free).
DIVERGENCE_SYNC_EVERY = {"cpu": 1, "cuda": 50}

# Mistakes of input or environment: one line and exit code 2, never a traceback.
USER_ERRORS = (ConfigError, DatasetError, RecordError, LockError)


def weight_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(p.detach().pow(2).sum().item() for p in model.parameters()))


def prepare(config: dict[str, Any], ctx: distributed.Context = distributed.SINGLE_PROCESS
            ) -> tuple[TrainingData, torch.nn.Module]:
    """Everything that can fail on bad input, before any training or any record."""
    model_options = {k: v for k, v in config["model"].items() if k != "name"}
    try:
        # finds the dataset; one-line DatasetError when it can't
        data = TrainingData(config, rank=ctx.rank, world_size=ctx.world_size)
        check_model_input(config["model"]["name"], image_size=data.image_size,
                          in_channels=data.in_channels, dataset=config["dataset"]["name"],
                          **model_options)
    except DatasetError:
        raise
    except ValueError as err:  # a sampler or model that cannot take this data
        raise ConfigError(str(err)) from None
    torch.manual_seed(config["seed"])
    model = build_model(config["model"]["name"], num_classes=data.num_classes,
                        in_channels=data.in_channels, image_size=data.image_size,
                        norm_layer=norm_factory(config), **model_options)
    return data, model


def compile_model(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with static shapes. A run's shapes are fixed (the training
    batch, the evaluation chunks); letting a second shape make them symbolic sent
    inductor's CPU code generation into minutes of sympy simplification (measured:
    one model compiled at batch 128, then 32, did not finish in 7 minutes)."""
    return torch.compile(net, dynamic=False)


def place(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, dtype: torch.dtype,
          layout: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch on the device, in the model's dtype and memory layout."""
    x, y = batch
    return as_layout(x.to(device, dtype, non_blocking=True), layout), y.to(device, non_blocking=True)


def forward_backward(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                     average_statistics: distributed.StatisticsAverager) -> torch.Tensor:
    """The step's gradients; returns the loss over the global batch, on the device."""
    loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Data parallel: every process updated its norms' moving statistics from its own
    # workers; one all-reduce makes them the mean over processes (= one process with
    # all the workers) before the next forward uses them, and brings the global loss.
    # After backward, so it never rewrites a tensor autograd saved.
    return average_statistics(loss)


def evaluate(model, ema, data: TrainingData, config, final: bool, ctx: distributed.Context,
             device: torch.device, inference: torch.nn.Module | None = None) -> dict[str, float]:
    """Accuracies in inference mode; intermediate evaluations may use a fixed test
    subset (``train.eval_test_size``) to keep short runs cheap, the last uses all of it.
    Several processes each count their shard of the batches; the counts are summed.
    ``inference``: the compiled model, which evaluates faster (its eval-mode graph
    is compiled on the first call); the probe and a weight average evaluate eager."""
    net = ema.model if ema is not None else model
    subset = None if final else config["train"].get("eval_test_size")
    fast = inference if ema is None and inference is not None else net
    counts = accuracy_counts(fast, data.test_batches(subset)) + accuracy_counts(fast, data.train_subset_batches())
    if config["train"]["minibatch_stats_eval"]:
        counts += minibatch_stats_counts(net, data.noniid_test_batches(subset))
    counts = distributed.all_reduce_sum(counts, ctx, device)
    (test_acc, test_loss), (train_acc, _) = percent(counts[0:3]), percent(counts[3:6])
    row = {"test_acc": test_acc, "test_loss": test_loss, "train_acc": train_acc}
    if config["train"]["minibatch_stats_eval"]:
        row["minibatch_stats_acc"] = percent(counts[6:9])[0]
    # The live model's moving statistics (the weight average's are an average of them),
    # next to the noise of the statistics of a normalization group of training's size.
    reduce = torch.distributed.all_reduce if ctx.enabled else None
    return row | moving_average_errors(model, data.train_subset_batches(), reduce, group_size=norm_batch(config))


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train ``config`` (a resolved config as a plain dict); returns the run's summary."""
    validate(config)
    config = {**config, "git_commit": git_commit()}  # recorded, not part of the run's identity
    if config["train"].get("threads"):
        torch.set_num_threads(config["train"]["threads"])
    ctx, device = distributed.init(config["train"].get("device", "auto"))
    distributed.check_workers(config["data"]["workers"], ctx)
    record = RunRecord(config["paths"]["runs"], config)
    if ctx.is_main:
        record.check_writable()
    done = record.summary()
    if done is not None:  # before loading anything: re-running a finished sweep is quick
        if ctx.is_main:
            print(f"already {done['status']}: {record.dir} (test_acc {done['test_acc']}); nothing to do")
        return done
    data, model = prepare(config, ctx)
    if (note := relaxation_warning(config)) and ctx.is_main:
        print(note, file=sys.stderr)
    # Rank 0 holds the lock and speaks for all: another sweep process may have trained it.
    with record.lock() if ctx.is_main else nullcontext():
        done = distributed.broadcast(record.summary() if ctx.is_main else None, ctx)
        if done is not None:
            if ctx.is_main:
                print(f"already {done['status']} by another process: {record.dir}; nothing to do")
            return done
        return train_run(config, record, data, model, ctx, device)


def train_run(config: dict[str, Any], record: RunRecord, data: TrainingData, model: torch.nn.Module,
              ctx: distributed.Context = distributed.SINGLE_PROCESS,
              device: torch.device = distributed.CPU) -> dict[str, Any]:
    """The loop: train, evaluate, checkpoint, and leave the summary (rank 0 writes)."""
    train = config["train"]
    compiled = wants_compile(config, device, ctx.world_size, model)
    model_dtype, layout = apply_precision(config), memory_format(config, device, compiled)
    model.to(device, model_dtype, memory_format=layout)
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_lr_schedule(config, optimizer)
    ema = WeightEMA(model, train["ema_decay"]) if train.get("ema_decay") else None
    start, best, wall_before, eval_before = 0, -1.0, 0.0, 0.0
    # Rank 0 judges the record (cuts metrics to the checkpoint, or starts afresh when
    # there is none or it is damaged); every process then loads the same checkpoint.
    state = record.resume() if ctx.is_main else None
    if distributed.broadcast(state is not None, ctx):
        state = state or record.load_checkpoint()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data.load_state_dict(state["data"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, best, wall_before = state["step"], state["best_test_acc"], state["wall_seconds"]
        eval_before = state.get("eval_seconds", 0.0)  # older checkpoints lack it
        if ctx.is_main:
            print(f"resuming {record.dir} from step {start}")
    name = run_name(config)
    # One W&B run per record (same id across resumes), grouped by profile and experiment,
    # tagged with every experiment the run serves.
    logger = build_logger(config["logger"]["kind"] if ctx.is_main else "none", config=public_config(config),
                          run_dir=record.dir, run_name=name, run_id=wandb_run_id(record.dir.name),
                          group=f"{config['profile_name']}/{config['experiment']}",
                          tags=record.experiments(),
                          **{k: v for k, v in config["logger"].items() if k != "kind"})
    net = distributed.wrap(model, ctx, device)  # after loading: every process starts equal
    if compiled:  # the norms switch to their plain-ops formulation (norm/_grouped.py)
        # A sweep trains run after run in one process; past 8 models per code object the
        # compiler would silently fall back to eager, so each run starts afresh.
        torch._dynamo.reset()
        net = compile_model(net)
    average_statistics = distributed.StatisticsAverager(model, ctx)

    def checkpoint(step: int, wall: float) -> None:
        if not ctx.is_main:
            return
        record.save_checkpoint({
            "step": step, "best_test_acc": best, "wall_seconds": wall, "eval_seconds": eval_seconds,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "data": data.state_dict(),
            "ema": ema.state_dict() if ema is not None else {},
        })

    model.train()
    status, diverged_step, last = "completed", None, {}
    t0, window_start, window_steps = time.perf_counter(), time.perf_counter(), 0
    eval_seconds = eval_before
    # The loss is checked for NaN/inf on the device; the host reads the verdict every
    # step on the CPU (free) but only every `sync_every` steps and before evaluating or
    # checkpointing on a GPU, so the loop does not wait for the GPU every step. The
    # step recorded is the first non-finite one either way.
    sync_every = DIVERGENCE_SYNC_EVERY.get(device.type, 50)
    first_bad = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(total=train["steps"], initial=start, desc=name, unit="step",
               disable=not (train.get("progress", True) and ctx.is_main), dynamic_ncols=True)
    step, compile_seconds = start, None
    for step in range(start + 1, train["steps"] + 1):
        x, y = place(data.train_batch(), device, model_dtype, layout)
        step_start = time.perf_counter()
        global_loss = forward_backward(net, x, y, optimizer, average_statistics)
        if compiled and compile_seconds is None:  # the first step compiles forward and backward
            compile_seconds = time.perf_counter() - step_start
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(global_loss), step, first_bad)
        evaluating = step % train["eval_every"] == 0 or step == train["steps"]
        stopping = step == train.get("stop_at_step")
        saving = step % train["checkpoint_every"] == 0 or step == train["steps"] or stopping
        if (step % sync_every == 0 or evaluating or saving) and (bad := int(first_bad)):
            status, diverged_step = "diverged", bad
            break
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        window_steps += 1
        bar.update(1)
        if evaluating:
            images_per_second = window_steps * data.global_batch / (time.perf_counter() - window_start)
            eval_start = time.perf_counter()
            accuracies = evaluate(model, ema, data, config, step == train["steps"], ctx, device,
                                  inference=net if compiled and ctx.world_size == 1 else None)
            eval_seconds += time.perf_counter() - eval_start
            row = {"step": step, "loss": global_loss.item(), **accuracies,
                   "lr": scheduler.get_last_lr()[0], "weight_norm": weight_norm(model),
                   "images_per_second": images_per_second,
                   **distributed.all_reduce_mean(norm_diagnostics(model), ctx, device)}
            best = max(best, row["test_acc"])
            if ctx.is_main:
                record.log_metrics(row)
            logger.log(row, step)
            last = row
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['test_acc']:.1f}",
                            img_s=f"{images_per_second:.0f}")
            model.train()
            window_start, window_steps = time.perf_counter(), 0
        if saving:
            checkpoint(step, wall_before + time.perf_counter() - t0)
        if stopping:
            status = "stopped"
            break
    bar.close()
    if status == "completed" and not last:  # resumed from the final checkpoint: its summary was lost
        eval_start = time.perf_counter()
        last = evaluate(model, ema, data, config, True, ctx, device)
        eval_seconds += time.perf_counter() - eval_start
        logger.log(last, step)
    wall = wall_before + time.perf_counter() - t0
    if status == "stopped":  # a job's share of the run: checkpointed, no summary yet
        if ctx.is_main:
            print(f"stopped at step {step} (train.stop_at_step); run the same command without it "
                  f"to resume: {record.dir}")
        logger.finish()
        return {"status": "stopped", "steps_done": step, "test_acc": None, "run_dir": str(record.dir)}
    steps_done = (diverged_step - 1) if diverged_step else step
    summary = {
        "status": status,
        "name": name,
        "run_dir": str(record.dir),
        "steps_done": steps_done,
        "diverged_step": diverged_step,
        "test_acc": last.get("test_acc") if status == "completed" else None,
        "train_acc": last.get("train_acc") if status == "completed" else None,
        "minibatch_stats_acc": last.get("minibatch_stats_acc") if status == "completed" else None,
        "best_test_acc": best if best >= 0 else None,
        "wall_seconds": round(wall, 2),
        "eval_seconds": round(eval_seconds, 2),  # of wall_seconds, spent evaluating
        "compiled": compiled,
        # the first step's wall time, which holds the compilation of forward and backward
        # (evaluation compiles on its first call, inside eval_seconds); this call's only
        "compile_seconds": None if compile_seconds is None else round(compile_seconds, 2),
        "images_per_second": round((steps_done - start) * data.global_batch
                                   / max(time.perf_counter() - t0, 1e-9), 1),
        "processes": ctx.world_size,
        "device": device.type,
    }
    if not ctx.is_main:
        return summary
    if status == "diverged":
        print(f"diverged at step {diverged_step} (non-finite loss): "
              f"recorded in {record.summary_path}")
    record.write_summary(summary)
    logger.summary(summary)
    logger.finish(exit_code=1 if status == "diverged" else 0)
    return summary


# conf/ by its absolute path: relative, Hydra would look for a module `conf` when called
# as the console script (brn-train), whose task function is not in __main__
@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One run (Hydra calls it once per job of a sweep). Returns the final test accuracy,
    NaN for a run without one (diverged, or stopped at train.stop_at_step), so that a
    sweeper that optimizes it (Optuna) records a failed trial instead of aborting on None."""
    try:
        summary = run(resolve(cfg))
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    test_acc = summary.get("test_acc")
    return float("nan") if test_acc is None else float(test_acc)


def cli() -> None:
    """``brn-train`` (pyproject's [project.scripts]) and ``python -m brn_repro.train``:
    Hydra's command line, with its config-group mistakes (``+experiment=NAME``, an
    unknown option) as one line and exit 2 before Hydra composes anything."""
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
