"""Issue 21, item 3: no secret in anything the project writes or sends (brn_repro.secrets).

Values are planted under every spelling of a credential's name, as a value of the
environment and through ``${oc.env:...}``; then every file under the test's directory
(the run record, Hydra's output dir and multirun.yaml, the offline W&B run, the
reproduction's plans, membership file and logs) is searched for them byte by byte, the
way ``strings`` would find them in W&B's binary ``.wandb`` log."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_wandb_logger import offline_env  # noqa: F401 (a fixture)

from brn_repro.config import resolve
from brn_repro.secrets import is_secret_key, public_argv, scrub

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
PROFILES = sorted(p.stem for p in (ROOT / "conf" / "profile").glob("*.yaml"))

# key -> planted value; every key is named like a credential (the spellings)
NAMED = {"ssh_key": "plant-ssh-1", "private_key": "plant-private-2", "hfKey": "plant-hf-3",
         "mytoken": "plant-mytoken-4", "github_tokens": "plant-github-5", "db_password": "plant-db-6",
         "AWS_SECRET": "plant-aws-7", "api_key": "plant-api-8"}
ENV_SECRET = ("SITE_CREDENTIAL", "plant-env-secret-9")  # a credential of the environment
ENV_PLAIN = ("SCRATCH_NAME", "plant-oc-env-10")  # any value read through ${oc.env:...}
PLANTED = (*NAMED.values(), ENV_SECRET[1], ENV_PLAIN[1])


def planted_overrides() -> list[str]:
    # under recipe: the config's home for values of one's own (a top-level key of one's own is an error)
    return [*(f"+recipe.{key}={value}" for key, value in NAMED.items()),
            f"+recipe.mirror={ENV_SECRET[1]}",  # a value equal to a secret of the environment
            f"+recipe.scratch=${{oc.env:{ENV_PLAIN[0]}}}", "+recipe.scratch_copy=${recipe.scratch}"]


def leaks(root: Path) -> list[str]:
    """``file: value`` for every planted value in any file under ``root`` (bytes, as ``strings``)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        found += [f"{path.relative_to(root)}: {value}" for value in PLANTED if value.encode() in raw]
    return found


@pytest.fixture
def planted_env(offline_env, monkeypatch):  # noqa: F811
    """The planted environment, on offline W&B without credentials (HOME inside tmp_path)."""
    for name, value in (ENV_SECRET, ENV_PLAIN):
        monkeypatch.setenv(name, value)
    return offline_env


def train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "brn_repro.train", *overrides]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def tiny(runs: Path, data: Path, *extra: str) -> list[str]:
    return [f"dataset.root={data}", "dataset.download=false", "model.width=4", "train.steps=4",
            "train.eval_every=2", "data.train_eval_size=100", "train.threads=1", "train.progress=false",
            f"paths.runs={runs}", *extra]


# --- the scrub itself ------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "secret"), [
    *((key, True) for key in NAMED),
    ("notes.api_token", True), ("WANDB_API_KEY", True), ("apiKey", True), ("access-token", True),
    ("client_secret", True), ("passwd", True), ("Credentials", True), ("gcpCredentialFile", True),
    ("per_worker_batch", False), ("name", False), ("steps", False), ("relax_start", False),
])
def test_a_key_is_a_secret_when_its_name_holds_a_credential_word(key, secret):
    assert is_secret_key(key) is secret


def test_scrub_drops_secret_keys_environment_values_and_keys_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(*ENV_SECRET)
    config = {"seed": 0, **NAMED, "mirror": f"x-{ENV_SECRET[1]}", "scratch": ENV_PLAIN[1],
              "train": {"steps": 4, "hub": {"githubToken": "t"}, "milestones": [0.5, ENV_SECRET[1]]},
              "vault": {"password": "p"}, "empty": {}, "from_environment": ["scratch"]}
    assert scrub(config) == {"seed": 0, "train": {"steps": 4, "milestones": [0.5]}, "empty": {}}


def test_command_line_secrets_are_left_out_with_a_note_naming_the_key_only(monkeypatch):
    monkeypatch.setenv(*ENV_SECRET)
    argv = ["-m", "norm=brn", *planted_overrides(), "hydra.job.env_set.HF_TOKEN=plant-hf-3",
            "hydra.job.config.override_dirname.exclude_keys=[seed]", "--config-dir", "/data/tokens"]
    kept, notes = public_argv(argv)
    assert kept == ["-m", "norm=brn", f"+recipe.scratch=${{oc.env:{ENV_PLAIN[0]}}}",
                    "+recipe.scratch_copy=${recipe.scratch}",
                    "hydra.job.config.override_dirname.exclude_keys=[seed]", "--config-dir", "/data/tokens"]
    (note,) = notes
    assert note.startswith("note: +recipe.ssh_key, +recipe.private_key, +recipe.hfKey, ")
    assert "hydra.job.env_set.HF_TOKEN" in note
    assert not [value for value in PLANTED if value in note]


def test_no_key_of_the_projects_config_looks_like_a_secret():
    """The pattern is wide (any key holding key, token, ...): every key of every profile's
    and experiment's composed config, and every axis its sweep adds, must stay clear of it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for profile in [None, *PROFILES]:
            for experiment in [None, *EXPERIMENTS]:
                chosen = [f"{group}={name}" for group, name in (("profile", profile), ("experiment", experiment))
                          if name]
                head = compose("config", overrides=chosen, return_hydra_config=True)
                params = head.hydra.sweeper.params
                axes = list(OmegaConf.to_container(params)) if params else []
                config = OmegaConf.to_container(head, resolve=False)
                del config["hydra"]
                keys = [*axes, *dotted_keys(config)]
                assert not [key for key in keys if is_secret_key(key)], (profile, experiment)
                assert scrub(config) == config, (profile, experiment)


def dotted_keys(tree, prefix=""):
    for key, value in tree.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from dotted_keys(value, f"{prefix}{key}.")


def test_resolve_lists_the_keys_the_environment_gave_values(monkeypatch):
    monkeypatch.setenv(*ENV_PLAIN)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = resolve(compose("config", overrides=[f"+recipe.scratch=${{oc.env:{ENV_PLAIN[0]}}}",
                                                      "+recipe.scratch_copy=${recipe.scratch}"]))
    assert config["from_environment"] == ["recipe.scratch", "recipe.scratch_copy"]
    public = scrub(config)
    assert "scratch" not in public["recipe"] and "scratch_copy" not in public["recipe"]
    assert "from_environment" not in public


# --- every file a run writes -------------------------------------------------------------------


def test_a_logged_run_writes_no_secret_anywhere(planted_env, tiny_fashion_mnist):
    """One run logged to W&B offline: its record, Hydra's outputs/ (.hydra/) and the
    offline W&B run (the .wandb log, debug logs, files/) hold none of the planted values."""
    done = train(planted_env, *tiny(planted_env / "runs", tiny_fashion_mnist, "logger=wandb"),
                 *planted_overrides())
    (record,) = (planted_env / "runs").glob("*/summary.json")
    assert list(record.parent.glob("wandb/offline-run-*/run-*.wandb"))
    assert list((planted_env / "outputs").glob("*/*/.hydra/overrides.yaml"))
    assert leaks(planted_env) == []
    assert not [v for v in PLANTED if v in done.stdout + done.stderr]


def test_a_sweep_writes_no_secret_anywhere(planted_env, tiny_fashion_mnist):
    """``-m``: multirun.yaml, every job's .hydra/, the launcher's log lines (what
    scripts/reproduce.py keeps in logs/), and a secret written in a config file."""
    local = planted_env / "local_conf" / "site"
    local.mkdir(parents=True)
    (local / "cluster.yaml").write_text(f"# @package _global_\nrecipe:\n  site_token: {NAMED['mytoken']}\n"
                                        f"  site_note: {ENV_SECRET[1]}\n")
    done = train(planted_env, "-m", "--config-dir", str(planted_env / "local_conf"),
                 *tiny(planted_env / "runs", tiny_fashion_mnist, "logger=none"), "seed=0,1", "+site=cluster",
                 *planted_overrides())
    assert len(list((planted_env / "runs").glob("*/summary.json"))) == 2
    (sweep,) = (planted_env / "multirun").glob("*/*/multirun.yaml")
    assert len(list(sweep.parent.glob("*/.hydra/config.yaml"))) == 2
    assert [leak for leak in leaks(planted_env) if not leak.startswith("local_conf/")] == []  # ours, not its
    assert not [v for v in PLANTED if v in done.stdout + done.stderr]


def test_reproductions_plans_hold_no_secret(planted_env, tiny_fashion_mnist):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from reproduce import expand_cached
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    base = ["profile=quick", f"paths.runs={planted_env / 'runs'}", *planted_overrides()]
    configs = expand_cached("fig1_baseline", base, planted_env / "runs")
    assert len(configs) == 30 and list((planted_env / "runs" / "plans").glob("*.json"))  # 2 norms x 15 seeds
    assert leaks(planted_env) == []


@pytest.mark.slow  # a miniature make reproduce (~1 min)
def test_a_reproduction_writes_no_secret_anywhere(planted_env, tiny_fashion_mnist):
    """scripts/reproduce.py with planted overrides, logged to W&B offline: plans,
    experiments/<name>.json, logs/, the records, their W&B runs and the aggregate's (whose process
    holds the overrides in its command line), the sweep's Hydra output and results/."""
    command = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--profile", "quick", "--jobs", "1", "--wandb",
               "--experiments", "fig1_baseline", "--runs", str(planted_env / "runs"),
               "--out", str(planted_env / "results"), f"dataset.root={tiny_fashion_mnist}",
               "dataset.download=false", "train.steps=4", "train.eval_every=2", "model.width=4",
               "data.train_eval_size=100", "hydra.sweeper.params.seed=0",
               f"hydra.sweep.dir={planted_env / 'multirun'}", *planted_overrides()]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list((planted_env / "runs" / "logs").glob("*.log"))
    assert (planted_env / "runs" / "experiments" / "fig1_baseline.json").is_file()
    assert list((planted_env / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))  # the aggregate's
    assert leaks(planted_env) == []
