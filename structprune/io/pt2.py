"""torch.export `.pt2` archives: check they hold only plain tensors, and load them (capture.deploy saves them).

`torch.export.load` unpickles some archive parts with `weights_only=False` (tensor-subclass weights
and constants, opaque/custom objects, sample inputs that fail a weights-only load, the pre-2.7
layout and legacy `data/weights/<model>.pt` files), loads AOTInductor shared libraries, and
evaluates strings of the program JSON (see pt2_program), so a crafted `.pt2` can run code.
`unsafe_archive_parts` finds all of those before torch.export.load touches the file.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from structprune.compat import TORCH_EXPORT_LOGGERS
from structprune.errors import UsageError
from structprune.io.probe import check_entry_names, first_line
from structprune.io.pt2_program import code_in_program

# Layout of the archive written by torch.export.save (torch >= 2.7), relative to its root folder.
_WEIGHTS_CONFIG = ("data/weights/", "_weights_config.json")
_CONSTANTS_CONFIG = ("data/constants/", "_constants_config.json")
_SAMPLE_INPUTS = ("data/sample_inputs/", ".pt")
_MODELS = ("models/", ".json")
_LEGACY_PAYLOADS = (("data/weights/", ".pt"), ("data/constants/", ".pt"))  # pickled; torch prefers them
_COMPILED_CODE = ("data/aotinductor/", "")  # AOTInductor shared libraries, which loading dlopens
_LEGACY_LAYOUT_ENTRY = "version"  # a top-level entry: torch.export.load then tries the pickled pre-2.7 layout
_TENSOR_CONSTANT_PREFIX = "tensor_"


def unsafe_archive_parts(path: Path) -> list[str]:
    """Parts of a `.pt2` archive that would run code from the file when it is loaded or its module built.

    An empty list means torch.export.load only reads plain JSON and raw tensor bytes from it.
    """
    with zipfile.ZipFile(path) as archive:
        check_entry_names([info.orig_filename for info in archive.infolist()], path)
        names = archive.namelist()
        entries = {_below_root(name): name for name in names}
        findings = _legacy_or_compiled_parts(names, entries)
        for relative in _matching(entries, _MODELS):
            findings += code_in_program(archive.read(entries[relative]), relative)
        for relative in _matching(entries, _WEIGHTS_CONFIG):
            findings += _pickled_payloads(archive.read(entries[relative]), "weight", _uses_pickle)
        for relative in _matching(entries, _CONSTANTS_CONFIG):
            findings += _pickled_payloads(archive.read(entries[relative]), "constant", _is_object_constant)
        for relative in _matching(entries, _SAMPLE_INPUTS):
            findings += _unsafe_sample_inputs(archive.read(entries[relative]), relative)
    return findings


def check_payload_sizes(path: Path) -> None:
    """Raise UsageError for a weight or constant whose bytes are missing: torch.export.load reads an
    empty payload as zeros of the declared shape, without a word."""
    with zipfile.ZipFile(path) as archive:
        entries = {_below_root(name): name for name in archive.namelist()}
        for config in _matching(entries, _WEIGHTS_CONFIG) + _matching(entries, _CONSTANTS_CONFIG):
            folder = config.rsplit("/", 1)[0] + "/"
            for fqn, meta in _payload_metas(archive.read(entries[config])):
                name = entries.get(f"{folder}{meta.get('path_name')}")
                if name is not None and archive.getinfo(name).file_size == 0 and _declared_numel(meta) > 0:
                    raise UsageError(
                        f"{path} is damaged: the data of {fqn} ({folder}{meta['path_name']}) is empty, which "
                        "torch would load as zeros; export and save it again"
                    )


def load_exported_program(path: Path) -> torch.export.ExportedProgram:
    """`torch.export.load` on a read-only handle, with damage reported as a one-line UsageError.

    torch logs its own traceback for a damaged archive; that goes into the message, not to stderr.
    """
    with _captured_export_logs() as logged:
        try:
            with path.open("rb") as stream:
                return torch.export.load(stream)
        except Exception as exc:  # noqa: BLE001 - any failure here means a damaged archive
            cause = logged[0] if logged else exc
            raise UsageError(
                f"{path} looks like a torch.export archive but cannot be loaded "
                f"({type(cause).__name__}: {first_line(cause)}); export and save it again"
            ) from exc


class _ExceptionLog(logging.Handler):
    """Keeps the exceptions attached to log records (torch.export logs the real cause of a failure)."""

    def __init__(self, caught: list[BaseException]) -> None:
        super().__init__(logging.DEBUG)
        self.caught = caught

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.caught.append(record.exc_info[1])


@contextlib.contextmanager
def _captured_export_logs() -> Iterator[list[BaseException]]:
    """Route torch.export's log output into a list for the duration; always restores its handlers."""
    caught: list[BaseException] = []
    loggers = [logging.getLogger(name) for name in TORCH_EXPORT_LOGGERS]  # they print tracebacks themselves
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [_ExceptionLog(caught)], False
    try:
        yield caught
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate


def _legacy_or_compiled_parts(names: list[str], entries: dict[str, str]) -> list[str]:
    findings = [f"pre-2.7 layout (top-level {n!r}, which torch unpickles)" for n in names if n == _LEGACY_LAYOUT_ENTRY]
    models = _matching(entries, _MODELS)
    findings += [f"model {m} (old archive layout)" for m in models if not _has_configs(entries, m)]
    for pattern in _LEGACY_PAYLOADS:
        findings += [f"legacy pickled payload {e}" for e in _matching(entries, pattern)]
    compiled = _matching(entries, _COMPILED_CODE)
    return findings + ([f"compiled AOTInductor library {compiled[0]}"] if compiled else [])


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
    except (ValueError, RecursionError):  # torch's own json.loads fails the same way: damage, not code
        return []
    except (KeyError, TypeError):
        return [f"{what} config (unreadable)"]
    if not isinstance(config, dict) or not all(isinstance(meta, dict) for meta in config.values()):
        return [f"{what} config (not a mapping of payloads)"]
    return [f"{what} {fqn}" for fqn, meta in config.items() if is_pickled(meta)]


def _payload_metas(config_bytes: bytes) -> list[tuple[str, dict]]:
    """(fqn, meta) of the plain-tensor payloads of a weights/constants config; [] if it is unreadable."""
    try:
        config = json.loads(config_bytes)["config"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return []
    if not isinstance(config, dict):
        return []
    return [(fqn, meta) for fqn, meta in config.items()
            if isinstance(meta, dict) and not meta.get("use_pickle", True)
            and isinstance(meta.get("tensor_meta"), dict)]


def _declared_numel(meta: dict) -> int:
    numel = 1
    for size in meta["tensor_meta"].get("sizes") or []:
        value = size.get("as_int") if isinstance(size, dict) else None
        numel *= value if isinstance(value, int) else 1  # a symbolic size counts as non-zero
    return numel


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
