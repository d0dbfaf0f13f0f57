"""One-off: run records written before 2026-12 (record format 1) moved to today's format,
so that the runner reads one format and hashes run identities in the keys it has today.

    python scripts/migrate_records.py RUNS_DIR [--dry-run] [--rename-in FILE ...]

Format 1 spelled the key that picks an implementation ``norm.type``, ``sampler.type`` and
``logger.kind``, kept the recipe's values at the top level (``norm_momentum``,
``schedule``, ``noniid_recipe``), lacked three keys added later (``train.precision``,
``data.train_size``, ``dataset.image_size``) and hashed the identity in its own spelling
with those keys left out. For each run directory under RUNS_DIR this

- rewrites config.yaml in today's spelling, the missing keys at the values that meant
  "as before they existed" (float32, the whole train split, the dataset's own size);
- gives checkpoint.pt the keys a checkpoint has today (``run`` naming the new directory,
  an ``attempt_id``, ``eval_seconds`` and ``weight_norm_init`` from the summary where it
  has them) and summary.json its new ``run_dir`` and the same ``attempt_id``;
- renames the directory to the name its identity has today (``records.run_dir_name``);

and rewrites each experiment's plan (RUNS_DIR/experiments/<name>.json) to match, and the
run names in each ``--rename-in`` file (results that name runs, e.g.
results/kernels/spread.csv). Numbers are not touched. Running it again is a no-op; a
directory whose new name is taken, or that holds a lock (a run training), is said in one
line and left as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from brn_repro.files import write_atomic
from brn_repro.records import (
    MEMBERSHIP_DIR,
    find_records,
    new_attempt_id,
    public_config,
    read_summary,
    run_dir_name,
)

# format 1's key -> today's (the same group, the same values)
RENAMED = {("norm", "type"): "name", ("sampler", "type"): "name", ("logger", "kind"): "name"}
# format 1's top-level recipe keys -> their key under ``recipe``
TO_RECIPE = {"norm_momentum": "norm_momentum", "schedule": "schedule", "noniid_recipe": "noniid"}
# keys newer than format 1, at the values that meant "as before they existed"
ADDED = {("train", "precision"): "float32", ("data", "train_size"): None, ("dataset", "image_size"): None}


def todays_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (either format) in today's format, as a new dict."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for (group, old), new in RENAMED.items():
        node = config.get(group)
        if isinstance(node, dict) and old in node:
            config[group] = {new: node.pop(old), **node}
    for old, new in TO_RECIPE.items():
        if old in config:
            config.setdefault("recipe", {}).setdefault(new, config.pop(old))
    for (group, key), value in ADDED.items():
        config.setdefault(group, {}).setdefault(key, value)
    return config


def migrate_run(run_dir: Path, dry_run: bool) -> Path:
    """The run's files in today's format and its directory renamed; its new path."""
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    config = todays_config(recorded)
    target = run_dir.with_name(run_dir_name(config))
    if config == recorded and target == run_dir:
        return run_dir  # in today's format already
    if target != run_dir and target.exists():
        raise FileExistsError(f"{target} exists already, a record of the same identity: compare the two and "
                              f"remove one, then run this again")
    if dry_run:
        return target
    summary = read_summary(run_dir / "summary.json")
    checkpoint = run_dir / "checkpoint.pt"
    attempt_id = None
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # data, never code
        attempt_id = state.get("attempt_id") or (summary or {}).get("attempt_id") or new_attempt_id()
        for key in ("eval_seconds", "weight_norm_init"):
            state.setdefault(key, (summary or {}).get(key, 0.0 if key == "eval_seconds" else None))
        state.update(run=target.name, attempt_id=attempt_id)
        write_atomic(checkpoint, lambda tmp: torch.save(state, tmp))
    if summary is not None:
        summary.update(run_dir=str(target.resolve()), **({"attempt_id": attempt_id} if attempt_id else {}))
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(public_config(config), sort_keys=False))
    run_dir.rename(target)
    return target


def migrate_plans(runs: Path, dry_run: bool) -> int:
    """Each experiment's plan naming its runs by today's directory names; plans changed."""
    changed = 0
    for path in sorted((runs / MEMBERSHIP_DIR).glob("*.json")):
        members = json.loads(path.read_text())
        new = [{"run": run_dir_name(c), "config": public_config(c)}
               for c in (todays_config(m["config"]) for m in members)]
        if new != members:
            changed += 1
            if not dry_run:
                write_atomic(path, json.dumps(new))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a runs directory (paths.runs), e.g. runs/quick")
    parser.add_argument("--dry-run", action="store_true", help="say what would move, change nothing")
    parser.add_argument("--rename-in", type=Path, nargs="+", default=[], metavar="FILE",
                        help="files that name runs of RUNS_DIR (results CSVs): renamed as the runs move")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        print(f"error: {args.runs} is not a directory; give the runs directory (paths.runs)", file=sys.stderr)
        return 2
    if missing := [str(p) for p in args.rename_in if not p.is_file()]:
        print(f"error: --rename-in {' '.join(missing)}: no such file; give files that exist", file=sys.stderr)
        return 2
    renamed, left = {}, 0
    for run_dir in tqdm(find_records(args.runs), desc="records", unit="run", file=sys.stderr):
        if (run_dir / "run.lock").exists():
            tqdm.write(f"warning: left {run_dir} as it is: it holds run.lock (a run training); run this again "
                       "once it ends", file=sys.stderr)
            left += 1
            continue
        try:
            target = migrate_run(run_dir, args.dry_run)
        except (OSError, yaml.YAMLError, AttributeError, FileExistsError) as err:
            tqdm.write(f"warning: left {run_dir} as it is: {err}", file=sys.stderr)
            left += 1
            continue
        if target != run_dir:
            renamed[run_dir.name] = target.name
            if args.dry_run:
                tqdm.write(f"{run_dir.name} -> {target.name}")
    plans = migrate_plans(args.runs, args.dry_run)
    names = re.compile("|".join(map(re.escape, renamed)) or "(?!)")  # each ends in its hash: no false match
    for path in [] if args.dry_run else args.rename_in:
        write_atomic(path, names.sub(lambda m: renamed[m[0]], path.read_text()))
    verb = "would move" if args.dry_run else "moved"
    print(f"{verb} {len(renamed)} runs, rewrote {plans} plans, left {left} as they are")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
