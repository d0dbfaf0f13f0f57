"""brn_repro.files.write_csv: pandas' to_csv, with the bytes the csv module wrote before."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from brn_repro.files import write_csv

ROOT = Path(__file__).resolve().parents[1]


def csv_module_bytes(rows: list[dict]) -> bytes:
    """The hand-written writer write_csv replaced: csv.DictWriter on the first row's keys."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_write_csv_writes_the_csv_modules_bytes(tmp_path):
    rows = [{"n": 1, "x": 0.1, "empty": None, "text": "a,b", "ok": True, "tiny": 1e-7, "nan": float("nan"),
             "np64": np.float64(0.3), "quote": 'say "hi"', "whole": 2.0, "np32nan": np.float32("nan")},
            {"n": None, "x": 1 / 3, "empty": 3, "text": "two\nlines", "ok": False, "tiny": 123456789.123,
             "nan": 1.5, "np64": np.float64("inf"), "quote": "", "whole": float("-inf"), "np32nan": 7}]
    write_csv(tmp_path / "sub" / "rows.csv", rows)  # its folder is made
    assert (tmp_path / "sub" / "rows.csv").read_bytes() == csv_module_bytes(rows)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "rows.csv"]  # no temporary left


def test_write_csv_writes_the_committed_csvs_again(tmp_path):
    for committed in [*sorted((ROOT / "results" / "bench").glob("*.csv")), ROOT / "results" / "gpu" / "check.csv"]:
        with committed.open(newline="") as f:
            rows = list(csv.DictReader(f))
        write_csv(tmp_path / committed.name, rows)
        assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed.name
