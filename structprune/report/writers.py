"""Write a report dict (`Report.to_json()`, schema in SCHEMA.md) as JSON, Markdown and PNG.

Every writer is atomic: it writes a temporary file in the target's folder and renames it over the
target only when the write finished, so a crash never leaves a partial report behind.

>>> import tempfile, os
>>> report = {"schema": "structprune.report/1", "params": {"before": 10, "after": 5, "reduction": 2.0},
...           "groups": [{"id": "fc.weight:0", "size": 8, "kept": 4, "prunable": True, "exact": True,
...                       "why": ""}], "verification": {"ok": True}}
>>> folder = tempfile.mkdtemp()
>>> sorted(os.path.basename(p) for p in write_reports(report, folder).values())
['report.json', 'report.md', 'report.png']
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from structprune.io.atomic import write_atomically
from structprune.report.prunable import group_lines
from structprune.report.report import REPORT_SCHEMA, verification_label
from structprune.report.summary import artifacts_section, md_cells, md_int, md_percent, md_sci, stage_sections
from structprune.report.tables import markdown_table


def write_report_json(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as indented JSON (numpy scalars, tuples and dataclasses are converted)."""
    _check_schema(report)
    text = json.dumps(report, indent=2, default=_json_default)
    return write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def load_report_json(path: str | os.PathLike) -> dict:
    """Read a report.json written by `write_report_json`, checking its schema."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    _check_schema(report, source=str(path))
    return report


def write_report_md(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as Markdown: summary, verification, channels per group, blocked groups."""
    text = render_markdown(report)
    return write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def write_report_png(report: dict, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write the report figure (kept fraction per group; pruned vs dense) as a PNG."""
    from structprune.report.plots import report_figure  # matplotlib is imported only when plotting

    _check_schema(report)
    figure = report_figure(report)
    return write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=dpi))


def write_reports(report: dict, directory: str | os.PathLike, *, stem: str = "report") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` and `<stem>.png` into `directory`; returns the paths by format."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    return {"json": write_report_json(report, folder / f"{stem}.json"),
            "md": write_report_md(report, folder / f"{stem}.md"),
            "png": write_report_png(report, folder / f"{stem}.png")}


def render_markdown(report: dict) -> str:
    """The Markdown text of a report: summary, accuracy, recovery, calibration, verification, artifacts
    read back, channel groups and blocked groups (each optional section only when its stage ran)."""
    _check_schema(report)
    parts = ["# structprune report", _plan_line(report), "## Summary", _summary_table(report)]
    parts += _onnx_notes(report) + stage_sections(report)
    parts += ["## Verification", _verification_table(report.get("verification", {}))]
    parts += artifacts_section(report)
    groups = report.get("groups", [])
    lines = "\n\n".join(group_lines(groups, report.get("prunable")))
    parts += ["## Channels per group", lines + "\n\n" + _groups_table(groups) if groups else "No channel groups."]
    blocked = [g for g in groups if not g.get("prunable", True)]
    if blocked:
        parts += ["## Blocked groups", _blocked_table(blocked)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _summary_table(report: dict) -> str:
    rows = [_count_row("params", report.get("params")), _count_row("MACs", report.get("macs")),
            _latency_row(_latency(report)), _accuracy_row(report.get("accuracy")),
            _parity_row(report.get("onnx")), _verification_row(report.get("verification", {}))]
    return markdown_table(["metric", "dense", "pruned", "change"], [md_cells(r) for r in rows if r])


def _count_row(name: str, section: dict | None) -> list | None:
    if not section:
        return None
    before, after = section.get("before"), section.get("after")
    reduction = section.get("reduction") or (before / max(after, 1) if before is not None else None)
    return [name, md_int(before), md_int(after), f"{reduction:.2f}x smaller" if reduction else "—"]


def _latency_row(latency: dict | None) -> list | None:
    if not latency:
        return None
    threads = latency.get("threads")
    name = "latency (onnxruntime median ms" + (f", {threads} thread{'s' * (threads != 1)})" if threads else ")")
    speedup = latency.get("speedup")
    return [name, _ms(latency, "dense"), _ms(latency, "pruned"), f"{speedup:.2f}x faster" if speedup else "—"]


def _accuracy_row(accuracy: dict | None) -> list | None:
    if not accuracy:
        return None
    before, after = accuracy.get("before"), accuracy.get("after")
    change = f"{after - before:+.2f} pts" if None not in (before, after) else "—"
    name = f"accuracy ({accuracy['data']})" if accuracy.get("data") else "accuracy"
    return [name, md_percent(before), md_percent(after), change]


def _parity_row(onnx: dict | None) -> list | None:
    parity = (onnx or {}).get("parity")
    if not parity:
        return None
    errors = f"max abs {md_sci(parity.get('max_abs_error'))}, rel {md_sci(parity.get('max_rel_error'))}"
    return [f"ONNX parity ({onnx.get('exporter', '?')} exporter)", "—", errors,
            "ok" if parity.get("ok") else "**FAILED**"]


def _verification_row(verification: dict) -> list:
    checks = verification.get("checks", [])
    detail = f"{len(checks)} checks, masking error {md_sci(verification.get('masking_error'))}"
    label = verification_label(verification)
    return ["verification", "—", detail, "**FAILED**" if label == "FAILED" else label]


def _onnx_notes(report: dict) -> list[str]:
    onnx = report.get("onnx") or {}
    notes = []
    if onnx.get("fallback_reason"):
        notes.append(f"> ONNX was exported with the **{onnx.get('exporter', 'legacy')}** exporter; "
                     f"dynamo failed: {onnx['fallback_reason']}")
    if (onnx.get("parity") or {}).get("detail"):
        notes.append(f"> ONNX parity: {onnx['parity']['detail']}")
    return notes


def _verification_table(verification: dict) -> str:
    checks = verification.get("checks", [])
    if not checks:
        return "No checks recorded."
    rows = [[c.get("name", "?"), "ok" if c.get("ok") else "**FAILED**", c.get("detail", "")] for c in checks]
    return markdown_table(["check", "result", "detail"], [md_cells(r) for r in rows])


def _groups_table(groups: list[dict]) -> str:
    rows = [[f"`{g['id']}`", f"{g['size']} → {g['kept']}", f"{100 * g['kept'] / max(g['size'], 1):.0f}%",
             _masking(g), _status(g)] for g in groups]
    return markdown_table(["group", "channels", "kept", "masking", "status"], [md_cells(r) for r in rows])


def _blocked_table(blocked: list[dict]) -> str:
    rows = [[f"`{g['id']}`", g["size"], g.get("why") or "(no reason recorded)"] for g in blocked]
    return markdown_table(["group", "channels", "reason"], [md_cells(r) for r in rows])


def _masking(group: dict) -> str:
    if not group.get("prunable", True):
        return "—"
    if group.get("exact", True):
        return "exact"
    return f"inexact ({group['why']})" if group.get("why") else "inexact"


def _status(group: dict) -> str:
    if not group.get("prunable", True):
        return "blocked"
    return "pruned" if group["kept"] < group["size"] else "unchanged"


def _plan_line(report: dict) -> str:
    plan = {k: v for k, v in (report.get("plan") or {}).items() if v not in (None, "", [], {})}
    return "Plan: " + ", ".join(f"{k} `{v}`" for k, v in plan.items()) if plan else ""


def _latency(report: dict) -> dict | None:
    """onnx.latency is canonical; a top-level `latency` section of the same shape is also read."""
    return (report.get("onnx") or {}).get("latency") or report.get("latency")


def _check_schema(report: Any, source: str = "the report") -> None:
    schema = report.get("schema") if isinstance(report, dict) else None
    if schema != REPORT_SCHEMA:
        raise ValueError(f"{source} is not a {REPORT_SCHEMA} report (schema={schema!r}); pass "
                         "Report.to_json() or a report.json that structprune wrote")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"report value of type {type(value).__name__} is not JSON-serialisable: {value!r:.80}; "
                    "convert it to a number, string, list or dict before adding it to the report")


def _ms(latency: dict, which: str) -> str:
    median, p90 = latency.get(f"{which}_ms"), latency.get(f"{which}_p90_ms")
    if median is None:
        return "—"
    return f"{median:.3f} (p90 {p90:.3f})" if p90 is not None else f"{median:.3f}"
