"""The command line's own checks, before Hydra composes anything: config-group mistakes
as one line (``+experiment=NAME``, an option its group does not hold), and the
``--help`` text's list of groups."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from brn_repro.config import ConfigError
from brn_repro.paths import CONF_DIR


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def help_groups() -> str:
    """The ``--help`` text's config groups (conf/hydra/help/brn.yaml): the top-level ones,
    one line each as Hydra's stock help writes them. Hydra's own list recurses into the
    experiments' condition groups (conf/experiment/conditions/), which are no user's choice."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # composing: Hydra's search path
        loader = GlobalHydra.instance().config_loader()
        groups = {g: loader.get_group_options(g) for g in loader.list_groups("") if g != "hydra"}
    else:
        groups = {p.name: _group_options(p.name) for p in CONF_DIR.iterdir()
                  if p.is_dir() and p.name != "hydra"}
    return "\n".join(f"{g}: {', '.join(sorted(o))}" for g, o in sorted(groups.items()))


OmegaConf.register_new_resolver("brn_help_groups", help_groups, replace=True)


def check_command_line(argv: list[str]) -> None:
    """The config-group mistakes that Hydra reports in several lines (exit 1) before the
    job starts, as one ConfigError: ``+experiment=NAME`` (experiment is in the defaults
    list: ``experiment=NAME``) and an option that its group does not hold. Anything this
    cannot read (flags, sweeps other than a,b,c, another config directory) is left to Hydra."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, _ = parser.parse_known_args(argv)
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except (argparse.ArgumentError, HydraException, SystemExit):
        return  # Hydra says why
    if (args.shell_completion or args.config_path or args.config_dir or args.config_name
            or any(o.key_or_group.startswith("hydra.searchpath") for o in overrides)):
        return
    defaults = [next(iter(d)) for d in OmegaConf.load(CONF_DIR / "config.yaml").defaults
                if not isinstance(d, str)]
    for o in overrides:
        group = o.key_or_group
        if o.is_hydra_override() or o.is_delete() or not (CONF_DIR / group).is_dir():
            continue
        if o.is_add() and group in defaults:
            raise ConfigError(f"{o.input_line}: {group} is in the defaults list; "
                              f"write {o.input_line.lstrip('+')}")
        try:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        except HydraException:  # glob(...), range(...): Hydra expands them
            continue
        options = _group_options(group)
        for v in values:
            if isinstance(v, str) and "${" not in v and v not in options:
                raise ConfigError(f"{group}={v}: conf/{group}/ has no {v}.yaml; "
                                  f"choose one of: {', '.join(options)}")
