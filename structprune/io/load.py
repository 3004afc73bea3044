"""load_model: turn a model spec (zoo name or file) into a model plus example inputs, safely.

Accepted: `zoo:NAME`; a torch.export `.pt2` archive; a state_dict saved with torch.save plus an
`arch`. Refused with a one-line UsageError: a pickled whole module (unpickling runs code from the
file; allowed with trust_pickle=True), TorchScript, and missing, empty or damaged files. The input
file is only ever opened for reading.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from structprune.errors import UsageError
from structprune.io.arch import BuiltArch, build_arch, build_zoo_model, check_input_shape, random_inputs
from structprune.io.checkpoint import find_state_dict, load_weights
from structprune.io.probe import ModelFile, code_globals, first_line, probe_model_spec
from structprune.io.pt2 import load_exported_program, unsafe_archive_parts

_SAFE_ALTERNATIVES = "save a torch.export archive (.pt2) or a state_dict with --arch instead"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for capture: eval mode where possible, with inputs it accepts.

    `example_inputs` is a tensor, a tuple of positional inputs or a dict of keyword inputs;
    `name` is filesystem-safe (for the output folder); `source` is "zoo", "pt2", "state_dict" or
    "pickle"; `arch`/`arch_kwargs` say how to rebuild the architecture, where known.
    """

    model: nn.Module
    example_inputs: Any
    name: str
    source: str
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LoadRequest:
    """The user's options for one load_model call."""

    spec: str
    arch: str | None
    arch_kwargs: dict
    trust_pickle: bool
    input_shape: tuple[int, ...] | None


def load_model(
    spec: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    loaders: Mapping[str, Callable[[LoadRequest, ModelFile], LoadedModel]] | None = None,
) -> LoadedModel:
    """Load a model from `zoo:NAME`, a `.pt2` archive, or a state_dict file plus `arch`.

    `input_shape` (without batch) builds example inputs when the source has none; `loaders`
    replaces the kind -> loader table (default MODEL_LOADERS).

    >>> loaded = load_model("zoo:cnn", arch_kwargs={"in_chans": 1, "image_size": 8})
    >>> loaded.source, loaded.name, tuple(loaded.example_inputs.shape)
    ('zoo', 'cnn', (1, 1, 8, 8))
    """
    request = LoadRequest(
        os.fspath(spec), arch, dict(arch_kwargs or {}), trust_pickle, check_input_shape(input_shape)
    )
    found = probe_model_spec(request.spec)
    return (loaders or MODEL_LOADERS)[found.kind](request, found)


def load_zoo(request: LoadRequest, found: ModelFile) -> LoadedModel:
    """`zoo:NAME`: a fresh models_zoo model built with arch_kwargs."""
    _reject_arch(request, "zoo:NAME already names the architecture")
    built = build_zoo_model(found.payload, request.arch_kwargs)
    return LoadedModel(built.model, built.example_inputs, safe_name(found.payload), "zoo",
                       request.spec, request.arch_kwargs)


def load_pt2(request: LoadRequest, found: ModelFile) -> LoadedModel:
    """A torch.export archive: its module() (in the mode it was exported in) and its saved inputs."""
    _reject_arch(request, "a .pt2 archive carries its own architecture")
    unsafe = unsafe_archive_parts(found.path)
    if unsafe and not request.trust_pickle:
        raise UsageError(
            f"{found.path} is a .pt2 archive whose {unsafe[0]} is a pickled Python object; "
            "unpickling runs code from the file, so it is refused: re-export it with plain tensors, "
            "or pass --trust-pickle if you trust the file"
        )
    program = load_exported_program(found.path)
    inputs = _program_inputs(program, found.path)
    if inputs is None:
        inputs = _inputs_from_shape(request, found.path)
    return LoadedModel(program.module(), inputs, safe_name(found.path.stem), "pt2")


def load_state_dict_file(request: LoadRequest, found: ModelFile) -> LoadedModel:
    """A state_dict (or a checkpoint dict holding one) loaded strictly into `arch`."""
    if request.arch is None:
        raise UsageError(
            f"{found.path} holds only weights (a state_dict); pass --arch zoo:NAME or "
            "package.module:factory to say which architecture they belong to"
        )
    built = build_arch(request.arch, request.arch_kwargs)
    load_weights(built.model, find_state_dict(found.payload, found.path), found.path, request.arch)
    inputs = _arch_inputs(built, request, found.path)
    return LoadedModel(built.model, inputs, safe_name(found.path.stem), "state_dict",
                       request.arch, request.arch_kwargs)


def load_pickled(request: LoadRequest, found: ModelFile) -> LoadedModel:
    """A whole pickled module: refused unless trust_pickle, since unpickling runs the file's code."""
    if not request.trust_pickle:
        names = code_globals(found.payload)
        refers = f" (it refers to {names[0]})" if names else ""
        raise UsageError(
            f"{found.path} is a pickled Python object{refers}; unpickling runs code from the file, "
            f"so it is refused: {_SAFE_ALTERNATIVES}, or pass --trust-pickle if you trust the file"
        )
    loaded = _unpickle(found.path)
    if isinstance(loaded, nn.Module):
        inputs = _inputs_from_shape(request, found.path)
        return LoadedModel(loaded.eval(), inputs, safe_name(found.path.stem), "pickle")
    return load_state_dict_file(request, replace(found, kind="state_dict", payload=loaded))


def refuse_torchscript(request: LoadRequest, found: ModelFile) -> LoadedModel:
    """TorchScript has lost the Python module structure torch.export needs."""
    raise UsageError(
        f"{found.path} is a TorchScript archive, which torch.export cannot re-capture; "
        "export a .pt2 from the original nn.Module (torch.export.save) or save its state_dict and pass --arch"
    )


# Detected kind -> loader. Read-only; extend a copy: load_model(spec, loaders=MODEL_LOADERS | {...}).
MODEL_LOADERS: Mapping[str, Callable[[LoadRequest, ModelFile], LoadedModel]] = MappingProxyType({
    "zoo": load_zoo,
    "pt2": load_pt2,
    "state_dict": load_state_dict_file,
    "pickle": load_pickled,
    "torchscript": refuse_torchscript,
})


def safe_name(text: str) -> str:
    """A filesystem-safe model name: runs of other characters become `_`.

    >>> safe_name("my model (v2).final")
    'my_model_v2_.final'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def _reject_arch(request: LoadRequest, why: str) -> None:
    if request.arch is not None:
        raise UsageError(f"--arch is only for state_dict files; {why}: drop --arch {request.arch}")


def _unpickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - the file's own code or a damaged stream
        raise UsageError(f"unpickling {path} failed ({type(exc).__name__}: {first_line(exc)})") from exc


def _program_inputs(program: torch.export.ExportedProgram, path: Path) -> Any | None:
    if program.example_inputs is None:
        return None
    args, kwargs = program.example_inputs
    if args and kwargs:
        raise UsageError(
            f"{path} was exported with both positional and keyword inputs; "
            "re-export it with all inputs positional or all as keywords"
        )
    if kwargs:
        return dict(kwargs)
    return args[0] if len(args) == 1 else tuple(args)


def _arch_inputs(built: BuiltArch, request: LoadRequest, path: Path) -> Any:
    if built.example_inputs is not None:
        return built.example_inputs
    return _inputs_from_shape(request, path)


def _inputs_from_shape(request: LoadRequest, path: Path) -> torch.Tensor:
    if request.input_shape is None:
        raise UsageError(
            f"{path} does not say what input the model takes; pass --input-shape "
            "(sizes without the batch, e.g. 3,32,32)"
        )
    return random_inputs(request.input_shape)
