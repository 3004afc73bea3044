"""torch.export `.pt2` archives: check they hold only plain tensors, load them, save them atomically.

`torch.export.load` unpickles some archive parts with `weights_only=False` (tensor-subclass weights
and constants, opaque/custom objects, sample inputs that fail a weights-only load), so a crafted
`.pt2` can run code. `unsafe_archive_parts` finds those parts from the archive's JSON configs and a
weights-only read of the sample inputs, before torch.export.load touches the file.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structprune.capture.deploy import export_for_deployment
from structprune.errors import CaptureError, UsageError
from structprune.io.atomic import write_atomically
from structprune.io.probe import first_line

# Layout of the archive written by torch.export.save (torch >= 2.7), relative to its root folder.
_WEIGHTS_CONFIG = ("data/weights/", "_weights_config.json")
_CONSTANTS_CONFIG = ("data/constants/", "_constants_config.json")
_SAMPLE_INPUTS = ("data/sample_inputs/", ".pt")
_MODELS = ("models/", ".json")
_TENSOR_CONSTANT_PREFIX = "tensor_"


def unsafe_archive_parts(path: Path) -> list[str]:
    """Names of the parts of a `.pt2` archive that loading would unpickle as arbitrary objects.

    An empty list means torch.export.load only reads JSON and raw tensor bytes from it.
    """
    with zipfile.ZipFile(path) as archive:
        entries = {_below_root(name): name for name in archive.namelist()}
        models = _matching(entries, _MODELS)
        findings = [f"model {m} (old archive layout)" for m in models if not _has_configs(entries, m)]
        for relative in _matching(entries, _WEIGHTS_CONFIG):
            findings += _pickled_payloads(archive.read(entries[relative]), "weight", _uses_pickle)
        for relative in _matching(entries, _CONSTANTS_CONFIG):
            findings += _pickled_payloads(archive.read(entries[relative]), "constant", _is_object_constant)
        for relative in _matching(entries, _SAMPLE_INPUTS):
            findings += _unsafe_sample_inputs(archive.read(entries[relative]), relative)
    return findings


def load_exported_program(path: Path) -> torch.export.ExportedProgram:
    """`torch.export.load` on a read-only handle, with damage reported as a one-line UsageError."""
    try:
        with path.open("rb") as stream:
            return torch.export.load(stream)
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged archive
        raise UsageError(
            f"{path} looks like a torch.export archive but cannot be loaded "
            f"({type(exc).__name__}: {first_line(exc)}); export and save it again"
        ) from exc


@dataclass(frozen=True)
class SavedPt2:
    """A `.pt2` archive written by `save_pt2`: where, and which axes stayed free (see
    capture.deploy); `example_inputs` are the inputs it was traced with (also stored inside it)."""

    path: Path
    dynamic_batch: bool
    dynamic_sequence: bool
    has_tokens: bool
    example_inputs: Any


def save_pt2(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> SavedPt2:
    """Export `model` in eval mode with a free batch axis (and token axis) and save it atomically.

    `example_inputs` is a tensor, a tuple of positional inputs, or a dict of keyword inputs. The
    model's own training flags are left as they were.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "linear.pt2"
    >>> saved = save_pt2(torch.nn.Linear(4, 2), torch.randn(1, 4), target)
    >>> saved.path.name, saved.dynamic_batch
    ('linear.pt2', True)
    """
    try:
        deployed = export_for_deployment(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__} to save {path} "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    written = write_atomically(path, lambda stream: torch.export.save(deployed.program, stream))
    return SavedPt2(written, deployed.dynamic_batch, deployed.dynamic_sequence, deployed.has_tokens,
                    deployed.example_inputs)


def _below_root(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def _matching(entries: dict[str, str], pattern: tuple[str, str]) -> list[str]:
    prefix, suffix = pattern
    return sorted(e for e in entries if e.startswith(prefix) and e.endswith(suffix))


def _has_configs(entries: dict[str, str], model_entry: str) -> bool:
    model = model_entry[len(_MODELS[0]) : -len(_MODELS[1])]
    return f"{_WEIGHTS_CONFIG[0]}{model}{_WEIGHTS_CONFIG[1]}" in entries


def _pickled_payloads(config_bytes: bytes, what: str, is_pickled) -> list[str]:
    try:
        config = json.loads(config_bytes)["config"]
    except (ValueError, KeyError, TypeError):
        return [f"{what} config (unreadable)"]
    return [f"{what} {fqn}" for fqn, meta in config.items() if is_pickled(meta)]


def _uses_pickle(meta: dict) -> bool:
    return bool(meta.get("use_pickle", True))


def _is_object_constant(meta: dict) -> bool:
    return _uses_pickle(meta) or not str(meta.get("path_name", "")).startswith(_TENSOR_CONSTANT_PREFIX)


def _unsafe_sample_inputs(data: bytes, relative: str) -> list[str]:
    if not data:  # torch.export.load reads an empty file as "no sample inputs"
        return []
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything a weights-only load refuses needs trust
        return [f"sample inputs {relative}"]
    return []
