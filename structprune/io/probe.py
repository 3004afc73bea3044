"""Find out what a model spec points at before anything is built from it, without running its code.

A spec is `zoo:NAME` or a path. A file is classified from its bytes: a zip archive by its marker
entries (torch.export `.pt2`, TorchScript, `torch.save`), a bare pickle as a legacy `torch.save`.
A zip archive must first look the way torch writes one, which torch's own reader does not check:
every entry under one folder with a plain relative name, no name twice, every CRC-32 intact.
`torch.save` files are read once with `torch.load(weights_only=True)`, which cannot run code: if
that succeeds the file holds weights ("state_dict"); if it fails on a well-formed pickle the file
needs code to rebuild ("pickle"); anything else is reported as corrupt.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import models_zoo
from structprune.compat import TENSOR_PICKLE_MODULE
from structprune.errors import UsageError

ZOO_PREFIX = "zoo:"
_PICKLE_PROTO = b"\x80"
_ZIP_MAGIC = b"PK"
_LEGACY_PICKLES = 4  # legacy torch.save: magic number, protocol, sys info, then the object
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")

# First matching marker (an entry under the archive's root folder) decides the archive kind.
# TorchScript archives also hold data.pkl, so their markers come first.
ARCHIVE_MARKERS: tuple[tuple[str, str], ...] = (
    ("archive_format", "pt2"),
    ("constants.pkl", "torchscript"),
    ("code/", "torchscript"),
    ("data.pkl", "torch_save"),
)

# Globals a plain tensor checkpoint refers to; any other global names code the file needs.
_DATA_GLOBALS = frozenset({"collections.OrderedDict", "__builtin__.set", "builtins.set"})


@dataclass(frozen=True)
class ModelFile:
    """A classified model spec: `kind` picks the loader, `payload` is what probing already read.

    kind: "zoo" (payload: the zoo name), "pt2", "torchscript", "state_dict" (payload: the object
    `torch.load(weights_only=True)` returned) or "pickle" (payload: the globals the pickle names).
    """

    spec: str
    kind: str
    path: Path | None = None
    payload: Any = None


def probe_model_spec(spec: str) -> ModelFile:
    """Classify `spec`; raise UsageError for a missing, empty or unreadable file.

    >>> probe_model_spec("zoo:cnn").kind
    'zoo'
    """
    if spec.startswith(ZOO_PREFIX):
        return ModelFile(spec, "zoo", None, spec[len(ZOO_PREFIX):])
    path = Path(spec)
    kind = _file_kind(path)
    if kind == "torch_save":
        return _probe_torch_save(spec, path)
    return ModelFile(spec, kind, path)


def code_globals(names: tuple[str, ...]) -> list[str]:
    """The pickled globals that are code (classes, functions), not tensor-storage plumbing."""
    return [n for n in names if n not in _DATA_GLOBALS and not _is_tensor_plumbing(n)]


def first_line(exc: BaseException, limit: int = 160) -> str:
    """A one-line, bounded summary of an exception for a UsageError message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _file_kind(path: Path) -> str:
    _require_nonempty_file(path)
    if zipfile.is_zipfile(path):
        return _archive_kind(path)
    head = _read_head(path)
    if head.startswith(_PICKLE_PROTO):
        return "torch_save"
    if head.startswith(_ZIP_MAGIC):
        raise UsageError(f"{path} is a truncated or damaged zip archive; save or copy the model again")
    raise UsageError(
        f"{path} is not a PyTorch model file (neither a zip archive nor a pickle); "
        "pass a .pt2 torch.export archive, a state_dict .pt/.pth, or zoo:NAME"
    )


def _require_nonempty_file(path: Path) -> None:
    try:
        exists, folder, regular = path.exists(), path.is_dir(), path.is_file()
        size = path.stat().st_size if regular else 0
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte, ...
        raise UsageError(f"cannot use {str(path)[:80]!r} as a model file ({first_line(exc)}); check the path") from exc
    if not exists:
        hint = f"did you mean zoo:{path}?" if str(path) in models_zoo.list_models() else "check the path"
        raise UsageError(f"model file {path} does not exist; {hint} (zoo models are named zoo:NAME)")
    if folder:
        raise UsageError(f"model path {path} is a folder, not a file; pass the model file inside it")
    if not regular:
        raise UsageError(f"model path {path} is not a regular file; pass a model file")
    if size == 0:
        raise UsageError(f"model file {path} is empty; save the model again")


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            return stream.read(4)
    except OSError as exc:
        raise UsageError(f"cannot read model file {path}: {first_line(exc)}") from exc


def _archive_kind(path: Path) -> str:
    entries = _archive_entries(path)
    for marker, kind in ARCHIVE_MARKERS:
        if any(e == marker or (marker.endswith("/") and e.startswith(marker)) for e in entries):
            return kind
    raise UsageError(
        f"{path} is a zip archive but not a PyTorch file (no data.pkl or archive_format entry); "
        "pass a .pt2 torch.export archive or a state_dict saved with torch.save"
    )


def _archive_entries(path: Path) -> set[str]:
    """Entry names below the archive's root folder, once the archive is known to be laid out and
    stored the way torch writes it (torch's own reader checks neither names nor checksums)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            check_entry_names([info.orig_filename for info in infos], path)
            _check_checksums(archive, infos, path)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, a name that is not UTF-8, ...
        raise UsageError(f"{path} is a damaged zip archive ({first_line(exc)}); save it again") from exc
    return {name.split("/", 1)[1] if "/" in name else name for name in (info.filename for info in infos)}


def check_entry_names(names: list[str], path: Path) -> None:
    """Raise UsageError for zip entry names torch never writes: ones that leave the archive's folder
    (absolute, `..`, backslashes, NUL), repeat (readers disagree on which copy counts), or spread
    over several top folders. `names` are the raw names (`ZipInfo.orig_filename`)."""
    crafted = "; torch never writes that, so the file is damaged or crafted: save or export it again"
    for name in names:
        if _escapes_archive(name):
            raise UsageError(f"{path} has an archive entry named {name!r}, which is not a plain relative path{crafted}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{path} has two archive entries named {name!r}{crafted}")
        seen.add(name)
    roots = sorted({name.split("/", 1)[0] for name in names})
    if len(roots) > 1:
        shown = ", ".join(repr(r) for r in roots[:3]) + (", ..." if len(roots) > 3 else "")
        raise UsageError(f"{path} spreads its entries over several top folders ({shown}){crafted}")


def _escapes_archive(name: str) -> bool:
    parts = name.split("/")
    return ("\\" in name or "\x00" in name or name.startswith("/") or ".." in parts
            or bool(_DRIVE.match(name)))


def _check_checksums(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], path: Path) -> None:
    """Read each entry once, so zipfile compares it with its stored CRC-32 (torch.load never does)."""
    for info in infos:
        if info.CRC == 0:  # empty, or saved with torch.serialization.set_crc32_options(False)
            continue
        try:
            with archive.open(info) as stream:
                while stream.read(_CHUNK):
                    pass
        except Exception as exc:  # noqa: BLE001 - a bad CRC, header, compression or length alike
            raise UsageError(
                f"{path} is damaged: its entry {info.filename!r} does not match its checksum or header "
                f"({first_line(exc)}); copy or save the file again"
            ) from exc


def _probe_torch_save(spec: str, path: Path) -> ModelFile:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = pickled_globals(path)
        if names is None:
            raise _corrupt(path, exc) from exc
        return ModelFile(spec, "pickle", path, tuple(names))
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is damaged
        raise _corrupt(path, exc) from exc
    return ModelFile(spec, "state_dict", path, loaded)


def _corrupt(path: Path, exc: BaseException) -> UsageError:
    return UsageError(
        f"{path} is corrupt or truncated and cannot be read ({type(exc).__name__}: {first_line(exc)}); "
        "save or copy the model again"
    )


def pickled_globals(path: Path) -> list[str] | None:
    """The globals (module.name) a torch.save file's pickle refers to, read without unpickling.

    Returns None when the pickle stream is malformed (a damaged file, not a code-bearing one).
    """
    try:
        stream, count = _pickle_stream(path)
        names: list[str] = []
        for _ in range(count):
            names.extend(_globals_in_one_pickle(stream))
        return names
    except Exception:  # noqa: BLE001 - pickletools raises assorted errors on garbage
        return None


def _pickle_stream(path: Path) -> tuple[io.BytesIO, int]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            entry = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            return io.BytesIO(archive.read(entry)), 1
    return io.BytesIO(path.read_bytes()), _LEGACY_PICKLES


def _globals_in_one_pickle(stream: io.BytesIO) -> list[str]:
    names, recent_strings = [], []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name == "GLOBAL":
            names.append(str(arg).replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and len(recent_strings) >= 2:
            names.append(".".join(recent_strings[-2:]))
        elif isinstance(arg, str):
            recent_strings.append(arg)
    return names


def _is_tensor_plumbing(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return module == TENSOR_PICKLE_MODULE or (module == "torch" and (attr.endswith("Storage") or attr == "Size"))
