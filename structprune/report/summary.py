"""The CLI's end-of-job summary of a report dict (`Report.to_json()`)."""
from __future__ import annotations

from pathlib import Path

from structprune.report.report import verification_label
from structprune.report.tables import format_table


def job_summary(report: dict, out_dir: Path) -> str:
    """The text `structprune compress` prints: before/after table, verification, ONNX parity, notes."""
    rows = [["params", f"{report['params']['before']:,}", f"{report['params']['after']:,}",
             f"{report['params']['reduction']:.2f}x"],
            ["MACs", f"{report['macs']['before']:,}", f"{report['macs']['after']:,}",
             f"{report['macs']['reduction']:.2f}x"]]
    latency = report.get("onnx", {}).get("latency")
    if latency:
        rows.append(["onnxruntime ms", f"{latency['dense_ms']:.3f}", f"{latency['pruned_ms']:.3f}",
                     f"{latency['speedup']:.2f}x"])
    if "accuracy" in report:
        acc = report["accuracy"]
        rows.append(["accuracy %", f"{acc['before']:.2f}", f"{acc['after']:.2f}", f"{acc['after'] - acc['before']:+.2f}"])
    parity = report.get("onnx", {}).get("parity")
    tail = f"\nverification: {verification_label(report['verification'])}"
    if parity:
        tail += f"; onnx parity max abs error {parity['max_abs_error']:.2e}"
    if report.get("onnx", {}).get("dynamic_batch") is False:
        tail += f"\nnote: model.onnx has a fixed batch of {parity['batch_sizes_checked'][0]} (the model only runs at " \
                "that batch, e.g. a .pt2 exported with a static batch)"
    return format_table(["", "before", "after", "change"], rows) + tail + f"\nartifacts: {out_dir}/"
