"""Model files for fuzzing, built from valid originals: damaged, mis-typed, crafted, code-carrying.

A `Mutation` (kind, base file, parameters) is plain data, so hypothesis can draw and shrink it and a
failing case can be kept as an `@example`; a builder turns it into a `Mutant`: the file's bytes and
the exit codes the CLI may give for it (2, or 0 too where the file is still valid).
"""
from __future__ import annotations

import builtins
import collections
import io
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

MARKER = "MARKER"  # the file that code from a model file would create


@dataclass(frozen=True)
class Originals:
    """The valid files every mutation starts from, as bytes."""

    state: bytes = field(repr=False)
    legacy: bytes = field(repr=False)
    pt2: bytes = field(repr=False)


class RunsCode:
    """Unpickling this calls `call(*args)`: the file-borne code that must never run untrusted."""

    def __init__(self, call: Callable, args: tuple) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def code_payloads(marker: Path) -> dict[str, RunsCode]:
    """Three ways a pickle can create `marker`."""
    return {"system": RunsCode(os.system, (f"touch '{marker}'",)),
            "open": RunsCode(builtins.open, (str(marker), "w")),
            "exec": RunsCode(builtins.exec, (f"open({str(marker)!r}, 'w').close()",))}


def saved(obj: object, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def rewrite_zip(data: bytes, edit: Callable[[str, bytes], bytes | None] = lambda name, body: body,
                extra: tuple[tuple[str, bytes], ...] = (), rename: Callable[[str], str] = lambda name: name) -> bytes:
    """A copy of the zip `data` (entries stored, CRCs recomputed) with entries edited (None drops one),
    renamed or added."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        for info in source.infolist():
            body = edit(info.filename, source.read(info))
            if body is not None:
                target.writestr(rename(info.filename), body)
        for name, body in extra:
            entry = zipfile.ZipInfo(name)
            entry.filename = name  # keep a NUL byte: ZipInfo() itself cuts the name there
            target.writestr(entry, body)
    return out.getvalue()


def zip_contents(data: bytes) -> dict[str, bytes] | None:
    """Entry name -> bytes, or None when zipfile cannot read every entry back intact."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {info.orig_filename: archive.read(info) for info in archive.infolist()}
    except Exception:  # noqa: BLE001 - any failure: not intact
        return None


def state_dict_of(originals: Originals) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(originals.state), weights_only=True)


def edit_json(suffix: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, body: bytes) -> bytes:
        if not name.endswith(suffix):
            return body
        tree = json.loads(body)
        change(tree)
        return json.dumps(tree).encode()
    return edit


@dataclass(frozen=True)
class Mutation:
    kind: str
    base: str  # "state", "legacy" or "pt2"
    params: tuple


@dataclass(frozen=True)
class Mutant:
    data: bytes = field(repr=False)
    codes: frozenset[int]


REFUSED = frozenset({2})


def truncated(m: Mutation, o: Originals, case: Path) -> Mutant:
    data = getattr(o, m.base)
    return Mutant(data[: int(len(data) * m.params[0])], REFUSED)


def bit_flipped(m: Mutation, o: Originals, case: Path) -> Mutant:
    data = bytearray(getattr(o, m.base))
    for where, bit in m.params:
        data[int(where * len(data))] ^= 1 << bit
    intact = zip_contents(bytes(data)) == zip_contents(getattr(o, m.base))
    return Mutant(bytes(data), frozenset({0, 2}) if intact else REFUSED)  # a flipped timestamp is harmless


VALID_DTYPES = {"float16", "bfloat16", "float64"}


def retyped(m: Mutation, o: Originals, case: Path) -> Mutant:
    index, dtype = m.params
    state = state_dict_of(o)
    key = sorted(state)[index % len(state)]
    state[key] = state[key].to(getattr(torch, dtype))
    return Mutant(saved(state), frozenset({0}) if dtype in VALID_DTYPES else REFUSED)


def non_finite(m: Mutation, o: Originals, case: Path) -> Mutant:
    index, value, position = m.params
    state = state_dict_of(o)
    key = sorted(state)[index % len(state)]
    flat = state[key].flatten()
    flat[int(position * flat.numel())] = float(value)
    state[key] = flat.reshape(state[key].shape)
    return Mutant(saved(state), REFUSED)


RESHAPES = {
    "unsqueeze": lambda t: t.unsqueeze(0),
    "transpose_or_stack": lambda t: t.t() if t.dim() == 2 else torch.stack([t, t]),
    "drop_row": lambda t: t[:-1],
    "scalar": lambda t: torch.tensor(1.0),
    "huge_expand": lambda t: torch.zeros(1).expand(10**9, 10**9),
    "empty": lambda t: torch.empty(0),
}


def reshaped(m: Mutation, o: Originals, case: Path) -> Mutant:
    index, how = m.params
    state = state_dict_of(o)
    key = sorted(state)[index % len(state)]
    state[key] = RESHAPES[how](state[key])
    return Mutant(saved(state), REFUSED)


class _StorageRef:
    """A storage the crafted pickle refers to by persistent id (declared size `numel`)."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, size: tuple, stride: tuple) -> None:
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.size, self.stride, False,
                                                 collections.OrderedDict())


class _CraftingPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return "storage", torch.FloatStorage, "0", "cpu", obj.numel
        return None


def crafted_storage(m: Mutation, o: Originals, case: Path) -> Mutant:
    """A torch.save zip written by hand: its one tensor declares sizes its 16-byte storage cannot hold."""
    numel, size, stride = m.params
    pickled = io.BytesIO()
    _CraftingPickler(pickled, protocol=2).dump({"features.0.weight": _TensorRef(_StorageRef(numel), size, stride)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, body in [("data.pkl", pickled.getvalue()), ("byteorder", b"little"), ("data/0", bytes(16)),
                           ("version", b"3\n")]:
            archive.writestr(f"crafted/{name}", body)
    return Mutant(out.getvalue(), REFUSED)


def entry_trick(m: Mutation, o: Originals, case: Path) -> Mutant:
    """Entry names that leave the archive folder (relative, absolute, backslash, NUL), repeat, or add a root."""
    data, (how,) = getattr(o, m.base), m.params
    root = zipfile.ZipFile(io.BytesIO(data)).namelist()[0].split("/")[0]
    evil = str(case / "evil_abs")
    tricks = {
        "dotdot": lambda: rewrite_zip(data, extra=(("../../evil", b"x"),)),
        "inner_dotdot": lambda: rewrite_zip(data, extra=((f"{root}/data/../../../evil", b"x"),)),
        "absolute": lambda: rewrite_zip(data, extra=((evil, b"x"),)),
        "backslash": lambda: rewrite_zip(data, extra=((f"{root}\\..\\..\\evil", b"x"),)),
        "nul": lambda: rewrite_zip(data, extra=((f"{root}/version\x00evil", b"x"),)),
        "root_escape": lambda: rewrite_zip(data, rename=lambda n: "../../evil_root/" + n.split("/", 1)[1]),
        "duplicate": lambda: rewrite_zip(data, extra=((zipfile.ZipFile(io.BytesIO(data)).namelist()[-1], b"x"),)),
        "second_root": lambda: rewrite_zip(data, extra=(("evil_root/data.pkl", b"x"),)),
    }
    return Mutant(tricks[how](), REFUSED)


def pickled_code(m: Mutation, o: Originals, case: Path) -> Mutant:
    """A state_dict-looking file whose pickle calls code (os.system / open / exec) when loaded."""
    where, how = m.params
    payload = code_payloads(case / MARKER)[how]
    state = state_dict_of(o)
    files = {"value": lambda: saved({**state, "features.0.weight": payload}),
             "top_level": lambda: saved(payload),
             "checkpoint": lambda: saved({"state_dict": state, "epoch": payload}),
             "legacy": lambda: saved({**state, "extra": payload}, _use_new_zipfile_serialization=False)}
    return Mutant(files[where](), REFUSED)
