"""Experiment loggers the training runner writes metrics through.

The runner always writes its own local run record (config, metrics.jsonl,
summary.json), so a logger is only a *mirror* of that record into a tracking
service. Two kinds exist:

* ``none`` -- :class:`NullLogger`, does nothing (the local record is enough).
* ``wandb`` -- :class:`WandbLogger`, one Weights & Biases run per training run.

Only rank 0 of a multi-process run mirrors it: elsewhere ``build_logger`` gives the
:class:`NullLogger` (and ``progress_bar`` a silent bar).

``wandb`` is imported lazily inside :class:`WandbLogger` so that ``logger=none``
(and the test suite for everything else) never pays for, or depends on, wandb.

Offline is a first-class mode: without credentials the run is written to
``<run_dir>/wandb/offline-run-*`` and a single hint line says how to upload it
later (``wandb sync``) or look at it now in the terminal (``wandb leet``).
"""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from tqdm import tqdm

from brn_repro.secrets import scrub

__all__ = [
    "RunLogger",
    "NullLogger",
    "WandbLogger",
    "LOGGERS",
    "build_logger",
    "progress_bar",
    "wandb_config",
    "has_wandb_credentials",
    "resolve_wandb_mode",
    "offline_hint",
]

WANDB_MODES = ("auto", "online", "offline", "disabled", "shared")
# Older spellings wandb still accepts in WANDB_MODE; mapped so the hint logic sees one name.
_WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
DEFAULT_WANDB_HOST = "https://api.wandb.ai"


@runtime_checkable
class RunLogger(Protocol):
    """What the training runner calls; one instance per training run."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullLogger:
    """Discards everything: used when the local run record is the only output wanted,
    and on every process but rank 0. Takes any logger's options and ignores them."""

    OPTIONS = None  # any logger's settings are taken, and ignored

    def __init__(self, **options: Any) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


# --------------------------------------------------------------------------- config


def wandb_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config as W&B takes it: nested as Hydra composed it, secrets dropped, values JSON's.

    W&B stores each top-level key as ``{"value": ...}`` and shows nested keys dotted
    (``data.per_worker_batch``), its server path ``config.data.value.per_worker_batch``:
    what ``wandb_workspaces`` builds from ``Config("data.per_worker_batch")``.
    """
    return _jsonable(scrub(cfg))


def _jsonable(value: Any) -> Any:
    """Make a config value something W&B stores faithfully (Paths and other objects -> str)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# ----------------------------------------------------------------------------- mode


def has_wandb_credentials() -> bool:
    """True when wandb could authenticate without prompting: env key/token file or a netrc entry.

    wandb 0.31 has no public helper for this (its netrc reader lives in the
    private ``wandb.sdk.lib.wbauth``), so this mirrors its lookup with the
    standard library: ``$NETRC`` if set, else ``~/.netrc``, machine = the host
    of ``$WANDB_BASE_URL`` (default api.wandb.ai). Nothing is sent anywhere.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).netloc
    netrc_path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(netrc_path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def offline_hint(run_dir: Path | str | None, reason: str) -> str:
    """The one line telling a user where an offline run went and how to see or upload it."""
    wandb_dir = Path(run_dir if run_dir is not None else os.environ.get("WANDB_DIR") or ".")
    wandb_dir = wandb_dir / "wandb"
    return (
        f"wandb: offline ({reason}); sync later with: wandb sync {wandb_dir}/offline-run-*"
        f"  | view now in the terminal: wandb leet {wandb_dir}"
    )


def _normalise_mode(mode: str) -> str:
    normalised = _WANDB_MODE_ALIASES.get(mode.strip().lower(), mode.strip().lower())
    if normalised not in WANDB_MODES:
        raise ValueError(f"unknown wandb mode {mode!r}; expected one of {WANDB_MODES}")
    return normalised


def resolve_wandb_mode(
    requested: str = "auto", *, run_dir: Path | str | None = None, announce: bool = True
) -> str:
    """Decide online/offline/disabled, and print the offline hint line to stderr when offline.

    Precedence follows wandb's own (an explicit argument beats the environment):
    an explicit ``requested`` mode wins; ``auto`` defers to ``$WANDB_MODE`` when
    set, else goes online only when credentials exist (:func:`has_wandb_credentials`),
    because an online init without them would prompt for a key or fail mid-sweep.
    """
    mode = _normalise_mode(requested)
    reason = f"mode={mode}"
    if mode == "auto":
        env_mode = os.environ.get("WANDB_MODE", "").strip()
        if env_mode and _normalise_mode(env_mode) != "auto":
            mode, reason = _normalise_mode(env_mode), f"WANDB_MODE={env_mode}"
        elif has_wandb_credentials():
            mode = "online"
        else:
            mode, reason = "offline", "no credentials"
    if mode == "offline" and announce:
        print(offline_hint(run_dir, reason), file=sys.stderr, flush=True)
    return mode


# ---------------------------------------------------------------------------- wandb


# W&B's run metadata holds the command line as typed (secrets included, and W&B uploads it
# on sync), the host and the git remote: every W&B run of the project leaves it off. The
# config's ``git_commit`` says which code ran.
PRIVATE_SETTINGS = {"x_disable_meta": True}
# The runner's own progress bar and record say what happened; keep wandb's console
# wrapping and system sampling out of a CPU training loop.
RUNNER_SETTINGS = {"quiet": True, "console": "off", "x_disable_stats": True, "save_code": False}


# Metrics whose W&B summary is their best and their last value (``test_acc.max``,
# ``test_acc.last``): the runs table then sorts by either.
BEST_AND_LAST = ("test_acc", "train_acc", "minibatch_stats_acc")
# Tag of a run that stopped on a non-finite loss (it also finishes with exit code 1).
DIVERGED_TAG = "diverged"


def is_per_layer(key: str) -> bool:
    """``norm/<layer>/r_clip_frac``, ``ema_error/<layer>/mean``, ... (the means over layers,
    ``norm/mean/...`` and ``ema_error/mean``, are not): hidden from W&B's automatic panels,
    which would otherwise draw six panels per normalization layer."""
    parts = key.split("/")
    return len(parts) >= 3 and parts[1] != "mean"


class WandbLogger:
    """One W&B run per training attempt: same id across resumes and chunks, metrics against the step.

    ``run_id`` is the record's attempt id (``RunRecord.attempt_id``: new whenever the record
    trains from step 0, kept in its checkpoint) and the run is opened with ``resume="allow"``,
    so an interrupted run that resumes from its checkpoint (or the next ``train.stop_at_step``
    chunk) appends to the same W&B run, and a record trained again from step 0 (damaged, or
    deleted after a fix) is a new W&B run; offline, each call writes its own ``offline-run-*``
    directory with that id and ``wandb sync`` uploads them in order as one run. W&B keeps the
    first value logged at a step, so steps re-trained after a resume (between the checkpoint
    and the crash) keep their first values there; the local record holds the re-trained ones.
    ``reinit="finish_previous"`` makes every construction a fresh run even when Hydra
    multirun executes several jobs in one process.
    """

    # the settings a user may give as logger.<key> (the rest the runner fills in)
    OPTIONS = ("project", "entity", "mode", "tags", "group", "notes")

    def __init__(
        self,
        *,
        config: Mapping[str, Any],
        run_dir: Path | str,
        run_name: str,
        group: str | None,
        run_id: str | None = None,
        job_type: str = "train",
        project: str = "brn-repro",
        entity: str | None = None,
        mode: str = "auto",
        tags: list[str] | None = None,
        notes: str | None = None,
        settings: Mapping[str, Any] | None = RUNNER_SETTINGS,
    ) -> None:
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # wandb falls back to a temp dir otherwise
        self.mode = resolve_wandb_mode(mode, run_dir=run_dir)
        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            name=run_name,
            id=run_id,
            resume="allow" if run_id else None,
            tags=list(tags) if tags else None,
            notes=notes,
            config=wandb_config(config),
            dir=str(run_dir),
            mode=self.mode,
            reinit="finish_previous",
            settings=wandb.Settings(**{**(settings or {}), **PRIVATE_SETTINGS}),
        )
        # Plot every metric against the training step we pass, not wandb's call counter.
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")
        for key in BEST_AND_LAST:
            self._run.define_metric(key, step_metric="step", summary="max,last")
        self._defined: set[str] = set()
        self._last_step: int | None = None
        self._finished = False

    @property
    def run_id(self) -> str:
        return self._run.id

    @property
    def sync_dir(self) -> Path:
        """``<run_dir>/wandb/offline-run-<time>-<id>`` (or ``run-...`` online): what ``wandb sync`` takes."""
        return Path(self._run.settings.sync_dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log one history row at ``step``; several calls with the same step merge into one row."""
        for key in metrics.keys() - self._defined:
            if is_per_layer(key):
                self._run.define_metric(key, step_metric="step", hidden=True)
        self._defined.update(metrics)
        step = int(step)
        self._run.log({**metrics, "step": step}, step=step)
        self._last_step = step

    def _commit_pending_row(self) -> None:
        """Write out the buffered row of the last step.

        wandb holds a row open until a larger step arrives; if it were written
        only at finish, its values (e.g. the last eval's ``loss``) would
        overwrite the final summary written just before.
        """
        if self._last_step is not None:
            self._run.log({}, step=self._last_step, commit=True)

    def summary(self, values: dict[str, Any]) -> None:
        """Set the run's final summary (status, steps_done, ...); these win over the last
        history row. The accuracies keep their ``max`` / ``last`` summaries (the record's
        final value is the last one; a diverged run's is None: ``status`` says why). A
        diverged run is tagged :data:`DIVERGED_TAG`."""
        self._commit_pending_row()
        values = {k: v for k, v in values.items() if k not in BEST_AND_LAST}
        self._run.summary.update(_jsonable(scrub(values)))
        if values.get("status") == "diverged" and DIVERGED_TAG not in self._run.tags:
            self._run.tags = (*self._run.tags, DIVERGED_TAG)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (a nonzero exit code marks it failed in W&B); safe to call twice."""
        if self._finished:
            return
        self._finished = True
        self._run.finish(exit_code=exit_code)


# ``logger.name`` -> the logger; ``conf/logger/<name>.yaml`` holds its keyword arguments.
LOGGERS: dict[str, type[RunLogger]] = {"wandb": WandbLogger, "none": NullLogger}


def logger_class(name: str) -> type[RunLogger]:
    """The logger ``name`` (``build_logger`` asks, and ``config.validate`` before a run)."""
    if name not in LOGGERS:
        raise ValueError(f"logger.name={name!r} is not a logger; use one of {', '.join(LOGGERS)}")
    return LOGGERS[name]


def build_logger(name: str, *, main: bool = True, **options: Any) -> RunLogger:
    """The logger ``name``, built with ``options``; on any process but rank 0
    (``main=False``) a :class:`NullLogger`: one process mirrors the run."""
    return logger_class(name)(**options) if main else NullLogger()


def progress_bar(*, main: bool = True, show: bool = True, **options: Any) -> tqdm:
    """The terminal's progress bar (``tqdm`` with ``options``): rank 0's, when ``show``."""
    return tqdm(disable=not (show and main), dynamic_ncols=True, **options)
