"""Report writers: Markdown has the summary and per-group tables, the PNG is a real image, JSON
round-trips, and an error in the middle of a write leaves no partial file behind."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import models_zoo
import structprune
from structprune.io.atomic import write_atomically as atomic_write
from structprune.report.writers import (
    load_report_json,
    render_markdown,
    write_report_json,
    write_report_md,
    write_report_png,
    write_reports,
)

ONNX_SECTION = {"path": "model.onnx", "exporter": "dynamo", "fallback_reason": "", "input_names": ["x"],
                "output_names": ["output"], "external_data": [],
                "parity": {"max_abs_error": 2.4e-08, "max_rel_error": 2.1e-07, "ok": True,
                           "batch_sizes_checked": [2, 3], "detail": ""},
                "latency": {"dense_ms": 1.5, "pruned_ms": 0.6, "dense_p90_ms": 1.7, "pruned_p90_ms": 0.7,
                            "runs": 20, "threads": 1, "speedup": 2.5}}
ACCURACY = {"before": 95.0, "after": 93.0, "data": "digits (test split)"}


@pytest.fixture(scope="module")
def base_report() -> dict:
    """A real report: ViT has pruned, inexact (LayerNorm) and blocked groups."""
    torch.manual_seed(0)
    model = models_zoo.create("vit").eval()
    return structprune.compress(model, models_zoo.example_inputs("vit"), ratio=0.5).report.to_json()


@pytest.fixture
def full_report(base_report: dict) -> dict:
    return {**base_report, "onnx": ONNX_SECTION, "accuracy": ACCURACY}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_markdown_has_tables_and_every_group(full_report: dict, tmp_path: Path) -> None:
    text = write_report_md(full_report, tmp_path / "report.md").read_text(encoding="utf-8")
    for header in ("| metric | dense | pruned | change |", "| check | result | detail |",
                   "| group | channels | kept | masking | status |", "| group | channels | reason |"):
        assert header in text
    for group in full_report["groups"]:
        assert f"`{group['id']}` | {group['size']} → {group['kept']} |" in text
    assert f"| params | {full_report['params']['before']:,} | {full_report['params']['after']:,} |" in text
    assert "2.50x faster" in text and "| 1.500 (p90 1.700) | 0.600 (p90 0.700) |" in text
    assert "| accuracy (digits (test split)) | 95.00% | 93.00% | -2.00 pts |" in text
    assert "| ONNX parity (dynamo exporter) | — | max abs 2.4e-08, rel 2.1e-07 | ok |" in text
    assert "| verification | — |" in text and "| passed |" in text


def test_markdown_lists_blocked_groups_with_reasons(base_report: dict) -> None:
    text = render_markdown(base_report)
    blocked = [g for g in base_report["groups"] if not g["prunable"]]
    assert blocked, "vit should have blocked groups (input and output)"
    section = text.split("## Blocked groups", 1)[1]
    for group in blocked:
        assert f"| `{group['id']}` | {group['size']} | {group['why']} |" in section
    inexact = [g for g in base_report["groups"] if g["prunable"] and not g["exact"]]
    assert inexact and f"inexact ({inexact[0]['why']})" in text


def test_markdown_leaves_out_absent_sections_and_flags_failures(base_report: dict) -> None:
    failed = {**base_report, "verification": {**base_report["verification"], "ok": False}}
    text = render_markdown(failed)
    assert "latency" not in text and "accuracy" not in text and "ONNX parity" not in text
    assert "| verification | — |" in text and "**FAILED**" in text


def test_markdown_escapes_pipes_and_notes_a_fallback(full_report: dict) -> None:
    report = {**full_report, "onnx": {**ONNX_SECTION, "exporter": "legacy", "fallback_reason": "a | b"}}
    report["groups"] = [{"id": "x", "size": 4, "kept": 4, "prunable": False, "exact": False, "why": "op a|b"}]
    text = render_markdown(report)
    assert "op a\\|b" in text
    assert "exported with the **legacy** exporter; dynamo failed: a | b" in text
    unoptimized = {**full_report, "onnx": {**ONNX_SECTION, "exporter": "dynamo-unoptimized",
                                           "fallback_reason": "onnx checker failed: x"}}
    assert ("exported with the **dynamo-unoptimized** exporter; dynamo failed: onnx checker failed: x"
            in render_markdown(unoptimized))


def test_png_is_a_readable_image(full_report: dict, tmp_path: Path) -> None:
    path = write_report_png(full_report, tmp_path / "report.png")
    width, height = _png_size(path)
    assert path.stat().st_size > 20_000
    assert width >= 1000 and height >= 400
    assert _files(tmp_path) == ["report.png"]


def test_png_without_optional_sections_or_groups(base_report: dict, tmp_path: Path) -> None:
    path = write_report_png({**base_report, "groups": []}, tmp_path / "bare.png")
    assert _png_size(path)[0] >= 1000


def test_json_round_trips(full_report: dict, tmp_path: Path) -> None:
    path = write_report_json(full_report, tmp_path / "report.json")
    assert load_report_json(path) == json.loads(json.dumps(full_report))
    assert load_report_json(path)["groups"] == full_report["groups"]


def test_json_converts_numpy_values(base_report: dict, tmp_path: Path) -> None:
    report = {**base_report, "accuracy": {"before": np.float32(0.5), "after": np.float64(0.25), "data": "d"},
              "extra_counts": np.arange(3)}
    loaded = load_report_json(write_report_json(report, tmp_path / "report.json"))
    assert loaded["accuracy"] == {"before": 0.5, "after": 0.25, "data": "d"}
    assert loaded["extra_counts"] == [0, 1, 2]


def test_json_error_midway_leaves_previous_file(base_report: dict, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("previous")
    broken = {**base_report, "zzz_last": object()}  # serialised last, after most of the file is written
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        write_report_json(broken, target)
    assert target.read_text() == "previous"
    assert _files(tmp_path) == ["report.json"]


def test_png_error_midway_leaves_no_file(full_report: dict, tmp_path: Path, monkeypatch) -> None:
    def half_written(self, handle, **kwargs):
        handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_report_png(full_report, tmp_path / "report.png")
    assert _files(tmp_path) == []


def test_atomic_write_removes_partial_text(tmp_path: Path) -> None:
    def half_then_fail(handle) -> None:
        handle.write(b"# half a report")
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        atomic_write(tmp_path / "report.md", half_then_fail)
    assert _files(tmp_path) == []


def test_write_reports_writes_all_three(full_report: dict, tmp_path: Path) -> None:
    paths = write_reports(full_report, tmp_path / "out", stem="run1")
    assert {k: p.name for k, p in paths.items()} == {"json": "run1.json", "md": "run1.md", "png": "run1.png"}
    assert _files(tmp_path / "out") == ["run1.json", "run1.md", "run1.png"]


def test_writers_reject_other_schemas(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a structprune.report/1 report"):
        write_report_md({"schema": "other/1"}, tmp_path / "r.md")
    (tmp_path / "r.json").write_text('{"schema": "other/2"}')
    with pytest.raises(ValueError, match="schema='other/2'"):
        load_report_json(tmp_path / "r.json")
