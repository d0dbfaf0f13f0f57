"""Check a resolved config before anything runs, and build the pieces it names.

Every mistake is one line that names the key and the fix, raised as
``ConfigError`` before any data is loaded or any record is written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from brn_repro.data.imagefolder import IMAGENET_MEAN
from brn_repro.data.samplers import check_sampler
from brn_repro.dataset_facts import IMAGE_SIZES, NUM_CLASSES, STATS
from brn_repro.loggers import logger_class
from brn_repro.models import build_model, check_model_input
from brn_repro.norm import build_norm, norm_spec
from brn_repro.norm.registry import NormFactory
from brn_repro.performance import PRECISIONS
from brn_repro.schema import POSITIVE, ConfigError, RunConfig, check_value
from brn_repro.secrets import FROM_ENVIRONMENT, env_valued_keys


def _divide(total: int, part: int) -> int:
    if isinstance(part, bool) or not isinstance(part, int) or part < 1:
        raise ConfigError(f"data.per_worker_batch={part!r} must be a positive integer")
    if total is None or int(total) % part:
        raise ConfigError(
            f"recipe.global_batch={total} is not a multiple of data.per_worker_batch={part}; "
            "choose a per-worker batch that divides the global batch, or set data.workers"
        )
    return int(total) // int(part)


# Config arithmetic for a global batch kept fixed (conf/config.yaml):
#   data.workers: ${div:${recipe.global_batch},${data.per_worker_batch}}
OmegaConf.register_new_resolver("div", _divide, replace=True)
OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b), replace=True)
OmegaConf.register_new_resolver("scale", lambda a, f: int(round(float(a) * float(f))), replace=True)



def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as a plain dict. A resolver's or interpolation's failure
    (``${div:...}`` of numbers that do not divide, a missing key) is one ConfigError
    naming the key. Keys whose value comes from the environment (``${oc.env:...}``,
    directly or through another key) are listed under ``secrets.FROM_ENVIRONMENT``: the
    run record leaves them out, and so do the run's identity and W&B (``secrets.scrub``)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        # OmegaConf wraps a resolver's own error (our ConfigError) in its message only
        reason = (str(getattr(err, "msg", None) or err).splitlines() or [type(err).__name__])[0]
        reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", reason)
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{key}: {reason}" if key else reason) from None
    if keys := env_valued_keys(OmegaConf.to_container(cfg, resolve=False)):
        config[FROM_ENVIRONMENT] = keys
    return config


def check_probe_recipe(cfg: RunConfig) -> None:
    """The minibatch-statistics probe (``train.minibatch_stats_eval``) as the paper
    ran it: test batches with the training groups' images per label and MORE
    distinct labels (16 x 2 in training, 25 x 2 at test). Batches shaped like the
    training ones would hand batchnorm the same label structure it overfit to, and
    measure nothing. Labels are checked against the classes where they are known
    here; an ImageFolder's are checked where its batches are built."""
    train, sampler, dataset = cfg.train, cfg.sampler, cfg.dataset.name
    if not train.minibatch_stats_eval:
        return
    labels, images = train.minibatch_eval_labels, train.minibatch_eval_images
    if sampler.name != "iid":
        if images != sampler.images_per_label:
            raise ConfigError(
                f"train.minibatch_eval_images={images} must equal sampler.images_per_label="
                f"{sampler.images_per_label} (the probe keeps the training images per label); "
                f"set recipe.noniid.eval_images={sampler.images_per_label}")
        if labels <= sampler.labels_per_batch:
            raise ConfigError(
                f"train.minibatch_eval_labels={labels} must exceed sampler.labels_per_batch="
                f"{sampler.labels_per_batch} (the probe's test batches hold more labels than a "
                f"training group); set recipe.noniid.eval_labels to at least {sampler.labels_per_batch + 1}")
    classes = NUM_CLASSES.get(dataset)
    if classes is not None and labels > classes:
        raise ConfigError(
            f"train.minibatch_eval_labels={labels} exceeds the {classes} classes of "
            f"dataset {dataset} (a probe batch holds distinct labels); "
            f"set recipe.noniid.eval_labels to at most {classes}")


def validate(config: dict[str, Any]) -> RunConfig:
    """Check a resolved config before anything runs; returns its typed view. Every
    value's type and range is the schema's (``brn_repro.schema``); what is left here
    are the rules that relate keys, and the names that registries hold."""
    cfg = RunConfig.parse(config)
    data, train, sampler = cfg.data, cfg.train, cfg.sampler
    if unknown := sorted(set(config) - TOP_LEVEL_KEYS):
        raise ConfigError(f"{unknown[0]} is not a key of the config (a typo, or +key=...?); the top-level keys "
                          f"are {', '.join(sorted(TOP_LEVEL_KEYS - {FROM_ENVIRONMENT, 'git_commit'}))}; "
                          "label a run with tags=[...], notes=... or group=..., keep values of your own under recipe.")
    if data.global_batch is not None and data.global_batch != cfg.global_batch:
        raise ConfigError(f"data.global_batch={data.global_batch} is not what trains: data.workers x "
                          f"data.per_worker_batch = {data.workers} x {data.per_worker_batch}; set "
                          f"recipe.global_batch={data.global_batch} (the workers follow it) or data.workers")
    validate_model(config["model"])
    if cfg.dataset.name == "imagefolder" and cfg.dataset.image_size is None:
        raise ConfigError("dataset.image_size=None must be a positive integer for dataset=imagefolder "
                          "(its images come in many sizes)")
    try:  # what the sampler and logger ask of their names and options, before any data
        check_sampler(sampler.name, data.per_worker_batch, sampler.labels_per_batch, sampler.images_per_label)
        allowed = logger_class(cfg.logger.name).OPTIONS
        if allowed is not None and (unknown := sorted(set(cfg.logger.options) - set(allowed))):
            raise ValueError(f"logger.{unknown[0]} is not a setting of logger={cfg.logger.name}; "
                             f"it takes {', '.join(allowed)}")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_probe_recipe(cfg)
    check_norm(cfg)
    if train.stop_at_step is not None and not train.stop_at_step < train.steps:
        raise ConfigError(f"train.stop_at_step={train.stop_at_step!r} must be a step between 1 and "
                          f"train.steps-1 ({train.steps - 1}), or null")
    if train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision={train.precision!r} is not a precision; "
                          f"use one of {', '.join(PRECISIONS)}")
    return cfg


# A resolved config's top level: the schema's fields, the recipe, and what run() and
# resolve() add (the commit; the keys read from the environment).
TOP_LEVEL_KEYS = {f.name for f in dataclasses.fields(RunConfig)} | {"recipe", "git_commit", FROM_ENVIRONMENT}


def validate_model(model: dict[str, Any]) -> None:
    """Sizes of the model, before any data is loaded (the model is built after it): the
    small CNN's width is a channel count, a CIFAR ResNet's a multiplier."""
    width, depth = model.get("width"), model.get("depth")
    if model["name"] == "small_cnn" or isinstance(width, int):
        check_value(width, int if model["name"] == "small_cnn" else int | None, "model.width", positive=True)
    else:
        check_value(width, float | None, "model.width", interval=POSITIVE)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6):
        raise ConfigError(f"model.depth={depth!r} must be 6n+2 >= 8 (20, 32, 44, 56, 110)")


# Training holds each parameter's weight, gradient and up to two optimizer slots (Adam's
# moments; RMSProp's square average and momentum); a weight average (train.ema_decay) one more.
TRAINING_COPIES = 4


def check_model_fits(cfg: RunConfig, device: torch.device, world_size: int = 1) -> None:
    """Before any data loads, on the meta device (shapes, no memory): the norm layers take
    the shapes training gives them, and training fits in the device's free memory. One
    ConfigError line otherwise (model.width=65536 was an allocator traceback, and
    dataset.image_size=4 at per-worker batch 1 a norm's traceback at step 1)."""
    channels, size, classes = model_input(cfg)
    batch = cfg.global_batch // world_size  # this process's share of each step
    model = f"model={cfg.model.name}" + "".join(f" model.{k}={v}" for k, v in cfg.model.options.items())
    try:
        check_model_input(cfg.model.name, image_size=size, in_channels=channels, dataset=cfg.dataset.name,
                          **cfg.model.options)
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(
                cfg.model.name, num_classes=classes, in_channels=channels, image_size=size,
                norm_layer=norm_factory(cfg), **cfg.model.options).parameters())
            sites, activations = norm_sites(cfg, channels, size, classes, batch)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:  # the smallest input a norm gets, through a real layer: its own checks decide
        smallest = min(sites, key=lambda shape: math.prod(shape[2:]))
        norm_factory(cfg)(smallest[1]).train()(torch.randn(smallest, generator=torch.Generator().manual_seed(0)))
    except ValueError as err:
        raise ConfigError(f"{model} on {size}x{size} images with data.per_worker_batch="
                          f"{cfg.data.per_worker_batch}: {err}") from None
    copies = TRAINING_COPIES + bool(cfg.train.ema_decay)
    need = (params * copies + activations) * PRECISIONS[cfg.train.precision][0].itemsize
    free = free_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"{model} needs about {_size(need)} to train ({params:.2g} parameters x {copies} copies, and the "
            f"activations of a {batch}-image batch), more than the {_size(free)} free on {device.type}; "
            "make the model or the batch (data.workers x data.per_worker_batch) smaller")


def model_input(cfg: RunConfig) -> tuple[int, int, int]:
    """(channels, image size, classes) of the dataset, known before any file is read; an
    ImageFolder's classes are not (one stands in: the head is small beside the body)."""
    name = cfg.dataset.name
    channels = len(STATS[name][0]) if name in STATS else len(IMAGENET_MEAN)
    return channels, cfg.dataset.image_size or IMAGE_SIZES[name], NUM_CLASSES.get(name, 1)


class _NormSite(nn.Identity):
    """Where a norm layer goes, in the dry run: it keeps the shape it is given."""

    def __init__(self, num_features: int, shapes: list[tuple[int, ...]]):
        super().__init__()
        self.shapes = shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x


def norm_sites(cfg: RunConfig, channels: int, size: int, classes: int,
               batch: int) -> tuple[list[tuple[int, ...]], int]:
    """A training forward of the model on the meta device, norms left out (most have no
    meta kernels): the shapes its norm layers get, and the activations it keeps for the
    backward (every layer's output, in elements)."""
    shapes: list[tuple[int, ...]] = []
    net = build_model(cfg.model.name, num_classes=classes, in_channels=channels, image_size=size,
                      norm_layer=partial(_NormSite, shapes=shapes), **cfg.model.options)
    kept = [0]

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        kept[0] += sum(t.numel() for t in (output if isinstance(output, tuple) else (output,))
                       if isinstance(t, torch.Tensor))

    for leaf in (m for m in net.modules() if not any(m.children())):
        leaf.register_forward_hook(count)
    net.train()(torch.empty(batch, channels, size, size))
    return shapes, kept[0]


def free_memory(device: torch.device) -> int | None:
    """Bytes free for training on ``device`` (a GPU's free memory, the host's available
    memory); None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} TB"


def norm_options(cfg: RunConfig) -> dict[str, Any]:
    options = dict(cfg.norm.options)
    if norm_spec(cfg.norm.name).per_worker:  # its statistics are each worker's
        options["per_worker_batch"] = cfg.norm_batch
    return options


def _norm_error(err: ValueError) -> ConfigError:
    message = str(err)
    return ConfigError(message if message.startswith("norm") else f"norm.{message}")


def norm_factory(cfg: RunConfig) -> NormFactory:
    try:
        return build_norm(cfg.norm.name, **norm_options(cfg))
    except ValueError as err:
        raise _norm_error(err) from None


def check_norm(cfg: RunConfig) -> None:
    """Build one layer: every option (momentum, r_max < 1, d_max < 0, eps ...) of every
    norm is checked where the layer checks it, as one line naming the key."""
    try:
        norm_factory(cfg)(4)
    except ValueError as err:
        raise _norm_error(err) from None


def relaxation_warning(cfg: RunConfig) -> str | None:
    """BRN whose limits never leave 1 / 0 within the run is plain batchnorm: say so."""
    norm, steps = cfg.norm.options, cfg.train.steps
    if cfg.norm.name == "brn" and norm.get("r_max_end_step") is not None:
        start = norm.get("relax_start") or 0
        if start >= steps:
            return (
                f"note: norm.relax_start={start} >= train.steps={steps}: r_max stays 1 and d_max 0, "
                "so this BRN run is plain batchnorm; set norm.relax_start (and the end steps) lower"
            )
    return None
