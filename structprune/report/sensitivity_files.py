"""A sensitivity table on disk: `sensitivity.csv` (one row per group and ratio) and `sensitivity.png` (the
heat map), each written atomically and read back before it counts as written.

Rows are dicts with the columns of CSV_COLUMNS (`selection.SensitivityTable.rows()` makes them): group,
size, ratio, removed (channels), metric ("accuracy" or "fidelity"), value, drop (dense value - value).

>>> import tempfile, os
>>> rows = [{"group": "fc.weight:0", "size": 8, "ratio": 0.5, "removed": 4, "metric": "fidelity",
...          "value": 0.97, "drop": 0.03}]
>>> path = write_sensitivity_csv(rows, os.path.join(tempfile.mkdtemp(), "sensitivity.csv"))
>>> read_sensitivity_csv(path) == rows
True
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from structprune.errors import UsageError
from structprune.io.atomic import write_atomically

CSV_COLUMNS = ("group", "size", "ratio", "removed", "metric", "value", "drop")
_TYPES = {"group": str, "size": int, "ratio": float, "removed": int, "metric": str, "value": float, "drop": float}


def write_sensitivity_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write the rows as CSV (floats in full precision), read the file back and compare; returns the path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    written = write_atomically(path, lambda stream: stream.write(buffer.getvalue().encode("utf-8")))
    if not _same_rows(read_sensitivity_csv(written), rows):
        raise UsageError(f"'{written}' did not read back as written; check the disk and run again")
    return written


def read_sensitivity_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a sensitivity CSV, typed; UsageError naming the file when it is not one."""
    with open(path, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise UsageError(f"'{path}' is not a sensitivity table: its columns are {reader.fieldnames}, expected "
                             f"{', '.join(CSV_COLUMNS)}")
        try:
            return [{k: _TYPES[k](row[k]) for k in CSV_COLUMNS} for row in reader]
        except (TypeError, ValueError) as exc:
            raise UsageError(f"'{path}' has a malformed row ({exc}); write it again with structprune sensitivity") \
                from exc


def write_sensitivity_png(groups: list[str], ratios: list[float], values: list[list[float]], metric: str,
                          baseline: float, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write the heat map (`report.plots.sensitivity_figure`) as a PNG and check it decodes to its size."""
    from matplotlib.image import imread

    from structprune.report.plots import sensitivity_figure  # matplotlib is imported only when plotting

    figure = sensitivity_figure(groups, ratios, values, metric, baseline)
    written = write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=dpi))
    height, width = imread(written).shape[:2]
    expected = (round(figure.get_figheight() * dpi), round(figure.get_figwidth() * dpi))
    if (height, width) != expected:
        raise UsageError(f"'{written}' did not read back as a {expected[1]}x{expected[0]} image; run again")
    return written


def _same_rows(got: list[dict], rows: list[dict]) -> bool:
    return len(got) == len(rows) and all(_same(a[k], b[k]) for a, b in zip(got, rows) for k in CSV_COLUMNS)


def _same(a, b) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b
