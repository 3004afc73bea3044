"""Where onnxruntime's time goes, dense vs pruned (issue 14 item 5): each zoo model pruned to one MACs target
with kept channel counts as chosen (round_to 1) and rounded to multiples of 8 (round_to 8), exported, timed
dense vs pruned in one process (1 intra-op thread, medians), and profiled per op type
(structprune.onnx.profile). ratio = speedup / MACs reduction: 1.0 when time follows MACs.

    OMP_NUM_THREADS=1 python benchmarks/latency_profile.py [--models resnet50,vit] [--target-macs 0.5]
        [--runs 50] [--top 4] [--search]

--search also runs the latency target search (target: 0.6 x the dense latency) with round_to 1 and with the
search's default channel multiple (8), and prints what it found (slower: every probe is exported).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import models_zoo
import structprune
from structprune.errors import PlanError
from structprune.latency_target import ort_latency_ms
from structprune.onnx import compare_latency, export_onnx, profile_onnx
from structprune.report.tables import markdown_table

MODELS = ("resnet50", "shufflenet", "densenet", "convnext", "mobilenet_v2", "vit")


def timed(model, pruned, x, runs: int):
    """(speedup, dense profile, pruned profile), the two exports timed alternately in one process."""
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = export_onnx(model, x, os.path.join(tmp, "dense.onnx")).path
        pruned_path = export_onnx(pruned, x, os.path.join(tmp, "pruned.onnx")).path
        speedup = compare_latency(dense_path, pruned_path, x, runs=runs, warmup=10)[2]
        return speedup, profile_onnx(dense_path, x, runs=runs), profile_onnx(pruned_path, x, runs=runs)


def shares(profile, ops) -> str:
    table = profile.shares()
    return ", ".join(f"{op} {table.get(op, 0.0):.0%}" for op in ops)


def target_row(name: str, round_to: int, fraction: float, runs: int, top: int) -> list:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name, batch=1)
    try:
        result = structprune.compress(model, x, target_macs=fraction, round_to=round_to, recapture=False)
    except PlanError as exc:
        return [name, round_to, "-", "-", "-", f"not met: {str(exc)[:60]}", "", ""]
    speedup, dense, pruned = timed(model, result.model, x, runs)
    reduction = result.report.macs_reduction
    ops = list(dense.by_op_type())[:top]
    grown = [op for op, ms in pruned.by_op_type().items() if ms > 1.5 * dense.by_op_type().get(op, 0.0)][:2]
    return [name, round_to, f"{reduction:.2f}x", f"{speedup:.2f}x", f"{speedup / reduction:.2f}",
            shares(dense, ops), shares(pruned, ops), ", ".join(grown)]


def search_row(name: str, round_to: int | None, runs: int) -> list:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name, batch=1)
    target = round(0.6 * ort_latency_ms(model, x, runs=runs), 4)
    options = {} if round_to is None else {"round_to": round_to}
    try:
        result = structprune.compress(model, x, target_latency_ms=target, recapture=False, **options)
    except PlanError as exc:
        return [name, round_to or "8 (default)", f"{target:.3f}", "-", "-", "-", f"not met: {str(exc)[:50]}"]
    section = result.report.extra["target"]
    speedup, _, _ = timed(model, result.model, x, runs)
    reduction = result.report.macs_reduction
    return [name, round_to or "8 (default)", f"{target:.3f}", f"{section['achieved']:.3f}", f"{reduction:.2f}x",
            f"{speedup:.2f}x / {speedup / reduction:.2f}", "met" if section["within_tolerance"] else "closest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--top", type=int, default=4, help="op types shown (the dense model's slowest)")
    parser.add_argument("--search", action="store_true", help="also run the latency target search")
    args = parser.parse_args()
    names = args.models.split(",")
    rows = [target_row(name, r, args.target_macs, args.runs, args.top) for name in names for r in (1, 8)]
    print(f"target_macs {args.target_macs}, zoo defaults, batch 1, onnxruntime 1 thread, medians of {args.runs} runs")
    print(markdown_table(["model", "round_to", "MACs reduction", "speedup", "ratio", "dense: share of kernel time",
                          "pruned: same ops", "grew > 1.5x"], rows))
    if args.search:
        rows = [search_row(name, r, args.runs) for name in names for r in (1, None)]
        print("\nlatency target search, target 0.6 x dense (ms)")
        print(markdown_table(["model", "round_to", "target ms", "found ms", "MACs reduction", "speedup / ratio",
                              "band"], rows))


if __name__ == "__main__":
    main()
