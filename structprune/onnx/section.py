"""The report's "onnx" section (see structprune/report/SCHEMA.md), built from the export stage's values."""
from __future__ import annotations

import math
import os

from structprune.onnx.export import OnnxExport
from structprune.onnx.latency import Latency
from structprune.onnx.parity import Parity


def onnx_section(export: OnnxExport, parity: Parity | None = None,
                 latency: tuple[Latency, Latency, float] | None = None) -> dict:
    """JSON-ready dict for `report.with_extra(onnx=...)`; `latency` is what compare_latency returns.

    >>> section = onnx_section(OnnxExport("m.onnx", "dynamo", ("x",), ("output",)))
    >>> section["exporter"], section["fallback_reason"]
    ('dynamo', '')
    """
    section = {"path": os.fspath(export.path), "exporter": export.exporter,
               "fallback_reason": export.fallback_reason, "input_names": list(export.input_names),
               "output_names": list(export.output_names), "external_data": list(export.external_data),
               "dynamic_batch": export.dynamic_batch, "dynamic_sequence": export.dynamic_sequence}
    if parity is not None:
        section["parity"] = {"max_abs_error": _finite(parity.max_abs_error),
                             "max_rel_error": _finite(parity.max_rel_error), "ok": parity.ok,
                             "batch_sizes_checked": list(parity.batch_sizes_checked),
                             "sequence_checked": parity.sequence_checked, "detail": parity.detail}
    if latency is not None:
        section["latency"] = latency_section(*latency)
    return section


def latency_section(dense: Latency, pruned: Latency, speedup: float) -> dict:
    """The onnx.latency sub-section: dense and pruned median/p90 (ms), runs, threads, speedup."""
    return {"dense_ms": round(dense.median_ms, 4), "pruned_ms": round(pruned.median_ms, 4),
            "dense_p90_ms": round(dense.p90_ms, 4), "pruned_p90_ms": round(pruned.p90_ms, 4),
            "runs": pruned.runs, "threads": pruned.threads, "speedup": round(speedup, 4)}


def _finite(value: float) -> float | None:
    """JSON has no infinity: a non-finite error (a shape mismatch) is written as null."""
    return value if math.isfinite(value) else None
