"""The run config's schema: one typed view of the resolved config, built at the boundary.

Hydra composes conf/ into a dict; ``RunConfig.parse(config)`` checks every value's type
and range against the dataclasses below (one ``ConfigError`` line naming the key and
what it must be) and returns the view that modules read by attribute
(``cfg.train.steps``); ``train.run`` parses once and every function below it takes that
view, never the dict (``cfg.raw`` is the dict, for the record, its identity and W&B).
A group whose keys depend on the implementation it picks (a
norm's options, a model's sizes, a logger's settings) is typed as far as it is common:
its ``name``, with the rest in ``options``, checked by what it builds (the norm table,
the model builders). Rules that relate keys to each other (a sampler recipe that must
fill the per-worker batch, a stop step below the run's steps) are no type's business:
``brn_repro.config.validate`` holds them.

Every group picks its implementation with the key ``name``.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line naming the key."""


def _spec(default: Any = dataclasses.MISSING, *, positive: bool = False, at_least_zero: bool = False,
          interval: tuple[float, float, bool, bool] | None = None, noun: str | None = None) -> Any:
    """A field with its rule: ``positive`` / ``at_least_zero`` integers, a number in
    ``interval`` = (low, high, open_low, open_high), ``noun`` for a choice's message."""
    meta = {"positive": positive, "at_least_zero": at_least_zero, "interval": interval, "noun": noun}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE = (0.0, math.inf, True, False)
FRACTION = (0.0, 1.0, True, False)        # (0, 1]
NON_NEGATIVE = (0.0, math.inf, False, False)


@dataclass(frozen=True)
class DataConfig:
    per_worker_batch: int = _spec(positive=True)  # examples each (virtual) worker normalizes over
    workers: int = _spec(positive=True)
    global_batch: int | None = _spec(None, positive=True)
    train_size: int | None = _spec(None, positive=True)
    train_eval_size: int = _spec(2000, positive=True)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _spec(positive=True)
    eval_every: int = _spec(positive=True)
    checkpoint_every: int = _spec(positive=True)
    lr_schedule: Literal["cosine", "step", "constant"] = _spec("cosine", noun="a schedule")
    warmup_steps: int = _spec(0, at_least_zero=True)
    step_milestones: list[float] = _spec([0.5, 0.75], interval=FRACTION)
    step_gamma: float = _spec(0.1, interval=FRACTION)
    ema_decay: float | None = _spec(None, interval=(0.0, 1.0, True, True))
    eval_batch: int = _spec(500, positive=True)
    eval_test_size: int | None = _spec(None, positive=True)
    minibatch_stats_eval: bool = _spec(False)
    minibatch_eval_labels: int = _spec(25, positive=True)
    minibatch_eval_images: int = _spec(2, positive=True)
    threads: int | None = _spec(None, positive=True)
    stop_at_step: int | None = _spec(None, positive=True)
    channels_last: Literal["auto", True, False] = _spec("auto")
    compile: Literal["auto", True, False] = _spec("auto")
    cpu_isa: Literal["native", "avx2"] = _spec("native", noun="a kernel set")  # brn_repro.kernels
    precision: str = _spec("float32")  # performance.PRECISIONS holds what each one means
    device: str = _spec("auto")
    progress: bool = _spec(True)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "rmsprop", "adam"] = _spec(noun="an optimizer")
    lr: float = _spec(interval=POSITIVE)
    weight_decay: float = _spec(0.0, interval=NON_NEGATIVE)
    momentum: float = _spec(0.0, interval=(0.0, 1.0, False, True))
    nesterov: bool = _spec(False)
    alpha: float = _spec(0.9, interval=FRACTION)
    eps: float = _spec(1.0, interval=POSITIVE)


@dataclass(frozen=True)
class SamplerConfig:
    name: str = _spec()  # brn_repro.data.samplers holds the samplers
    labels_per_batch: int | None = _spec(None, positive=True)
    images_per_label: int | None = _spec(None, positive=True)

    def group_size(self, per_worker_batch: int) -> int:
        """Examples per normalization group: the per-worker batch, or for the paper's
        split control (``noniid_split``) one image of each drawn label, i.e.
        ``per_worker_batch // images_per_label`` = ``labels_per_batch`` (the paper's two
        halves of 16 at 16 x 2): a group holding two images of a drawn label would keep
        the label structure the control exists to remove."""
        if self.name == "noniid_split":
            return per_worker_batch // self.images_per_label
        return per_worker_batch


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = _spec(0, at_least_zero=True)
    flip: bool = _spec(False)


@dataclass(frozen=True)
class DatasetConfig:
    name: str = _spec()
    root: str | None = _spec(None)
    download: bool = _spec(False)
    image_size: int | None = _spec(None, positive=True)
    loader_workers: int = _spec(4, at_least_zero=True)  # DataLoader workers of a streamed dataset
    augment: AugmentConfig = _spec(AugmentConfig())


@dataclass(frozen=True)
class PathsConfig:
    runs: str = _spec("runs")
    data: str = _spec("data")
    lock_timeout: float | None = _spec(None, interval=POSITIVE)
    lock_stale: float | None = _spec(None, interval=POSITIVE)


@dataclass(frozen=True)
class Choice:
    """A group that picks an implementation by ``name``; its other keys are the
    implementation's options, checked by what builds it."""
    name: str
    options: dict[str, Any]


@dataclass(frozen=True)
class RunConfig:
    seed: int
    data: DataConfig
    train: TrainConfig
    optim: OptimConfig
    sampler: SamplerConfig
    dataset: DatasetConfig
    paths: PathsConfig
    norm: Choice
    model: Choice
    logger: Choice
    experiment: str = "adhoc"
    profile_name: str = "default"
    # the user's own labels (W&B tags, notes, group; config.yaml): not the run's identity
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    group: str | None = None
    # the resolved config it was parsed from: what the record, its identity and W&B hold
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def norm_batch(self) -> int:
        """Examples per normalization group (``SamplerConfig.group_size``)."""
        return self.sampler.group_size(self.data.per_worker_batch)

    @property
    def global_batch(self) -> int:
        return self.data.workers * self.data.per_worker_batch

    @classmethod
    def parse(cls, config: dict[str, Any]) -> RunConfig:
        """The typed view of a resolved config; one ConfigError at the first bad value."""
        seed = config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed={seed!r} must be an integer")
        groups = {name: _parse(hint, config.get(name) or {}, name)
                  for name, hint in get_type_hints(cls).items()
                  if isinstance(hint, type) and dataclasses.is_dataclass(hint) and hint is not Choice}
        choices = {name: _choice(config.get(name) or {}, name) for name in ("norm", "model", "logger")}
        labels = {"tags": _value(list[str], config.get("tags") or [], "tags", {}),
                  "notes": _value(str | None, config.get("notes"), "notes", {}),
                  "group": _value(str | None, config.get("group"), "group", {})}
        return cls(seed=seed, experiment=str(config.get("experiment", "adhoc")),
                   profile_name=str(config.get("profile_name", "default")), **groups, **choices, **labels,
                   raw=config)


def check_value(value: Any, hint: Any, key: str, **rule: Any) -> Any:
    """One value against a type and a rule (``positive``, ``at_least_zero``, ``interval``),
    for keys that only some implementations take (a model's width)."""
    return _value(hint, value, key, rule)


def _choice(node: dict[str, Any], group: str) -> Choice:
    if not isinstance(node.get("name"), str):
        raise ConfigError(f"{group}.name={node.get('name')!r} must name a {group} (conf/{group}/)")
    return Choice(node["name"], {k: v for k, v in node.items() if k != "name"})


def _parse(cls: type, node: Any, prefix: str) -> Any:
    if not isinstance(node, dict):
        raise ConfigError(f"{prefix}={node!r} must be a mapping of {prefix}'s keys")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in node:
        if key not in known:
            raise ConfigError(f"{prefix}.{key} is not a key of {prefix}; it takes {', '.join(known)}")
    values = {}
    for name, spec in known.items():
        key = f"{prefix}.{name}"
        if name not in node:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key} is missing; set it in the config (conf/) or on the command line")
            continue
        values[name] = _value(hints[name], node[name], key, spec.metadata)
    return cls(**values)


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _value(hint: Any, value: Any, key: str, meta: dict[str, Any]) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    nullable = origin in (Union, types.UnionType) and type(None) in args
    if nullable:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = get_origin(hint), get_args(hint)
    or_null = ", or null" if nullable else ""
    if dataclasses.is_dataclass(hint):
        return _parse(hint, value, key)
    if origin is Literal:
        if not any(type(v) is type(value) and v == value for v in args):  # 1 is not true
            names = [_yaml(a) for a in args]
            if meta.get("noun"):
                raise ConfigError(f"{key}={value!r} is not {meta['noun']}; use one of {', '.join(names)}")
            raise ConfigError(f"{key}={value!r} must be {', '.join(names[:-1])} or {names[-1]}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_value(args[0], v, f"{key}[]", meta) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if meta.get("positive") and not (whole and value >= 1):
            raise ConfigError(f"{key}={value!r} must be a positive integer{or_null}")
        if meta.get("at_least_zero") and not (whole and value >= 0):
            raise ConfigError(f"{key}={value!r} must be an integer >= 0{or_null}")
        if not whole:
            raise ConfigError(f"{key}={value!r} must be an integer{or_null}")
        return value
    if hint is float:
        low, high, open_low, open_high = meta.get("interval") or (-math.inf, math.inf, False, False)
        fits = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                and (low < value if open_low else low <= value)
                and (value < high if open_high else value <= high))
        if not fits:
            lo, hi = "(" if open_low else "[", ")" if open_high or high == math.inf else "]"
            raise ConfigError(f"{key}={value!r} must be a finite number in {lo}{low:g}, {high:g}{hi}{or_null}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string{or_null}")
        return value
    return value
