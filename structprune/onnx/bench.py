"""`structprune bench`: median and p90 onnxruntime latency of ONNX files, on random inputs that fit
each file's declared inputs."""
from __future__ import annotations

import os

import numpy as np
import onnx
import torch

from structprune.data.messages import one_line
from structprune.errors import UsageError
from structprune.onnx.latency import compare_latency, ort_latency
from structprune.report.tables import format_table


def bench_onnx(path: str, *, against: str | None = None, runs: int = 50, batch: int = 1) -> str:
    """Median and p90 onnxruntime latency of one ONNX file, or two compared in the same process."""
    for p in (path, against):
        if p is not None and os.path.isdir(p):
            raise UsageError(f"'{p}' is a folder; pass an .onnx file")
        if p is not None and not os.path.isfile(p):
            raise UsageError(f"ONNX file '{p}' does not exist")
    inputs = onnx_example_inputs(path, batch)
    if against is not None:
        onnx_example_inputs(against, batch)  # the second file is checked the same way before timing
    try:
        return _bench_table(path, against, inputs, runs)
    except Exception as exc:  # noqa: BLE001 - onnxruntime rejecting a file is bad input, not a crash
        which = path if against is None else f"{against} or {path}"
        raise UsageError(f"onnxruntime cannot run {which} ({one_line(exc)}); pass an ONNX model exported by "
                         "structprune or torch.onnx") from exc


def _bench_table(path: str, against: str | None, inputs: dict, runs: int) -> str:
    if against is None:
        lat = ort_latency(path, inputs, runs=runs)
        return format_table(["model", "median ms", "p90 ms", "runs"],
                            [[path, f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}", lat.runs]])
    first, second, speedup = compare_latency(against, path, inputs, runs=runs)
    rows = [[against, f"{first.median_ms:.3f}", f"{first.p90_ms:.3f}"],
            [path, f"{second.median_ms:.3f}", f"{second.p90_ms:.3f}"]]
    return format_table(["model", "median ms", "p90 ms"], rows) + f"\nspeedup of {path}: {speedup:.2f}x"


def onnx_example_inputs(path: str, batch: int = 1) -> dict:
    """Random inputs that fit an ONNX file's declared inputs (symbolic dims set to `batch`)."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise UsageError(f"'{path}' is not a readable ONNX model: {str(exc).splitlines()[0]}") from exc
    if not model.graph.node:
        raise UsageError(f"'{path}' holds no ONNX graph (no nodes); pass an exported .onnx model")
    initializers = {i.name for i in model.graph.initializer}
    inputs = {}
    rng = torch.Generator().manual_seed(0)
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.dim_value > 0 else batch for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            inputs[value.name] = torch.randint(0, 2, dims, generator=rng, dtype=torch.int64)
        else:
            inputs[value.name] = torch.randn(dims, generator=rng)
    return inputs
