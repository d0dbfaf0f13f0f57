"""The Makefile's first install: refused in one line when the disk cannot hold torch."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_free_space  # noqa: E402


def test_a_shortfall_names_the_path_the_space_and_the_fix(tmp_path):
    venv = tmp_path / "not" / "yet" / ".venv"
    free_gb = shutil.disk_usage(tmp_path).free / 1024**3
    assert check_free_space.shortfall(str(venv), need_gb=free_gb / 2) is None
    reason = check_free_space.shortfall(str(venv), need_gb=free_gb * 10)
    assert reason is not None and "\n" not in reason
    assert str(venv) in reason and f"{free_gb * 10:g} GB" in reason and "VENV=" in reason
    # The venv does not exist yet: the space asked of is its nearest existing parent's.
    assert check_free_space.existing_parent(str(venv)) == str(tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_refuses_before_writing_anything(tmp_path):
    """An impossible INSTALL_GB: make stops at the check, with one line, and creates no venv."""
    venv = tmp_path / ".venv"
    done = subprocess.run(["make", "--no-print-directory", "setup", f"VENV={venv}", "INSTALL_GB=1e12",
                           f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1e+12 GB" in errors[0] and str(venv) in errors[0], done.stderr
    assert not venv.exists()
