"""Which code produced a run: the git commit of this checkout, recorded in each run's
``config.yaml`` (key ``git_commit``), its W&B run, and the report's header."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def git_commit(root: Path = ROOT) -> str | None:
    """``<sha>``, ``<sha>+dirty`` when tracked files differ from it (results/ aside: the
    outputs, which an aggregate rewrites), or None outside a git checkout (an installed
    package, also one installed inside some other repository's tree) or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        if not git("ls-files", "--", "."):  # installed into (say) a venv inside another repository
            return None
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha
