"""What an install outside the checkout gets (issue 24): the layers import with torch
alone; the wheel carries conf/ inside the package (brn_repro/conf/) and declares torch as
its one unconditional dependency (the runner's are the extra ``harness``); installed where
it shadows the checkout, it trains from any directory; without the harness, ``brn-train``
says in one line how to get it."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# What the layers must not pull in: the harness's libraries (pyproject.toml's extra `harness`).
HARNESS_ONLY = ("hydra", "omegaconf", "wandb", "pandas", "matplotlib", "seaborn", "scipy", "timm", "torchvision",
                "yaml", "tqdm")


def python(code, *, cwd=ROOT, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def loaded_modules(statement):
    done = python(f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))")
    assert done.returncode == 0, done.stderr
    return {name.partition(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


def test_the_layers_import_torch_and_the_standard_library_alone():
    torch_alone = loaded_modules("import torch")
    layers = loaded_modules("import brn_repro.norm")
    added = layers - torch_alone
    # (torch itself loads tqdm where it is installed, for torch.hub: not the layers' doing)
    assert not added & set(HARNESS_ONLY), sorted(added & set(HARNESS_ONLY))
    # the rest: ours, the standard library's, or torch's own dependencies, which it loads
    # lazily (torch.compiler.disable: sympy, mpmath, triton); modules of no distribution
    # (made at run time) aside
    torchs = requirements_of("torch")
    owners = importlib.metadata.packages_distributions()
    foreign = {m: owners[m] for m in added - set(sys.stdlib_module_names) - {"brn_repro"}
               if m in owners and not {canonical(d) for d in owners[m]} & torchs}
    assert not foreign, foreign


def canonical(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements_of(distribution: str) -> set[str]:
    """``distribution`` and what it requires, transitively (extras aside), as installed."""
    found, todo = set(), [distribution]
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        found.add(name)
        try:
            todo += [r for r in importlib.metadata.requires(name) or () if "extra ==" not in r]
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


BLOCKED_BUILD = """
import json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import raises ModuleNotFoundError, importlib.util.find_spec says None
import torch
from brn_repro.norm import build_norm, norm_names
built, missing = [], {}
for name in norm_names():
    try:
        layer = build_norm(name)(4)
    except ModuleNotFoundError as err:
        missing[name] = err.name.partition(".")[0]
        continue
    built.append(name)
    if name in ("bn", "brn"):
        layer.train()(torch.randn(8, 4, 3, 3)).sum().backward()
print(json.dumps({"built": built, "missing": missing}))
"""


def test_the_layers_build_and_train_where_the_harness_is_not_installed():
    """As ``pip install brn_repro`` leaves it: the harness's libraries cannot be imported.
    A norm may need timm (FRN, EvoNorm-S0: timm's layers), asked for only when built."""
    done = subprocess.run([sys.executable, "-c", BLOCKED_BUILD, ",".join(HARNESS_ONLY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert {"bn", "brn", "moving_average", "gn", "mabn"} <= set(got["built"]), got
    assert set(got["missing"].values()) <= {"timm"}, got


def test_brn_train_without_the_harness_says_how_to_get_it():
    done = python("import sys; sys.modules['hydra'] = None; sys.argv = ['brn-train', '--help']; "
                  "from brn_repro.console import brn_train; brn_train()")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: brn-train needs the harness, and hydra is not installed: pip install 'brn_repro[harness]'"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of what it is built from (a build in the checkout
    leaves build/ and *.egg-info behind, and build/lib's stale files go into the next one)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("brn_repro", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("brn_repro-*.whl")
    return built


def requirements(metadata: str) -> tuple[list[str], list[str]]:
    """(unconditional Requires-Dist, those of the extra `harness`)"""
    lines = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
             if line.startswith("Requires-Dist: ")]
    return ([line for line in lines if ";" not in line],
            [line.partition(";")[0].strip() for line in lines if line.endswith('extra == "harness"')])


def test_the_wheel_carries_every_module_and_config_and_needs_torch_alone(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(metadata).decode()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(entry_points).decode()
    assert "brn_repro/conf/config.yaml" in names
    configs = {f"brn_repro/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert {c for c in configs if c.startswith("brn_repro/conf/experiment/")} and configs <= names, \
        sorted(configs - names)
    # pyproject.toml lists the packages: a new subpackage left out of the list fails here
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "brn_repro").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    unconditional, harness = requirements(metadata)
    assert [r.replace(" ", "") for r in unconditional] == ["torch>=2.4"]
    assert {"hydra-core>=1.3", "omegaconf>=2.3", "torchvision>=0.19", "timm>=1.0"} <= set(harness)
    assert "brn-train = brn_repro.console:brn_train" in entry_points


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.mark.slow
def test_the_installed_wheel_trains_from_any_directory(tmp_path, wheel, tiny_fashion_mnist):
    """Installed where it shadows the checkout (PYTHONPATH), inside another repository's
    tree (a project's venv): ``--help``, a config directory of one's own, and a 2-step run
    whose record names no commit (it is not this checkout's code)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("someone else's project\n")
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-qm", "one")
    site = project / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "PYTHONPATH": str(site)}

    where = python("import brn_repro, brn_repro.paths as p; print(brn_repro.__file__); print(p.CONF_DIR)",
                   cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    package, conf = map(Path, where.stdout.split())
    assert package.is_relative_to(site) and conf == site / "brn_repro" / "conf"

    for command in ([sys.executable, "-m", "brn_repro.train"], [str(site / "bin" / "brn-train")]):
        shown = subprocess.run([*command, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True,
                               timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert any(line.startswith("norm: ") and "brn" in line for line in shown.stdout.splitlines()), shown.stdout

    own = tmp_path / "my_conf"
    (own / "optim").mkdir(parents=True)
    (own / "optim" / "my_sgd.yaml").write_text("defaults:\n  - sgd\n  - _self_\n\nmomentum: 0.5\n")
    composed = subprocess.run([sys.executable, "-m", "brn_repro.train", "--config-dir", str(own), "optim=my_sgd",
                               "--cfg", "job"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert composed.returncode == 0, composed.stderr
    assert yaml.safe_load(composed.stdout)["optim"]["momentum"] == 0.5

    runs = tmp_path / "runs"
    trained = subprocess.run(
        [sys.executable, "-m", "brn_repro.train", f"dataset.root={tiny_fashion_mnist}", "dataset.download=false",
         f"paths.runs={runs}", "train.steps=2", "train.eval_every=1", "data.per_worker_batch=4", "data.workers=4",
         "model.width=4", "data.train_eval_size=100", "train.progress=false", "logger=none",
         f"hydra.run.dir={tmp_path / 'outputs'}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    (summary,) = runs.rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"
    assert yaml.safe_load((summary.parent / "config.yaml").read_text())["git_commit"] is None
    assert not any(elsewhere.iterdir()), "nothing written where it was run from"


def test_training_imports_nothing_of_the_analysis():
    """brn_repro.analysis reads what training wrote; nothing that trains imports it."""
    done = subprocess.run([sys.executable, "-c", "import sys, brn_repro.train, brn_repro.loop, brn_repro.records; "
                           "print(sorted(m for m in sys.modules if m.startswith('brn_repro.analysis')))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
