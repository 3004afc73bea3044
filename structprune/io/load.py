"""load_model: turn a model spec (zoo name, file or folder) into a model plus example inputs, safely.

Accepted: `zoo:NAME`; a torch.export `.pt2` archive; a state_dict saved with torch.save plus an
`arch`; a Hugging Face folder (config.json + safetensors, see hf_folder). Refused with a one-line
UsageError: a pickled whole module (unpickling runs code from the file; allowed with
trust_pickle=True), a `.pt2` whose loading would run code (see pt2), TorchScript, missing, empty or
damaged files, weights with NaN/Inf or of a non-float kind for float parameters, and an input shape
that contradicts the inputs the source brings. The input file is only ever opened for reading.
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
from structprune.io.hf_folder import hf_folder_spec, load_hf_model
from structprune.io.probe import ModelFile, code_globals, first_line, probe_model_spec
from structprune.io.pt2 import check_payload_sizes, load_exported_program, unsafe_archive_parts

_SAFE_ALTERNATIVES = "save a torch.export archive (.pt2) or a state_dict with --arch instead"
_PT2_INSTEAD = "save a .pt2 with torch.export instead (torch.export.save), which needs no class to load"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for capture: eval mode where possible, with inputs it accepts.

    `example_inputs` is a tensor, a tuple of positional inputs or a dict of keyword inputs;
    `name` is filesystem-safe (for the output folder); `source` is "zoo", "pt2", "state_dict",
    "pickle" or "hf"; `arch`/`arch_kwargs` say how to rebuild the architecture, where known; `folder`
    is the Hugging Face folder the model came from (its tokenizer files live there).
    """

    model: nn.Module
    example_inputs: Any
    name: str
    source: str
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    folder: str | None = None

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """One sample's input shape (the example without its batch), for fitting data to the model; None
        when the example is not a single tensor (token dicts, several inputs)."""
        example = self.example_inputs
        return tuple(example.shape[1:]) if isinstance(example, torch.Tensor) else None


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
    found = hf_folder_spec(request.spec) or probe_model_spec(request.spec)
    loaded = (loaders or MODEL_LOADERS)[found.kind](request, found)
    _check_input_shape_agrees(loaded, request)
    _check_parameter_values(loaded.model, request.spec)
    return loaded


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
            f"{found.path} is a .pt2 archive whose {unsafe[0]} would run code from the file when loaded (a pickled "
            "Python object, compiled library or code string), so it is refused: re-export it with plain tensors, "
            "or pass --trust-pickle if you trust the file"
        )
    check_payload_sizes(found.path)
    program = load_exported_program(found.path)
    inputs = _program_inputs(program, found.path)
    if inputs is None:
        inputs = _inputs_from_shape(request, found.path)
    return LoadedModel(_program_module(program, found.path), inputs, safe_name(found.path.stem), "pt2")


def load_state_dict_file(request: LoadRequest, found: ModelFile) -> LoadedModel:
    """A state_dict (or a checkpoint dict holding one) loaded strictly into `arch`."""
    if request.arch is None:
        raise UsageError(
            f"{found.path} holds only weights (a state_dict); pass --arch zoo:NAME or "
            "package.module:factory to say which architecture they belong to"
        )
    built = build_arch(request.arch, request.arch_kwargs)
    state_dict = find_state_dict(found.payload, found.path)
    load_weights(built.model, state_dict, found.path, request.arch)
    _check_dtype_kinds(built.model, state_dict, found.path)
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
    loaded = _unpickle(found.path, found.payload)
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


def load_hf_folder(request: LoadRequest, found: ModelFile) -> LoadedModel:
    """A Hugging Face folder (see io/hf_folder.py): its model and example token inputs."""
    _reject_arch(request, "a Hugging Face folder carries its own architecture (config.json)")
    model, inputs = load_hf_model(found.path, request.trust_pickle)
    return LoadedModel(model, inputs, safe_name(found.path.resolve().name), "hf", folder=str(found.path))


# Detected kind -> loader. Read-only; extend a copy: load_model(spec, loaders=MODEL_LOADERS | {...}).
MODEL_LOADERS: Mapping[str, Callable[[LoadRequest, ModelFile], LoadedModel]] = MappingProxyType({
    "zoo": load_zoo,
    "pt2": load_pt2,
    "state_dict": load_state_dict_file,
    "pickle": load_pickled,
    "torchscript": refuse_torchscript,
    "hf_folder": load_hf_folder,
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


def _unpickle(path: Path, names: tuple[str, ...]) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - the file's own code or a damaged stream
        raise UsageError(
            f"unpickling {path} failed ({type(exc).__name__}: {first_line(exc)}){_import_hint(exc, names)}"
        ) from exc


def _import_hint(exc: Exception, names: tuple[str, ...]) -> str:
    """What to do when the pickle names a class Python cannot import here."""
    script_classes = [n.split(".", 1)[1] for n in code_globals(names) if n.startswith("__main__.")]
    if script_classes and isinstance(exc, AttributeError):
        return (f"; class {script_classes[0]} was defined in the script that saved the file (__main__), so it "
                "cannot be imported: move it into a module, add that module's folder to PYTHONPATH and save "
                f"again, or {_PT2_INSTEAD}")
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (f"; add the folder that holds module {exc.name!r} to PYTHONPATH (e.g. PYTHONPATH=path/to/project), "
                f"or {_PT2_INSTEAD}")
    return ""


def _program_module(program: torch.export.ExportedProgram, path: Path) -> nn.Module:
    try:
        return program.module()
    except Exception as exc:  # noqa: BLE001 - builds code from the archive: damage shows up here too
        raise UsageError(
            f"{path} loads, but its module cannot be built ({type(exc).__name__}: {first_line(exc)}); "
            "export and save it again"
        ) from exc


def _program_inputs(program: torch.export.ExportedProgram, path: Path) -> Any | None:
    example = program.example_inputs
    if example is None:
        return None
    if not (isinstance(example, tuple) and len(example) == 2 and isinstance(example[0], tuple)
            and isinstance(example[1], dict)):
        raise UsageError(f"{path} holds sample inputs that are not (args, kwargs); export and save it again")
    args, kwargs = example
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
            f"{path} does not say what input the model takes; pass --input-shape with the batch first, "
            "e.g. 1,3,32,32"
        )
    return random_inputs(request.input_shape)


def _check_input_shape_agrees(loaded: LoadedModel, request: LoadRequest) -> None:
    """--input-shape for a source that brings its own inputs must describe those inputs."""
    if request.input_shape is None:
        return
    inputs = loaded.example_inputs
    if isinstance(inputs, torch.Tensor) and tuple(inputs.shape[1:]) == request.input_shape:
        return
    takes = f"inputs of shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else "several inputs"
    raise UsageError(
        f"{request.spec} takes {takes}, but --input-shape gives {request.input_shape} after the batch; "
        "drop --input-shape (the model brings its own example inputs) or correct it"
    )


def _check_parameter_values(model: nn.Module, spec: str) -> None:
    """Weights with NaN or infinities (or none at all, on the meta device) cannot be pruned or verified."""
    for name, parameter in model.named_parameters():
        if parameter.is_meta:
            raise UsageError(f"{spec}: parameter {name!r} has no values (meta device); save the real weights")
        if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
            raise UsageError(
                f"{spec}: parameter {name!r} holds NaN or infinite values, so the pruned model could not be "
                "verified; fix or retrain the weights"
            )


def _check_dtype_kinds(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """load_state_dict casts silently: integer, bool or complex weights for float parameters are a wrong file."""
    for key, expected in model.state_dict().items():
        given = state_dict.get(key, state_dict.get(f"module.{key}"))
        if given is not None and _dtype_kind(given) != _dtype_kind(expected):
            raise UsageError(
                f"{key!r} in {path} is {given.dtype}, but the model's is {expected.dtype}; "
                "save the weights the model was trained with (float16/float64 are fine for float32)"
            )


def _dtype_kind(tensor: torch.Tensor) -> str:
    if tensor.is_complex():
        return "complex"
    return "float" if tensor.is_floating_point() else "integer"
