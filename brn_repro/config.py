"""Check a resolved config before anything runs, and build the pieces it names.

Every mistake is one line that names the key and the fix, raised as
``ConfigError`` before any data is loaded or any record is written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import OmegaConf

from brn_repro.data.samplers import SAMPLER_NAMES
from brn_repro.norm import NORM_NAMES, build_norm
from brn_repro.norm.registry import NormFactory

OPTIMIZERS = ("sgd", "rmsprop", "adam")
LR_SCHEDULES = ("cosine", "step", "constant")
# Norms whose statistics come from the (per-worker) batch: they take per_worker_batch.
BATCH_NORMS = ("bn", "brn", "moving_average", "mabn")


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line naming the key."""


def _divide(total: int, part: int) -> int:
    if part is None or total is None or int(total) % int(part):
        raise ConfigError(
            f"data.global_batch={total} is not a multiple of data.per_worker_batch={part}; "
            "choose a per-worker batch that divides the global batch"
        )
    return int(total) // int(part)


# Config arithmetic for sweeps that keep the global batch fixed:
#   data.workers: ${div:${data.global_batch},${data.per_worker_batch}}
OmegaConf.register_new_resolver("div", _divide, replace=True)
OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b), replace=True)
OmegaConf.register_new_resolver("scale", lambda a, f: int(round(float(a) * float(f))), replace=True)


def _positive_int(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")


def norm_batch(config: dict[str, Any]) -> int:
    """Examples per normalization group: the per-worker batch, or half of it for the
    paper's split-halves control (each half normalized on its own)."""
    pwb = config["data"]["per_worker_batch"]
    return pwb // 2 if config["sampler"]["type"] == "noniid_split" else pwb


def validate(config: dict[str, Any]) -> None:
    data, train, sampler = config["data"], config["train"], config["sampler"]
    for key in ("per_worker_batch", "workers", "train_eval_size"):
        _positive_int(data[key], f"data.{key}")
    for key in ("steps", "eval_every", "checkpoint_every", "eval_batch", "warmup_steps"):
        if key == "warmup_steps" and train[key] == 0:
            continue
        _positive_int(train[key], f"train.{key}")
    if not isinstance(config["seed"], int):
        raise ConfigError(f"seed={config['seed']!r} must be an integer")
    if sampler["type"] not in SAMPLER_NAMES:
        raise ConfigError(f"sampler.type={sampler['type']!r} is not a sampler; use one of {SAMPLER_NAMES}")
    if sampler["type"] != "iid":
        labels, images = sampler["labels_per_batch"], sampler["images_per_label"]
        _positive_int(labels, "sampler.labels_per_batch")
        _positive_int(images, "sampler.images_per_label")
        if labels * images != data["per_worker_batch"]:
            raise ConfigError(
                f"data.per_worker_batch={data['per_worker_batch']} must equal sampler.labels_per_batch"
                f" x sampler.images_per_label = {labels} x {images} = {labels * images}"
            )
        if sampler["type"] == "noniid_split" and images % 2:
            raise ConfigError(
                f"sampler.images_per_label={images} must be even for noniid_split "
                "(each label's images are split across the two halves)"
            )
    norm = config["norm"]
    if norm["type"] not in NORM_NAMES:
        raise ConfigError(f"norm.type={norm['type']!r} is not a normalization; use one of {NORM_NAMES}")
    norm_factory(config)(4)  # builds one layer: r_max < 1, d_max < 0, bad eps ... fail here
    if train["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(
            f"train.lr_schedule={train['lr_schedule']!r} is not a schedule; use one of {LR_SCHEDULES}"
        )
    if config["optim"]["name"] not in OPTIMIZERS:
        raise ConfigError(f"optim.name={config['optim']['name']!r} is not an optimizer; use one of {OPTIMIZERS}")
    if not config["optim"]["lr"] > 0:
        raise ConfigError(f"optim.lr={config['optim']['lr']!r} must be > 0")
    stop = train.get("stop_at_step")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or not 0 < stop < train["steps"]):
        raise ConfigError(f"train.stop_at_step={stop!r} must be a step between 1 and train.steps-1 "
                          f"({train['steps'] - 1}), or null")
    decay = train.get("ema_decay")
    if decay is not None and not 0 < decay < 1:
        raise ConfigError(f"train.ema_decay={decay!r} must lie in (0, 1), or null for no EMA")
    if config["logger"]["kind"] not in ("wandb", "none"):
        raise ConfigError(f"logger.kind={config['logger']['kind']!r} must be wandb or none")


def norm_options(config: dict[str, Any]) -> dict[str, Any]:
    options = {k: v for k, v in config["norm"].items() if k != "type"}
    if config["norm"]["type"] in BATCH_NORMS:
        options["per_worker_batch"] = norm_batch(config)
    return options


def norm_factory(config: dict[str, Any]) -> NormFactory:
    try:
        return build_norm(config["norm"]["type"], **norm_options(config))
    except ValueError as err:
        message = str(err)
        if not message.startswith("norm"):
            message = f"norm.{message}"
        raise ConfigError(message) from None


def relaxation_warning(config: dict[str, Any]) -> str | None:
    """BRN whose limits never leave 1 / 0 within the run is plain batchnorm: say so."""
    norm, steps = config["norm"], config["train"]["steps"]
    if norm["type"] == "brn" and norm.get("r_max_end_step") is not None:
        start = norm.get("relax_start") or 0
        if start >= steps:
            return (
                f"note: norm.relax_start={start} >= train.steps={steps}: r_max stays 1 and d_max 0, "
                "so this BRN run is plain batchnorm; set norm.relax_start (and the end steps) lower"
            )
    return None


def build_optimizer(config: dict[str, Any], params) -> torch.optim.Optimizer:
    o = config["optim"]
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o.get("momentum", 0.0),
                               nesterov=o.get("nesterov", False), weight_decay=o.get("weight_decay", 0.0))
    if o["name"] == "rmsprop":
        return torch.optim.RMSprop(params, lr=o["lr"], alpha=o.get("alpha", 0.9), eps=o.get("eps", 1.0),
                                   momentum=o.get("momentum", 0.0), weight_decay=o.get("weight_decay", 0.0))
    return torch.optim.Adam(params, lr=o["lr"], weight_decay=o.get("weight_decay", 0.0))


def build_lr_schedule(config: dict[str, Any], optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    train = config["train"]
    steps, warmup, kind = train["steps"], train.get("warmup_steps") or 0, train["lr_schedule"]
    milestones = [round(f * steps) for f in train.get("step_milestones", [])]
    gamma = train.get("step_gamma", 0.1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if kind == "step":
            return gamma ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
