"""``brn-train``, the console script: ``brn_repro.train``'s command line or, where the
harness extra is not installed (``pip install brn_repro`` gives the layers alone), one
line that says how to get it instead of an import traceback."""

from __future__ import annotations

import sys

HINT = "pip install 'brn_repro[harness]'"


def brn_train() -> None:
    try:
        from brn_repro.train import cli
    except ModuleNotFoundError as err:
        missing = (err.name or "").partition(".")[0]
        if not missing or missing == "brn_repro":  # our own bug, not a missing extra
            raise
        sys.exit(f"error: brn-train needs the harness, and {missing} is not installed: {HINT}")
    cli()
