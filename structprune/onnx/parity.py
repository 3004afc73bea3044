"""ONNX parity: onnxruntime and torch give the same outputs, on the example batch and another size.

Errors are measured per output and the worst is kept: `max_abs_error` = max |ort - torch|;
`max_rel_error` = that difference divided by the output's largest magnitude (so values near zero do
not blow it up). `ok` means every element satisfies |ort - torch| <= atol + rtol * max|torch|: the
tolerance scales with the output's magnitude, not the element's, because float32 rounding in a
runtime's different summation order is proportional to the values being summed (a random-weight
torchvision inception_v3 has logits near 2e6, so an element near zero differs by ~1 while the
relative error is 5e-7; an element-wise rtol called that a failed export).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from torch import nn

from structprune.capture.batch import batch_size, resize_batch, shorter_sequence
from structprune.data.running import eval_outputs, normalize_inputs
from structprune.onnx.inputs import ort_feed


@dataclass(frozen=True)
class Parity:
    """Worst disagreement between onnxruntime and torch over every output and batch size checked;
    `detail` explains a failure that is not a numeric one (output count or shape)."""

    max_abs_error: float
    max_rel_error: float
    ok: bool
    batch_sizes_checked: tuple[int, ...]
    detail: str = ""
    sequence_checked: bool = False  # token inputs were also compared one position shorter


def check_parity(model: nn.Module, onnx_path: str | os.PathLike, example_inputs: Any, *,
                 atol: float = 1e-4, rtol: float = 1e-3, dynamic_batch: bool = True,
                 dynamic_sequence: bool = False) -> Parity:
    """Compare `model` (eval mode) with onnxruntime (CPU) on the example batch and, when the batch axis
    is dynamic, on one row more (and, when the token axis is, on a sequence one position shorter, with
    one row more when the batch is dynamic too).

    >>> import torch, tempfile, os
    >>> from structprune.onnx import export_onnx
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = torch.randn(2, 4)
    >>> path = export_onnx(net, x, os.path.join(tempfile.mkdtemp(), "net.onnx")).path
    >>> parity = check_parity(net, path, x)
    >>> parity.ok, parity.batch_sizes_checked
    (True, (2, 3))
    """
    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    batch = batch_size(example_inputs)
    sizes = (batch, batch + 1) if dynamic_batch else (batch,)
    cases = {f"batch {n}": resize_batch(example_inputs, n) for n in sizes}
    shorter = shorter_sequence(example_inputs) if dynamic_sequence else None
    if shorter is not None:  # with a dynamic batch, also one row more: both axes differ from the export's
        cases["sequence - 1"] = resize_batch(shorter, batch + 1) if dynamic_batch else shorter
    results = [_compare(model, session, inputs, atol, rtol) for inputs in cases.values()]
    details = "; ".join(f"{case}: {r.detail}" for case, r in zip(cases, results) if r.detail)
    return Parity(max(r.max_abs_error for r in results), max(r.max_rel_error for r in results),
                  all(r.ok for r in results), sizes, details, shorter is not None)


def _compare(model: nn.Module, session: Any, inputs: Any, atol: float, rtol: float) -> Parity:
    expected = [t.detach().cpu().numpy() for t in eval_outputs(model, inputs)]
    actual = session.run(None, ort_feed(session, *normalize_inputs(inputs)))
    return output_parity(actual, expected, atol=atol, rtol=rtol, source="onnxruntime")


def output_parity(actual: list[np.ndarray], expected: list[np.ndarray], *, atol: float, rtol: float,
                  source: str = "artifact") -> Parity:
    """Worst error of `actual` against `expected` outputs (same count and shapes, else a failure
    whose detail names `source`); `batch_sizes_checked` is left empty for the caller to fill.

    >>> output_parity([np.ones(2)], [np.ones(2)], atol=1e-4, rtol=1e-3).ok
    True
    >>> logits = np.array([2e6, 0.0])  # rounding noise scales with the output, not with one element
    >>> output_parity([logits + [0, 0.9]], [logits], atol=1e-4, rtol=1e-3).ok
    True
    >>> output_parity([logits + [0, 5e3]], [logits], atol=1e-4, rtol=1e-3).ok
    False
    """
    if len(actual) != len(expected):
        return _failed(f"{source} gave {len(actual)} outputs, torch {len(expected)}")
    worst_abs, worst_rel, ok = 0.0, 0.0, True
    for i, (got, want) in enumerate(zip(actual, expected)):
        if got.shape != want.shape:
            return _failed(f"output {i}: {source} shape {got.shape}, torch shape {want.shape}")
        abs_err, rel_err = _errors(got, want)
        worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
        scale = float(np.max(np.abs(want.astype(np.float64)))) if want.size else 0.0
        ok = ok and not math.isnan(abs_err) and abs_err <= atol + rtol * scale
    return Parity(worst_abs, worst_rel, ok, ())


def _errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    if want.size == 0:
        return 0.0, 0.0
    got, want = got.astype(np.float64), want.astype(np.float64)
    abs_err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    if math.isnan(abs_err):
        return math.inf, math.inf
    return abs_err, (abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf))


def _failed(detail: str) -> Parity:
    return Parity(math.inf, math.inf, False, (), detail)
