"""Refuse an install that cannot fit, in one line, before pip starts writing.

torch 2.14.1 with torchvision is a CUDA build of about 5.5 GB in the venv; on a
full disk pip stops half-way with a traceback and leaves a broken .venv (seen in
CI: "OSError: [Errno 28] No space left on device"). The Makefile runs this with
the system Python (stdlib only) when torch is not installed yet.

    python scripts/check_free_space.py .venv --need-gb 7
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys


def existing_parent(path: str) -> str:
    """The nearest directory that exists at or above ``path`` (the venv may not yet)."""
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def shortfall(path: str, need_gb: float) -> str | None:
    """None when ``path``'s file system has ``need_gb`` free, else the one-line reason."""
    where = existing_parent(path)
    free_gb = shutil.disk_usage(where).free / 1024**3
    if free_gb >= need_gb:
        return None
    return (f"installing torch into {path} needs about {need_gb:g} GB free; {where} has {free_gb:.1f} GB: "
            f"free some space (an old clone's .venv, /tmp/torchinductor_*) or put the venv elsewhere "
            f"with make VENV=/path/with/space/.venv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="where the venv is or will be")
    parser.add_argument("--need-gb", type=float, default=7.0, help="free space asked for, in GiB")
    args = parser.parse_args(argv)
    reason = shortfall(args.path, args.need_gb)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
