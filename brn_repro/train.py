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
nothing, an interrupted one resumes from its checkpoint. SIGTERM or SIGINT stops a run
at its next step with a checkpoint (``brn_repro.signals``), exit code 143 or 130.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from brn_repro import distributed, kernels, signals, sweeps
from brn_repro.cli import check_command_line
from brn_repro.config import (
    ConfigError,
    check_model_fits,
    norm_factory,
    relaxation_warning,
    resolve,
    validate,
)
from brn_repro.data import DatasetError, TrainingData
from brn_repro.evaluate import (
    WeightEMA,
    accuracy_counts,
    minibatch_stats_counts,
    moving_average_errors,
    sum_over_processes,
)
from brn_repro.lease import LockError
from brn_repro.loggers import RunLogger, build_logger, progress_bar
from brn_repro.loop import FirstNonFinite, Progress, Training, finish, resume, save_checkpoint, summarize
from brn_repro.models import as_layout, build_model, check_model_input
from brn_repro.norm import norm_diagnostics
from brn_repro.optim import build_lr_schedule, build_optimizer
from brn_repro.paths import CONF_DIR
from brn_repro.performance import apply_precision, memory_format, wants_compile
from brn_repro.provenance import git_commit
from brn_repro.records import RecordError, RunRecord, public_config, run_name
from brn_repro.schema import RunConfig
from brn_repro.secrets import public_argv

# How often the host reads whether the loss went non-finite (on a CPU a read is free).
DIVERGENCE_SYNC_EVERY = {"cpu": 1, "cuda": 50}

# Mistakes of input or environment: one line and exit code 2 (in a sweep: a failed job,
# and the sweep goes on), never a traceback.
USER_ERRORS = (ConfigError, DatasetError, RecordError, LockError)

log = logging.getLogger("brn_repro.train")  # also as __main__ (python -m)


def weight_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(p.detach().pow(2).sum().item() for p in model.parameters()))


def prepare(cfg: RunConfig, ctx: distributed.Context = distributed.SINGLE_PROCESS
            ) -> tuple[TrainingData, torch.nn.Module]:
    """Everything that can fail on bad input, before any training or any record."""
    try:
        # finds the dataset; one-line DatasetError when it can't
        data = TrainingData(cfg, rank=ctx.rank, world_size=ctx.world_size)
        check_model_input(cfg.model.name, image_size=data.image_size, in_channels=data.in_channels,
                          dataset=cfg.dataset.name, **cfg.model.options)
    except ValueError as err:  # a sampler or model that cannot take this data
        raise ConfigError(str(err)) from None
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, num_classes=data.num_classes, in_channels=data.in_channels,
                        image_size=data.image_size, norm_layer=norm_factory(cfg), **cfg.model.options)
    return data, model


def compile_model(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with static shapes. A run's shapes are fixed (the training
    batch, the evaluation chunks); letting a second shape make them symbolic sent
    inductor's CPU code generation into minutes of sympy simplification (measured:
    one model compiled at batch 128, then 32, did not finish in 7 minutes)."""
    kernels.key_compiled_graphs_by_isa()
    return torch.compile(net, dynamic=False)


def place(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, dtype: torch.dtype,
          layout: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch on the device, in the model's dtype and memory layout."""
    x, y = batch
    return as_layout(x.to(device, dtype, non_blocking=True), layout), y.to(device, non_blocking=True)


def forward_backward(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                     moving_statistics: distributed.MovingStatistics) -> torch.Tensor:
    """The step's gradients; returns the loss over the global batch, on the device."""
    loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Data parallel: every process updated its norms' moving statistics from its own
    # workers, and Batch Renorm (r, d) and the moving-average norm normalize the next
    # forward with them: they must be the same on every process, their mean (= one
    # process with all the workers). After backward, so it never rewrites a tensor
    # autograd saved; the global batch's loss comes back from the same all-reduce.
    return moving_statistics.sync(loss)


def evaluate(model, ema, data: TrainingData, cfg: RunConfig, final: bool, ctx: distributed.Context,
             device: torch.device, inference: torch.nn.Module | None = None) -> dict[str, float]:
    """Accuracies in inference mode; intermediate evaluations may use a fixed test
    subset (``train.eval_test_size``) to keep short runs cheap, the last uses all of it.
    Several processes each count their shard of the batches; the counts are summed.
    ``inference``: the compiled model, which evaluates faster (its eval-mode graph
    is compiled on the first call); the probe and a weight average evaluate eager."""
    net = ema.model if ema is not None else model
    subset = None if final else cfg.train.eval_test_size
    fast = inference if ema is None and inference is not None else net
    counts = {"test": accuracy_counts(fast, data.test_batches(subset)),
              "train": accuracy_counts(fast, data.train_subset_batches())}
    if cfg.train.minibatch_stats_eval:
        counts["minibatch_stats"] = minibatch_stats_counts(net, data.noniid_test_batches(subset))
    counts = sum_over_processes(counts, lambda flat: distributed.all_reduce_sum(flat, ctx, device))
    row = {"test_acc": counts["test"].accuracy, "test_loss": counts["test"].loss,
           "train_acc": counts["train"].accuracy}
    if "minibatch_stats" in counts:
        row["minibatch_stats_acc"] = counts["minibatch_stats"].accuracy
    # The live model's moving statistics (the weight average's are an average of them),
    # next to the noise of the statistics of a normalization group of training's size.
    reduce = torch.distributed.all_reduce if ctx.enabled else None
    row |= moving_average_errors(model, data.train_subset_batches(), reduce, group_size=cfg.norm_batch)
    sampler = cfg.sampler
    if sampler.name == "noniid" and (groups := data.recipe_subset_batches(
            sampler.labels_per_batch, sampler.images_per_label)) is not None:
        # a non-i.i.d. worker's batch is farther from the population than an i.i.d. one:
        # the noise BRN's averages must beat there (the pilot's relax_start for claim 3)
        noise = moving_average_errors(model, groups, reduce, group_size=cfg.norm_batch)
        row |= {f"batch_noise_noniid/{k}": noise[f"batch_noise/{k}"] for k in ("mean", "std")
                if f"batch_noise/{k}" in noise}
    return row


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train ``config`` (a resolved config as a plain dict); returns the run's summary."""
    kernels.pin(config["train"]["cpu_isa"])  # before this process's first torch op: it fixes the kernels
    # the typed view every function below reads (cfg.raw: the dict the record holds); the
    # commit is recorded, not part of the run's identity
    cfg = validate({**config, "git_commit": git_commit()})
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ctx, device = distributed.init(cfg.train.device)
    distributed.check_workers(cfg.data.workers, ctx)
    record = RunRecord(cfg.paths.runs, cfg.raw, main=ctx.is_main)  # rank 0 writes
    record.check_writable()
    done = record.summary()
    if done is not None:  # before loading anything: re-running a finished sweep is quick
        ctx.say(f"already {done['status']}: {record.dir} (test_acc {done['test_acc']}); nothing to do")
        return done
    record.check_threads()
    check_model_fits(cfg, device, ctx.world_size)
    data, model = prepare(cfg, ctx)
    if note := relaxation_warning(cfg):
        ctx.say(note, logging.WARNING)
    # Rank 0 holds the lock and speaks for all: another sweep process may have trained it.
    with record.lock():
        done = distributed.broadcast(record.summary(), ctx)
        if done is not None:
            ctx.say(f"already {done['status']} by another process: {record.dir}; nothing to do")
            return done
        with signals.training():  # from here a signal stops the run at its next step, checkpointed
            return train_run(cfg, record, data, model, ctx, device)


def stop_signalled(step: int, every: int, ctx: distributed.Context, device: torch.device) -> bool:
    """Whether a SIGTERM or SIGINT was noted (``brn_repro.signals``); the processes of a
    multi-process run agree every ``every`` steps, so all stop at the same step."""
    if not ctx.enabled:
        return signals.received() is not None
    if step % every:
        return False
    return distributed.all_reduce_sum([float(signals.received() is not None)], ctx, device)[0] > 0


def open_logger(cfg: RunConfig, record: RunRecord, ctx: distributed.Context) -> RunLogger:
    """One W&B run per training of the record from step 0 (its attempt id: same across resumes,
    new when trained again), grouped by profile and experiment, tagged with every experiment
    the run serves, the record's identity in its config as ``record``; rank 0 logs for all.
    The user's ``tags`` / ``notes`` / ``group`` (top-level keys) are added, ``logger.*`` winning."""
    options = dict(cfg.logger.options)
    tags = record.experiments()
    for extra in (cfg.tags, options.pop("tags", None)):  # the user's: top-level, then logger.tags
        tags += [extra] if isinstance(extra, str) else list(extra or [])
    options["notes"] = options.get("notes") or cfg.notes
    group = options.pop("group", None) or cfg.group or f"{cfg.profile_name}/{cfg.experiment}"
    return build_logger(cfg.logger.name, main=ctx.is_main, config={**public_config(cfg.raw), "record": record.dir.name},
                        run_dir=record.dir, run_name=run_name(cfg.raw), run_id=record.attempt_id, group=group,
                        tags=list(dict.fromkeys(tags)), **options)


def metrics_row(step: int, loss: torch.Tensor, accuracies: dict[str, float], images_per_second: float,
                training: Training, ctx: distributed.Context, device: torch.device) -> dict[str, float]:
    """One line of metrics.jsonl: the step's loss, the evaluation, and the model's state."""
    return {"step": step, "loss": loss.item(), **accuracies,
            "lr": training.scheduler.get_last_lr()[0], "weight_norm": weight_norm(training.model),
            "images_per_second": images_per_second,
            **distributed.all_reduce_mean(norm_diagnostics(training.model), ctx, device)}


def train_run(cfg: RunConfig, record: RunRecord, data: TrainingData, model: torch.nn.Module,
              ctx: distributed.Context = distributed.SINGLE_PROCESS,
              device: torch.device = distributed.CPU) -> dict[str, Any]:
    """The loop: train, evaluate, checkpoint, and leave the summary (rank 0 writes)."""
    # --- setup: the model on its device, what trains it, the checkpoint it goes on from
    train = cfg.train
    compiled = wants_compile(cfg, device, ctx.world_size, model)
    dtype, layout = apply_precision(cfg), memory_format(cfg, device, compiled)
    training, progress, net = set_up(cfg, record, model, data, compiled, dtype, layout, ctx, device)
    logger = open_logger(cfg, record, ctx)
    moving_statistics = distributed.MovingStatistics(model, ctx)
    divergence = FirstNonFinite(DIVERGENCE_SYNC_EVERY.get(device.type, 50), device)
    bar = progress_bar(main=ctx.is_main, show=train.progress, total=train.steps,
                       initial=progress.step, desc=run_name(cfg.raw), unit="step")
    model.train()
    progress.start_clocks()
    signalled = False
    for step in range(progress.step + 1, train.steps + 1):
        # --- forward and backward (the moving statistics synchronized over processes)
        x, y = place(data.train_batch(), device, dtype, layout)
        step_start = time.perf_counter()
        loss = forward_backward(net, x, y, training.optimizer, moving_statistics)
        if compiled and progress.compile_seconds is None:  # the first step compiles forward and backward
            progress.compile_seconds = time.perf_counter() - step_start
        evaluating = step % train.eval_every == 0 or step == train.steps
        # SIGTERM / SIGINT: checkpoint and stop (at the last step the run simply ends)
        signalled = step < train.steps and stop_signalled(step, divergence.every, ctx, device)
        stopping = step == train.stop_at_step or signalled
        saving = step % train.checkpoint_every == 0 or step == train.steps or stopping
        # --- divergence: no update, evaluation or checkpoint after a non-finite loss
        if (bad := divergence.check(loss, step, read_now=evaluating or saving)) is not None:
            progress.status, progress.diverged_step = "diverged", bad
            break
        # --- update
        training.update()
        progress.took_step(step)
        bar.update(1)
        # --- evaluation: a metrics row, in the record and the logger
        if evaluating:
            images_per_second = progress.images_per_second(data.global_batch)
            with progress.timing_evaluation():
                accuracies = evaluate(model, training.ema, data, cfg, step == train.steps, ctx, device,
                                      inference=net if compiled and ctx.world_size == 1 else None)
            row = metrics_row(step, loss, accuracies, images_per_second, training, ctx, device)
            progress.evaluated(row)
            record.log_metrics(row)
            logger.log(row, step)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['test_acc']:.1f}",
                            img_s=f"{images_per_second:.0f}")
            model.train()
            progress.restart_window()
        # --- checkpoint, and the end of this job's share (train.stop_at_step)
        if saving:
            save_checkpoint(record, training, progress)
        if stopping:
            progress.status = "stopped"
            break
    bar.close()
    return end_run(cfg, record, training, progress, logger, data, compiled, signalled, ctx, device)


def set_up(cfg: RunConfig, record: RunRecord, model: torch.nn.Module, data: TrainingData, compiled: bool,
           dtype: torch.dtype, layout: torch.memory_format, ctx: distributed.Context,
           device: torch.device) -> tuple[Training, Progress, torch.nn.Module]:
    """The model on its device, what trains it, the checkpoint it goes on from, and the
    network the loop calls (wrapped for several processes, compiled where it pays)."""
    model.to(device, dtype, memory_format=layout)
    optimizer = build_optimizer(cfg, model.parameters())
    training = Training(model, optimizer, build_lr_schedule(cfg, optimizer), data,
                        WeightEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay else None)
    progress = resume(record, training, ctx)
    if progress.step == 0:
        progress.weight_norm_init = weight_norm(model)
    progress.use_kernels(kernels.describe(compiled), ctx)
    net = distributed.wrap(model, ctx, device)  # after loading: every process starts equal
    if compiled:  # the norms switch to their plain-ops formulation (norm/_grouped.py)
        # A sweep trains run after run in one process; past 8 models per code object the
        # compiler would silently fall back to eager, so each run starts afresh.
        torch._dynamo.reset()
        net = compile_model(net)
    return training, progress, net


def end_run(cfg: RunConfig, record: RunRecord, training: Training, progress: Progress,
            logger: RunLogger, data: TrainingData, compiled: bool, signalled: bool,
            ctx: distributed.Context, device: torch.device) -> dict[str, Any]:
    """The summary, written for a completed or diverged run; a run stopped by a signal is
    checkpointed and has none yet."""
    if progress.status == "completed" and not progress.last:  # resumed from the final checkpoint: its summary was lost
        with progress.timing_evaluation():
            progress.last = evaluate(training.model, training.ema, data, cfg, True, ctx, device)
        logger.log(progress.last, progress.step)
    summary = summarize(progress, cfg.raw, record, data.global_batch, compiled, ctx, device)
    if signalled and progress.status == "stopped":
        logger.finish()
        signum = signals.received()
        ctx.say(f"stopped by {signals.name(signum) if signum else 'a signal to another process'} at step "
                f"{progress.step}: checkpointed in {record.dir}; rerun the same command to resume", logging.WARNING)
        return summary
    finish(summary, record, logger, ctx)
    return summary


# conf/ by its absolute path (brn_repro.paths: the checkout's, or the copy the wheel ships):
# relative, Hydra would look for a module `conf` when called as the console script
# (brn-train), whose task function is not in __main__
@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One run (Hydra calls it once per job of a sweep). Returns the final test accuracy,
    NaN for a run without one (diverged, stopped at train.stop_at_step or by a signal,
    failed on bad input, or not started after one), so that a sweeper that optimizes it
    (Optuna) records a failed trial instead of aborting on None. In a sweep every job's
    outcome is kept (``brn_repro.sweeps``) and a job's bad input fails that job only."""
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if sweep:
        signals.note_from_now()  # a sweep's worker (joblib, submitit); under cli's handlers, nothing changes
    if signals.received() is not None:  # the sweep was stopped before this run began
        return float("nan")
    try:
        config = resolve(cfg)
        if not sweep and HydraConfig.initialized() and (
                note := one_run_of_a_sweep(cfg, HydraConfig.get().sweeper.params)):
            log.warning(note)
        summary = run(config)
    except USER_ERRORS as err:
        log.error(f"error: {err}")
        if not sweep:
            sys.exit(2)
        sweeps.record_job("failed", reason=str(err))
        return float("nan")
    if sweep:
        sweeps.record_job(summary["status"], run=summary.get("run_dir"))
    test_acc = summary.get("test_acc")
    return float("nan") if test_acc is None else float(test_acc)


def sweep_size(params: dict[str, str]) -> int:
    """The number of jobs of ``hydra.sweeper.params``, split by Hydra's own sweeper (as
    scripts/reproduce.py's ``expand``): ``range()``, ``choice()``, quoted commas, ``[a,b]``."""
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    return len(jobs)


def one_run_of_a_sweep(cfg: DictConfig, params: dict[str, str] | None) -> str | None:
    """``experiment=NAME`` without ``-m`` trains one configuration of the experiment's
    sweep (``params``: its ``hydra.sweeper.params``), its own values and none of the swept
    ones: say which, and how to run them all."""
    if not params or cfg.experiment == "adhoc":
        return None
    runs = sweep_size(params)
    here = [f"{key}={OmegaConf.select(cfg, f'{key}.name' if (CONF_DIR / key).is_dir() else key)}"
            for key in params if not key.startswith("+")]
    unset = [key.lstrip("+") for key in params if key.startswith("+")]
    return (f"note: experiment={cfg.experiment} is a sweep of {runs} runs over {', '.join(params)}; "
            f"without -m this trains one, {' '.join(here)}" + (f" (none of {', '.join(unset)})" if unset else "")
            + f"; train them all with: brn-train -m experiment={cfg.experiment}")


def cli() -> None:
    """``brn-train`` (pyproject's [project.scripts]) and ``python -m brn_repro.train``:
    Hydra's command line, with its config-group mistakes (``+experiment=NAME``, an
    unknown option) as one line and exit 2 before Hydra composes anything; overrides that set a
    secret left out with a note (``secrets.public_argv``: Hydra's files and logs never see them)."""
    sys.argv[1:], left_out = public_argv(sys.argv[1:])  # first: no note below repeats a secret
    for note in left_out:
        print(note, file=sys.stderr)
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # SIGTERM / SIGINT: a run stops at its next step, checkpointed; a sweep's parent passes them on
    sweep = {"-m", "--multirun"} & set(sys.argv[1:])
    with signals.noted(signals.pass_on_to_workers if sweep else signals.stop_unless_training):
        main()
        signum = signals.received()
    if signum is not None:
        sys.exit(signals.exit_code(signum))
    if sweeps.failed_jobs:  # the summary line said which
        sys.exit(1)


if __name__ == "__main__":
    cli()
