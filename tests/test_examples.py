"""Every training command that README.md and ``brn-train --help`` show, composed as
printed (each combination of a sweep, an experiment's own sweep included): it is a valid
config, the global batch it records is the one it trains, a BRN run relaxes before its
last step, a "global batch N" in its comment is the one it trains, and a command README
shows failing fails with the line README shows."""

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from brn_repro.config import ConfigError, relaxation_warning, resolve, validate

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"^(?:\$ )?(?:torchrun .*?-m brn_repro\.train|python -m brn_repro\.train|brn-train)\s(.*)$")


def readme_commands() -> list[tuple[str, str, str | None]]:
    lines = (ROOT / "README.md").read_text().splitlines()
    commands, continued, first = [], None, 0
    for i, line in enumerate(lines):
        if continued is not None:
            continued += " " + line.strip().rstrip("\\").strip()
            if not line.rstrip().endswith("\\"):
                commands.append((f"README.md:{first}", continued, None))
                continued = None
            continue
        match = COMMAND.match(line.strip())
        if not match or "-sc " in line or "--help" in line:
            continue
        if line.rstrip().endswith("\\"):
            first, continued = i + 1, match.group(1).rstrip("\\").strip()
            continue
        error = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("error:") else None
        commands.append((f"README.md:{i + 1}", match.group(1), error))
    return commands


def help_commands() -> list[tuple[str, str, str | None]]:
    done = subprocess.run([sys.executable, "-m", "brn_repro.train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    common = done.stdout.split("== Common commands ==")[1].split("==")[0]
    return [("--help", line, None) for line in
            (m.group(1) for m in map(COMMAND.match, (raw.strip() for raw in common.splitlines())) if m)]


def overrides_and_comment(command: str) -> tuple[list[str], str]:
    """The Hydra overrides of a command as printed (flags, pipes and Hydra's own keys
    left out), and its comment: README's after '#', --help's after two spaces."""
    text = command.split(" | ")[0]
    text, _, comment = text.partition(" #") if " #" in text else text.partition("  ")
    tokens = [t for t in text.split() if "=" in t and not t.startswith(("-", "hydra"))]
    return [t.strip("'\"") for t in tokens], comment


def combinations(overrides: list[str], sweep_params: dict[str, str]) -> list[list[str]]:
    """Every combination of the command's sweeps (a,b,c) and its experiment's, each axis
    cut to its first and last values (the checks do not depend on the ones between)."""
    axes = []
    for key, values in [*(o.split("=", 1) for o in overrides), *sweep_params.items()]:
        values = str(values).split(",") if "[" not in str(values) else [str(values)]
        axes.append([f"{key}={v}" for v in dict.fromkeys([values[0], values[-1]])])
    return [list(combo) for combo in itertools.product(*axes)]


def compose_config(overrides: list[str]) -> tuple[dict, dict[str, str]]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params or {})
        with open_dict(cfg):
            del cfg["hydra"]
        return resolve(cfg), params


EXAMPLES = readme_commands()


@pytest.mark.parametrize("where,command,error", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_readme_training_command_trains_what_it_says(where, command, error):
    check_command(command, error)


def test_help_commands_train_what_they_say():
    commands = help_commands()
    assert len(commands) >= 5
    for _, command, _ in commands:
        check_command(command, None)


def check_command(command: str, error: str | None) -> None:
    overrides, comment = overrides_and_comment(command)
    singles = [o for o in overrides if "," not in o.split("=", 1)[1] or "[" in o]
    if error is not None:
        with pytest.raises(ConfigError) as err:
            validate(compose_config(overrides)[0])
        assert f"error: {err.value}" == error
        return
    _, params = compose_config(singles)
    swept = params if " -m " in f" {command} " else {}
    for combo in combinations(overrides, swept):
        config = validate(compose_config(combo)[0])
        assert config.global_batch == config.data.global_batch, (command, combo)
        assert relaxation_warning(config) is None, (command, combo)
        if config.norm.name == "brn":
            assert config.norm.options["relax_start"] < config.train.steps, (command, combo)
        if said := re.search(r"global batch (\d+)", comment):
            assert config.global_batch == int(said.group(1)), (command, combo)


def test_the_examples_are_found():
    """README's examples, each of them found (the checks above would pass on none)."""
    found = {command.split(" #")[0].strip() for _, command, _ in EXAMPLES}
    assert "norm=brn data.per_worker_batch=4 train.steps=3000" in found
    assert any(c.startswith("-m norm=bn,brn data.per_worker_batch=1,2,4,32") for c in found)
    assert any("data.workers=16" in c for c in found)  # the torchrun example, continued
    assert any(error for _, _, error in EXAMPLES)
