"""Export a model to one self-contained, checked ONNX file whose batch axis is dynamic.

Token inputs (integer tensors, batch x sequence: `input_ids`, `attention_mask`) also get a dynamic
sequence axis; the file names the two axes `batch` and `sequence` on every input, output and
intermediate value that carries them, whichever exporter wrote it.

The dynamo exporter (torch.export based) is tried first; if its file fails the ONNX checker or does
not run with another batch size, it is tried again without its ONNX optimizer ("dynamo-unoptimized");
if that fails too, or dynamo raised while exporting, the legacy TorchScript exporter is used. The
reasons are recorded (`fallback_reason`). The file is staged in a temporary folder next to `path`
and moved into place only after every check passed, so `path` never holds a half-written or
unchecked model.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.utils import _pytree as pytree

from structprune.capture.batch import batch_size, is_tokens, resize_batch, shorter_sequence
from structprune.data.running import eval_mode, eval_outputs, normalize_inputs
from structprune.errors import ExportError
from structprune.onnx.inputs import bound_inputs, input_names, ort_feed

MAX_INLINE_BYTES = 2_000_000_000  # protobuf's 2 GiB limit, with room for the graph itself
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class OnnxExport:
    """Where the model went and how: `exporter` is "dynamo", "dynamo-unoptimized" or "legacy";
    `fallback_reason` says why the exporters before it failed (empty for "dynamo"); `external_data`
    lists sidecar files (models over 2 GB)."""

    path: str
    exporter: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    fallback_reason: str = ""
    external_data: tuple[str, ...] = ()
    dynamic_batch: bool = True  # False for a model that only runs at its example batch (a static .pt2)
    dynamic_sequence: bool = False  # token inputs (integer, 2+ dims) accept a shorter sequence


@dataclass(frozen=True)
class _ExportSpec:
    """The inputs actually exported (batch >= 2 unless the model's batch is static) and the names and
    batch layout of inputs/outputs."""

    args: tuple
    kwargs: dict
    batch: int
    dynamic: bool
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batched_outputs: tuple[bool, ...]


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *,
                opset: int | None = None) -> OnnxExport:
    """Export `model` (in eval mode; its training flag is restored) to `path` with a dynamic batch.

    >>> import torch, tempfile, os
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> out = export_onnx(net, torch.randn(2, 4), os.path.join(tempfile.mkdtemp(), "net.onnx"))
    >>> out.exporter, out.fallback_reason
    ('dynamo', '')
    """
    path = os.path.abspath(os.fspath(path))
    with eval_mode(model):
        spec = _export_spec(model, example_inputs)
        failures: dict[str, str] = {}
        for name, exporter in _EXPORTERS:
            if name == UNOPTIMIZED and not _optimizer_may_be_at_fault(failures["dynamo"]):
                continue
            try:
                sidecars = _export_checked(exporter, model, spec, path, opset)
            except Exception as exc:  # noqa: BLE001 - any failure moves on to the next exporter
                failures[name] = _first_line(exc)
                continue
            return OnnxExport(path, name, spec.input_names, spec.output_names, " | ".join(failures.values()),
                              sidecars, spec.dynamic, _sequence_is_free(path, spec))
    raise ExportError(_explain_failure(model, failures))


def _export_spec(model: nn.Module, example_inputs: Any) -> _ExportSpec:
    example_inputs, outputs, dynamic = _run_for_export(model, example_inputs)
    batch = batch_size(example_inputs)
    args, kwargs = _in_signature_order(model, *normalize_inputs(example_inputs))
    names = ("output",) if len(outputs) == 1 else tuple(f"output_{i}" for i in range(len(outputs)))
    batched = tuple(t.dim() > 0 and t.shape[0] == batch for t in outputs)
    return _ExportSpec(args, kwargs, batch, dynamic, tuple(input_names(model, args, kwargs)), names, batched)


def _in_signature_order(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Keyword inputs in forward()'s parameter order. The exporter numbers graph inputs in the order the
    keywords come in, while their names follow the signature, so a tokenizer's dict (`input_ids`,
    `token_type_ids`, `attention_mask`) would otherwise name BERT's mask `token_type_ids` and vice versa."""
    try:
        order = list(bound_inputs(model, args, kwargs))
    except (TypeError, ValueError):
        return args, kwargs
    ranked = sorted(kwargs, key=lambda k: order.index(k) if k in order else len(order))
    return args, {k: kwargs[k] for k in ranked}


def _run_for_export(model: nn.Module, example_inputs: Any):
    """(inputs to export with, the model's outputs on them, whether the batch axis is free). A batch
    of 1 invites the tracer to specialise the batch axis, so batch 2 is used when the model runs at
    it; a model that runs at its example batch only (a .pt2 archive exported with a static batch) is
    exported with that static batch."""
    batch = batch_size(example_inputs)
    other = resize_batch(example_inputs, 2 if batch == 1 else batch + 1)
    if batch == 1 and (outputs := _outputs_or_none(model, other)) is not None:
        return other, outputs, True
    try:
        outputs = eval_outputs(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ExportError(f"{type(model).__name__} does not run on the example inputs ({_first_line(exc)}); "
                          "pass the inputs forward() expects (a dict for keyword inputs)") from exc
    return example_inputs, outputs, batch > 1 and _outputs_or_none(model, other) is not None


def _outputs_or_none(model: nn.Module, inputs: Any):
    try:
        return eval_outputs(model, inputs)
    except (RuntimeError, ValueError, IndexError, AssertionError):  # the model's shapes are fixed to one batch size
        return None


def _export_checked(exporter: Callable, model: nn.Module, spec: _ExportSpec, path: str,
                    opset: int | None) -> tuple[str, ...]:
    """Export into a staging folder beside `path`, check it, then move it into place."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".structprune-onnx-", dir=parent)
    try:
        staged = os.path.join(staging, os.path.basename(path))
        with _step("export"), _quiet_exporters():
            exporter(model, spec, staged, opset)
        _inline_external_data(staged)
        if spec.dynamic:
            _name_sequence_axis(staged, spec)
        with _step("onnx checker"):
            onnx.checker.check_model(staged, full_check=True)
        if spec.dynamic:
            with _step(f"run with batch {spec.batch + 1} (dynamic batch)"):
                _check_dynamic_batch(staged, spec)
        return _publish(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_dynamo(model: nn.Module, spec: _ExportSpec, staged: str, opset: int | None, *,
                   optimize: bool = True) -> None:
    batch = torch.export.Dim("batch")

    def axes(value: Any) -> dict | None:
        if not spec.dynamic or not _has_batch(value):
            return None
        return {0: batch, 1: torch.export.Dim.AUTO} if is_tokens(value) else {0: batch}

    shapes = {name: pytree.tree_map(axes, value) for name, value in bound_inputs(model, spec.args, spec.kwargs).items()}
    torch.onnx.export(model, spec.args, staged, kwargs=spec.kwargs, dynamo=True, dynamic_shapes=shapes,
                      input_names=spec.input_names, output_names=spec.output_names, opset_version=opset,
                      external_data=_state_bytes(model) >= MAX_INLINE_BYTES, optimize=optimize, verbose=False)


def _export_legacy(model: nn.Module, spec: _ExportSpec, staged: str, opset: int | None) -> None:
    tokens = {name for name, value in zip(spec.input_names, _tensor_inputs(spec)) if is_tokens(value)}
    axes = {name: {0: "batch", 1: "sequence"} if name in tokens else {0: "batch"} for name in spec.input_names}
    axes |= {name: {0: "batch"} for name, b in zip(spec.output_names, spec.batched_outputs) if b}
    axes = axes if spec.dynamic else None
    torch.onnx.export(model, spec.args, staged, kwargs=spec.kwargs, dynamo=False, dynamic_axes=axes,
                      input_names=spec.input_names, output_names=spec.output_names, opset_version=opset)


UNOPTIMIZED = "dynamo-unoptimized"
# tried in order: dynamo's ONNX graph optimizer can write a graph the checker rejects (timm's
# gemma4_vit_167m: nodes out of topological order) although the unoptimised graph is valid
_EXPORTERS = (("dynamo", _export_dynamo), (UNOPTIMIZED, partial(_export_dynamo, optimize=False)),
              ("legacy", _export_legacy))
_AFTER_OPTIMIZER = ("onnx checker failed", "run with batch")


def _optimizer_may_be_at_fault(dynamo_failure: str) -> bool:
    """Whether dynamo's file was written and then rejected (so its optimizer may have broken it); a
    failure while exporting would repeat without the optimizer."""
    return dynamo_failure.startswith(_AFTER_OPTIMIZER)


def _inline_external_data(staged: str) -> None:
    """Fold weights an exporter wrote beside the model back into it, when they fit in one protobuf."""
    folder = os.path.dirname(staged)
    sidecars = [os.path.join(folder, f) for f in os.listdir(folder) if f != os.path.basename(staged)]
    total = sum(os.path.getsize(f) for f in sidecars + [staged])
    if not sidecars or total >= MAX_INLINE_BYTES:
        return
    onnx.save_model(onnx.load(staged), staged, save_as_external_data=False)
    for f in sidecars:
        os.remove(f)


def _name_sequence_axis(staged: str, spec: _ExportSpec) -> None:
    """Rename the symbol the dynamo exporter chose for the token inputs' sequence axis (`s53`) to
    `sequence`, in place; nothing changes unless every token input has the same symbol there (two
    independent lengths keep their own names)."""
    model = onnx.load(staged, load_external_data=False)
    tokens = {name for name, value in zip(spec.input_names, _tensor_inputs(spec)) if is_tokens(value)}
    symbols = {dims[1].dim_param for v in model.graph.input if v.name in tokens
               for dims in [v.type.tensor_type.shape.dim] if len(dims) > 1}
    if len(symbols) != 1 or "" in symbols or symbols == {"sequence"}:
        return
    old = symbols.pop()
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = "sequence"
    onnx.save_model(model, staged)


def _check_dynamic_batch(staged: str, spec: _ExportSpec) -> None:
    """Run the file with one row more than exported; batched outputs must follow the new batch."""
    probe = spec.batch + 1
    session = _quiet_session(staged)
    feed = ort_feed(session, resize_batch(spec.args, probe), resize_batch(spec.kwargs, probe))
    outputs = session.run(None, feed)
    got = [o.shape[0] if o.ndim else None for o in outputs]
    want = [probe if b else got[i] for i, b in enumerate(spec.batched_outputs)]
    if len(outputs) != len(spec.batched_outputs) or got != want:
        raise RuntimeError(f"the batch axis is not dynamic: outputs' dim 0 are {got}, expected {want}")


def _sequence_is_free(path: str, spec: _ExportSpec) -> bool:
    """Whether the exported file runs token inputs one position shorter (False without tokens)."""
    shorter = shorter_sequence(spec.kwargs or spec.args) if spec.dynamic else None
    if shorter is None:
        return False
    session = _quiet_session(path)
    try:
        session.run(None, ort_feed(session, *normalize_inputs(shorter)))
    except Exception:  # noqa: BLE001 - onnxruntime rejects the shape: the axis was specialised
        return False
    return True


def _quiet_session(path: str) -> ort.InferenceSession:
    """A CPU session whose failures are reported by the exception, not by onnxruntime's log."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _tensor_inputs(spec: _ExportSpec) -> list[torch.Tensor]:
    return [v for v in pytree.tree_leaves((spec.args, spec.kwargs)) if isinstance(v, torch.Tensor)]


def _publish(staged: str, path: str) -> tuple[str, ...]:
    """Move sidecar files, then the model itself, from the staging folder to `path`'s folder."""
    folder, parent = os.path.dirname(staged), os.path.dirname(path)
    sidecars = sorted(f for f in os.listdir(folder) if f != os.path.basename(staged))
    for name in sidecars:
        os.replace(os.path.join(folder, name), os.path.join(parent, name))
    os.replace(staged, path)
    return tuple(sidecars)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress logs and deprecation notices for the duration of one export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape")
            # a module loaded from a .pt2 cannot switch to eval mode; it was exported in eval mode
            warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode",
                                    category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _has_batch(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _state_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class _StepFailed(RuntimeError):
    """One step of an export attempt failed; the message names the step and the root cause."""


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised with the step named
        raise _StepFailed(f"{name} failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """`Type: first line` of an error, with the root cause's first line when it was wrapped."""
    if isinstance(exc, _StepFailed):
        return str(exc)
    text = f"{type(exc).__name__}: {_line_of(exc)}"
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return text if root is exc else f"{text} (caused by {type(root).__name__}: {_line_of(root)})"


def _line_of(exc: BaseException) -> str:
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0][:300] if lines else "(no message)"


_EXPORTER_TITLES = {"dynamo": "dynamo exporter", UNOPTIMIZED: "dynamo exporter without its optimizer",
                    "legacy": "legacy TorchScript exporter"}


def _explain_failure(model: nn.Module, failures: dict[str, str]) -> str:
    tried = " ".join(f"{_EXPORTER_TITLES[name]}: {why}." for name, why in failures.items())
    return (f"could not export {type(model).__name__} to ONNX. {tried} Try: check that the model runs on inputs "
            "with another batch size (dim 0 must be free), pass opset=... (17 or 18), or replace the "
            "op named above with supported ones.")
