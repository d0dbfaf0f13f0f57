"""Files replaced whole: written under a name unique to the writer, then renamed over
the old one, so a reader never sees half a file and a failed write (a full disk
included) leaves the old one as it was. Every result file of the harness goes through
``write_atomic``: run records, results/, benchmark CSVs, figures."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from brn_repro.lease import writer_tag


class RecordError(RuntimeError):
    """A run record that cannot be written or read; one line naming the file and the fix."""


class DiskFullError(RecordError):
    pass


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch.save's zip writer reports a full disk this way, not as an OSError
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name a failed write in one line: a full disk, or a path that cannot be written."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if _disk_full(err):
            raise DiskFullError(f"disk full while writing {path}; free space and rerun") from None
        if isinstance(err, OSError):
            raise RecordError(f"cannot write {path} ({err.strerror or err}); make it writable "
                              "or point paths.runs elsewhere") from None
        raise


def check_writable_dir(path: Path, option: str) -> None:
    """Before anything is read or trained: ``path`` (the value of ``option``, e.g.
    ``paths.runs`` or ``--out``) is, or can become, a writable directory; one line otherwise."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RecordError(f"{option}={path}: {existing} is a file, not a directory; point {option} at a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RecordError(f"{option}={path}: {existing} is not writable (read-only?); "
                          f"point {option} at a writable directory")


# What tmp_path names look like (and a lock candidate, ".run.lock.<tag>", does not).
TMP_NAME = re.compile(r"\.[^/]+\.tmp(\.[A-Za-z0-9]+)?")


def tmp_path(path: Path) -> Path:
    """A temporary name next to ``path``, unique to this writer (host, pid, token):
    two writers never share one, even on two hosts. Hidden, and ending in the
    file's suffix (matplotlib picks the format from it)."""
    return path.with_name(f".{path.stem}.{writer_tag()}.tmp{path.suffix}")


def write_atomic(path: str | Path, data: str | bytes | Callable[[Path], None]) -> None:
    """Replace ``path`` whole: ``data`` (text, bytes, or a function writing the
    file it is given) goes to a temporary name, then is renamed over ``path``. On
    any failure (a full disk included: ``DiskFullError``) the temporary is removed
    and ``path`` is as it was."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with writing(path):
            if callable(data):
                data(tmp)
            elif isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                tmp.write_text(data)
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` (dicts with the first row's keys) as a CSV, replaced whole (``write_atomic``):
    pandas' ``to_csv`` with the csv module's bytes (CRLF lines, ``str`` of each value as it
    is, None as an empty field, a NaN as ``nan``), as this wrote them before pandas."""
    import pandas as pd  # slow to import: only where a CSV is written

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    def cell(value: Any) -> Any:  # to_csv leaves NaN empty, as None; the csv module wrote str(NaN)
        return str(value) if value is not None and pd.api.types.is_scalar(value) and pd.isna(value) else value

    frame = pd.DataFrame([{key: cell(v) for key, v in row.items()} for row in rows], columns=list(rows[0]),
                         dtype=object)  # object: no int column becomes float for its None
    write_atomic(path, frame.to_csv(index=False, lineterminator="\r\n"))


