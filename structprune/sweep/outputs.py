"""write_sweep: sweep.csv, sweep.png, sweep.html (self-contained: the PNG inlined) and sweep.json, each
written atomically into a staging folder, read back and compared with what was meant, and only then
published as the output folder (nothing is published when one differs)."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from structprune.errors import VerificationError
from structprune.io import atomic_write_bytes, atomic_write_text, staged_output_dir
from structprune.sweep.figure import sweep_png
from structprune.sweep.rows import COLUMNS
from structprune.sweep.run import SweepResult
from structprune.sweep.summary import limit_vs_knee, mean_table, summary_json, table_header, verdict_lines

FILES = ("sweep.csv", "sweep.png", "sweep.html", "sweep.json")


@dataclass(frozen=True)
class SweepFiles:
    """Where a sweep was published, and the contents each file was checked against."""

    out_dir: Path
    contents: dict


def write_sweep(result: SweepResult, out_dir: str | Path, *, force: bool = False) -> SweepFiles:
    """Write, read back and publish the sweep's four files into `out_dir` (refused when it is not empty,
    unless `force`)."""
    png = sweep_png(result)
    contents = {"sweep.csv": sweep_csv(result), "sweep.png": png, "sweep.html": sweep_html(result, png),
                "sweep.json": json.dumps(summary_json(result), indent=1, allow_nan=False)}
    with staged_output_dir(out_dir, force) as stage:
        for name, content in contents.items():
            writer = atomic_write_bytes if isinstance(content, bytes) else atomic_write_text
            writer(stage / name, content)
        read_back(stage, result, contents)
    return SweepFiles(Path(out_dir), contents)


def sweep_csv(result: SweepResult) -> str:
    """One row per criterion x point x seed, the columns of SweepRow."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.to_csv() for row in result.rows)
    return buffer.getvalue()


def sweep_html(result: SweepResult, png: bytes) -> str:
    """A page with no outside references: the figure as a data URI, the limit and knees, both tables."""
    image = base64.b64encode(png).decode("ascii")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in result.notes)
    rows = [tuple(r.to_csv().values()) for r in result.rows]
    items = "".join(f"<li>{html.escape(line)}</li>" for line in limit_vs_knee(result))
    verdicts = "".join(f"<li>{html.escape(line)}</li>" for line in verdict_lines(result))
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>structprune sweep: "
            f"{html.escape(result.name)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>structprune sweep: {html.escape(result.name)}</h1>\n<p>{html.escape(_settings(result))}</p>{notes}\n"
            f"<img alt='accuracy vs MACs and params reduction' src='data:image/png;base64,{image}'>\n"
            f"<h2>Pruning limit vs observed knee</h2>\n<ul>{items}</ul>\n"
            f"<h2>Prune big or train small; double descent</h2>\n<ul class='verdicts'>{verdicts}</ul>\n"
            f"<h2>Mean ± std over seeds</h2>\n{_table(table_header(result), mean_table(result), 'mean')}\n"
            f"<h2>Every point (sweep.csv)</h2>\n{_table(COLUMNS, rows, 'row')}\n</body></html>\n")


def read_back(folder: Path, result: SweepResult, contents: dict) -> None:
    """Read each file the way a user would and compare it with what was meant; VerificationError if not."""
    with open(folder / "sweep.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        records = list(reader)
    _expect(tuple(reader.fieldnames or ()) == COLUMNS and records == [r.to_csv() for r in result.rows], "sweep.csv",
            f"{len(records)} rows with columns {reader.fieldnames}")
    with Image.open(folder / "sweep.png") as image:
        image.verify()
        _expect(image.format == "PNG" and (folder / "sweep.png").read_bytes() == contents["sweep.png"], "sweep.png",
                f"a {image.format} image of other bytes")
    page = (folder / "sweep.html").read_text(encoding="utf-8")
    inlined = base64.b64encode(contents["sweep.png"]).decode("ascii")
    _expect(page == contents["sweep.html"] and inlined in page and page.count("<tr class='row'>") == len(result.rows),
            "sweep.html", "a page without the figure or with another number of rows")
    _expect(json.loads((folder / "sweep.json").read_text(encoding="utf-8")) == json.loads(contents["sweep.json"]),
            "sweep.json", "other values")


def _expect(ok: bool, name: str, found: str) -> None:
    if not ok:
        raise VerificationError(f"{name} read back as {found}, not what was written; nothing was published "
                                "(check the disk and run the sweep again)")


def _table(header, lines, css: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(f"<tr class='{css}'>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>\n"
                   for line in lines)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _settings(result: SweepResult) -> str:
    c = result.config
    recovery = f"{c.epochs} epochs of {c.recover} (lr {c.lr:g})" if c.epochs else "none (one-shot)"
    arms = "".join(f"; {text}" for text in _arm_settings(c))
    rounding = f"; channel counts multiples of {c.round_to}" if c.round_to > 1 else ""
    return (f"criteria {', '.join(c.criteria)}{arms}; MACs reductions {', '.join(f'{r:g}x' for r in c.reductions)}; "
            f"seeds {', '.join(map(str, c.seed_values))}; recovery {recovery}; calibration "
            f"{c.calibration_samples} samples{rounding}")


def _arm_settings(c) -> list[str]:
    out = []
    if c.group_lasso is not None:
        g = c.group_lasso
        out.append(f"group_lasso curve: {g.epochs} sparsity epochs, lambda {g.lam:g}, lr {g.lr:g}")
    if c.scratch is not None:
        s = c.scratch
        cap = f", factor capped at {s.max_factor:g}" if s.max_factor else ""
        out.append(f"Scratch-B of {', '.join(s.criteria)}: {s.dense_epochs} dense epochs x MACs reduction{cap}")
    if c.latency is not None:
        seeds = f", first {c.latency.seeds} seed(s)" if c.latency.seeds else ""
        out.append(f"onnxruntime latency at batch {c.latency.batch or 'of the example'}, {c.latency.runs} runs{seeds}")
    return out


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}img{max-width:100%}"
          "table{border-collapse:collapse;font-size:12px;margin-bottom:2em}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}.note{color:#a00}")
