"""The ONNX table: every zoo model compressed at one ratio, exported, checked against onnxruntime, and
timed dense vs pruned with the same session options (1 intra-op thread, median of N runs after warm-up).

    python benchmarks/onnx_table.py [--ratio 0.5] [--runs 50]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import models_zoo
import structprune
from structprune.report.tables import markdown_table


def row(name: str, ratio: float, runs: int, folder: Path) -> list:
    model = models_zoo.create(name).eval()
    inputs = models_zoo.example_inputs(name, batch=1)
    result = structprune.compress(model, inputs, ratio=ratio)
    section = structprune.export(result.model, inputs, folder / f"{name}.onnx", dense=model, latency_runs=runs)
    latency, parity = section["latency"], section["parity"]
    return [name, section["exporter"], f"{result.report.macs_reduction:.2f}x",
            f"{latency['dense_ms']:.3f} → {latency['pruned_ms']:.3f}", f"{latency['speedup']:.2f}x",
            f"{parity['max_abs_error']:.1e}", "ok" if parity["ok"] else "FAILED"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row(name, args.ratio, args.runs, Path(tmp)) for name in models_zoo.list_models()]
    print(f"ratio {args.ratio}, batch 1, onnxruntime 1 thread, median of {args.runs} runs")
    print(markdown_table(["model", "exporter", "MACs reduction", "onnxruntime ms (dense → pruned)", "speedup",
                          "parity max abs error", "parity"], rows))


if __name__ == "__main__":
    main()
