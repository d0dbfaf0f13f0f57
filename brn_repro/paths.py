"""Where the Hydra configs are. The repository keeps them at its top, ``conf/``; the wheel
ships the same files inside the package, ``brn_repro/conf/`` (pyproject.toml maps the
package ``brn_repro.conf`` to ``conf/``), so that an install outside the checkout composes
them too. Standard library only: ``brn_repro.analysis.experiments`` reads it without the harness."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """``brn_repro/conf`` where the package carries it (a wheel, a strict editable
    install), else the checkout's ``conf/`` beside the package (the checkout, an editable
    install). The packaged one first: an installed package's parent is site-packages,
    where a ``conf/`` would be some other distribution's."""
    packaged = _PACKAGE / "conf"
    return packaged if (packaged / "config.yaml").is_file() else _PACKAGE.parent / "conf"


CONF_DIR = conf_dir()
