"""Secrets out of everything the project writes or sends: one scrub for the run records,
Hydra's output, W&B, and the reproduction's plans and logs.

A secret is a key named like a credential (its name holds key, token, secret, password,
passwd or credential, in any case: ``ssh_key``, ``hfKey``, ``github_tokens``,
``AWS_SECRET``), a value holding a credential of the environment (the value of a variable
so named, e.g. ``WANDB_API_KEY``), or a value read from the environment (``${oc.env:...}``,
directly or through another key: ``config.resolve`` lists these keys under
:data:`FROM_ENVIRONMENT`). Three places apply it:

* :func:`scrub` -- every config the project writes (``records.public_config``, W&B's config
  and summary, scripts/reproduce.py's plans and membership file);
* :func:`public_argv` -- the command line, before Hydra reads it (``train.cli``): a secret
  given there never reaches Hydra's overrides.yaml, hydra.yaml, multirun.yaml or its
  launcher's log lines (which reproduce.py keeps in logs/), nor W&B (whose run metadata,
  the command line among it, is off: ``loggers.PRIVATE_SETTINGS``);
* :class:`ScrubHydraOutput` -- a Hydra callback (conf/config.yaml) for secrets written in
  config files: it drops them from the composed config before Hydra saves it.

Why two places for Hydra: the command line is cleaned where it enters, which covers every
file, log line and launcher (joblib, SLURM) at once; what config files hold is composed by
Hydra and saved before any of the project's code runs, so only a callback can reach it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from brn_repro.files import write_atomic

SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential")
# Shorter values of the environment ("1", "true") would match every config value.
MIN_SECRET_LENGTH = 8
# config.resolve lists here the dotted keys whose values came from ${oc.env:...}.
FROM_ENVIRONMENT = "from_environment"
# Hydra's own keys are no secrets (``exclude_keys``); under env_set users name variables.
HYDRA_ENV_SET = "hydra.job.env_set."


def is_secret_key(key: object) -> bool:
    """True for a key (or dotted path) named like a credential, in any case or spelling."""
    name = str(key).lower()
    return any(word in name for word in SECRET_WORDS)


def environment_secrets() -> list[str]:
    """The values of the environment's variables named like credentials."""
    return [value for name, value in os.environ.items()
            if is_secret_key(name) and len(value) >= MIN_SECRET_LENGTH]


def holds_secret(value: object, secrets: list[str] | None = None) -> bool:
    """True when a string holds a credential of the environment."""
    secrets = environment_secrets() if secrets is None else secrets
    return isinstance(value, str) and any(secret in value for secret in secrets)


def env_valued_keys(raw: dict[str, Any]) -> list[str]:
    """Dotted keys of an unresolved config whose values come from ``${oc.env:...}``,
    directly or by interpolating such a key (or a node above one)."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)

    walk(raw, "")
    found = {key for key, value in flat.items() if "oc.env:" in value}
    grown = True
    while grown:  # keys interpolating a found key are found too
        grown = False
        for key, value in flat.items():
            refs = re.findall(r"\$\{([A-Za-z0-9_.]+)\}", value)
            if key not in found and any(f == r or f.startswith(f"{r}.") for r in refs for f in found):
                found.add(key)
                grown = True
    return sorted(found)


def _plain(tree: Any) -> Any:
    """An OmegaConf container as plain dicts and lists (resolved); anything else as it is."""
    return OmegaConf.to_container(tree, resolve=True) if OmegaConf.is_config(tree) else tree


def scrub(tree: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``tree`` without secrets, at any depth (inside lists too): keys named like
    credentials with their whole subtree, strings holding a credential of the environment,
    the keys :data:`FROM_ENVIRONMENT` lists, and groups that held nothing but secrets."""
    tree = _plain(tree)
    env: set[str] = set()
    if isinstance(tree, Mapping) and FROM_ENVIRONMENT in tree:
        env = set(tree[FROM_ENVIRONMENT] or ())
        tree = {k: v for k, v in tree.items() if k != FROM_ENVIRONMENT}
    return _public(tree, environment_secrets() if secrets is None else secrets, env, "")


def _public(tree: Any, secrets: list[str], env: set[str], prefix: str) -> Any:
    if isinstance(tree, Mapping):
        public = {}
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            if dotted in env or is_secret_key(key) or holds_secret(value, secrets):
                continue
            clean = _public(value, secrets, env, f"{dotted}.")
            if clean or not isinstance(value, Mapping) or not value:  # emptied groups leave no trace
                public[key] = clean
        return public
    if isinstance(tree, list | tuple):
        return [_public(item, secrets, set(), "") for item in tree if not holds_secret(item, secrets)]
    return tree


def _secret_argument(arg: str, secrets: list[str]) -> bool:
    if holds_secret(arg, secrets):
        return True
    if arg.startswith("-") or "=" not in arg:  # a flag, or a flag's value: only its value counts
        return False
    key = arg.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
    if key.startswith("hydra.") or key.startswith("hydra/"):
        return key.startswith(HYDRA_ENV_SET) and is_secret_key(key[len(HYDRA_ENV_SET):])
    return is_secret_key(key)


def public_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """The command line without the overrides that set a secret, and a note naming the
    keys left out (never a value). Nothing here reads a secret from the config."""
    secrets = environment_secrets()
    left_out = [arg for arg in argv if _secret_argument(arg, secrets)]
    if not left_out:
        return argv, []
    keys = [arg.split("=", 1)[0] if "=" in arg and not holds_secret(arg.split("=", 1)[0], secrets)
            else "an argument" for arg in left_out]
    return [arg for arg in argv if arg not in left_out], [
        f"note: {', '.join(keys)} left out: they name or hold a credential, which a run never records "
        "(to hand one to a library, set it in the environment)"]


def scrub_composed(cfg: DictConfig) -> bool:
    """Drop secrets from a composed config's own keys (not ``hydra``) in place, interpolations
    unresolved (a ``${oc.env:...}`` stays a reference); True when there were any."""
    raw = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    public = scrub(raw)
    if public == raw:
        return False
    with read_write(cfg), open_dict(cfg):
        for key, value in raw.items():
            if key not in public:
                del cfg[key]
            elif public[key] != value:
                cfg[key] = public[key]
    return True


class ScrubHydraOutput(Callback):
    """Hydra saves the composed config (``.hydra/config.yaml``, ``multirun.yaml``) before a
    job runs: this drops the secrets that config files put into it first. A sweep's job is
    composed again after its start; its config.yaml is then saved again, scrubbed."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        scrub_composed(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        scrub_composed(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if scrub_composed(config) and config.hydra.output_subdir is not None:
            task = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
            saved = Path(config.hydra.runtime.output_dir) / config.hydra.output_subdir / "config.yaml"
            write_atomic(saved, OmegaConf.to_yaml(task))
