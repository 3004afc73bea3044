"""onnxruntime latency of every sweep point beside its dense model (structprune.onnx: export_onnx, then
compare_latency, which times the two alternately in one process so that load on a shared machine hits
both alike).

Exports are kept in a private temporary folder for the sweep and reused by architecture (the names and
shapes of the state_dict): onnxruntime's time does not depend on the weights' values, so the dense model is
exported once for all seeds, and pruned models of one shape (Torch-Pruning's uniform ratio is the same for
every seed) once. Each point is timed afresh beside the dense model. A model that does not export keeps NaN.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import Any

from torch import nn

from structprune.capture.batch import resize_batch
from structprune.errors import StructpruneError
from structprune.onnx import compare_latency, export_onnx
from structprune.sweep.options import LatencyProbe
from structprune.sweep.points import Dense, Pruned
from structprune.sweep.rows import SweepRow


class LatencyMeter:
    """Times pruned models against the dense one; use as a context manager (the exports are removed after)."""

    def __init__(self, probe: LatencyProbe, example_inputs: Any) -> None:
        self.probe = probe
        self.inputs = resize_batch(example_inputs, probe.batch) if probe.batch else example_inputs
        self.example_inputs = example_inputs
        self._folder = tempfile.TemporaryDirectory(prefix="structprune-sweep-onnx-")
        self._paths: dict[tuple, str | None] = {}

    def __enter__(self) -> LatencyMeter:
        return self

    def __exit__(self, *exc_info) -> None:
        self._folder.cleanup()

    def measure(self, pruned: Pruned, dense: Dense) -> SweepRow:
        """The row with the dense and pruned medians, the speedup and speedup / MACs reduction."""
        row = pruned.row
        dense_path, pruned_path = self._export(dense.model), self._export(pruned.model)
        if dense_path is None or pruned_path is None:
            return row
        dense_ms, pruned_ms, speedup = compare_latency(dense_path, pruned_path, self.inputs, runs=self.probe.runs)
        return replace(row, latency_dense_ms=dense_ms.median_ms, latency_ms=pruned_ms.median_ms,
                       latency_speedup=speedup, speedup_per_mac=speedup / row.theoretical_speedup)

    def _export(self, model: nn.Module) -> str | None:
        key = architecture(model)
        if key not in self._paths:
            path = os.path.join(self._folder.name, f"model-{len(self._paths)}.onnx")
            try:
                self._paths[key] = os.fspath(export_onnx(model, self.example_inputs, path).path)
            except StructpruneError:
                self._paths[key] = None
        return self._paths[key]


def architecture(model: nn.Module) -> tuple:
    """What onnxruntime's time depends on: the model's class and its tensors' names and shapes.

    >>> architecture(nn.Linear(3, 2))
    ('Linear', ('weight', (2, 3)), ('bias', (2,)))
    """
    return (type(model).__name__, *((name, tuple(t.shape)) for name, t in model.state_dict().items()))
