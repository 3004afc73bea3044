"""`from_pretrained`: load a folder written by `save_pretrained` after structprune pruned the model.

A folder whose config transformers can rebuild alone (no LAYERS_KEY in config.json) is loaded by
transformers' own `from_pretrained`. Otherwise transformers' `from_pretrained` loads it into a subclass
of the model's class that, right after transformers builds it from config.json, resizes itself to the
recorded shapes (SHAPES_KEY, the model's own tensor names; older folders: the shapes stored in the
safetensors files) and sets the recorded module attributes (rebuild.py). So transformers' loader does
what it does for any model: it renames and merges stored tensors where the family's checkpoint format
differs from its modules (transformers 5 saves GPT-NeoX's `lm_head` as `embed_out` and Mixtral's fused
experts one by one), reads shards and dtypes, builds on the meta device and assigns the stored tensors.
The load is strict: a missing, unexpected or mis-shaped tensor is an error. The model returned is of
the original class. Only safetensors are read, so loading never unpickles anything.
"""
from __future__ import annotations

import importlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn

from structprune.errors import UsageError
from structprune.hf.rebuild import ATTRIBUTES_KEY, LAYERS_KEY, SHAPES_KEY, rebuild
from structprune.io.hf_folder import architecture_class as io_architecture_class
from structprune.io.hf_folder import quiet_progress

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def from_pretrained(folder: str | Path, model_class: type | None = None) -> nn.Module:
    """The model saved in `folder`, in eval mode; `model_class` defaults to the config's architecture.

    Use it for every folder structprune wrote: it calls transformers' `from_pretrained` where that is
    enough and rebuilds per-block widths where it is not.
    """
    import transformers  # lazy: transformers is an optional extra (structprune[hf])

    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = model_class or architecture_class(config)
    if getattr(config, LAYERS_KEY, None) is None:
        with quiet_progress():
            return cls.from_pretrained(folder, use_safetensors=True).eval()
    resizing = _resizing_class(cls, rebuild_shapes(folder, config), getattr(config, ATTRIBUTES_KEY, None) or {})
    with quiet_progress():
        model, info = resizing.from_pretrained(folder, config=config, use_safetensors=True, output_loading_info=True)
    model.__class__ = cls
    problems = {key: sorted(map(str, found))[:3] for key, found in info.items() if found and key in LOAD_PROBLEMS}
    if problems:
        raise UsageError(f"{folder} does not fit the model its config describes ({problems}); "
                         "save it again with save_pretrained")
    return model.eval()


LOAD_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs", "conversion_errors")


def _resizing_class(cls: type, shapes: dict, attributes: dict) -> type:
    """`cls`, resized to `shapes` with `attributes` set as soon as transformers has built it. It keeps
    cls's name and module: transformers looks up a family's checkpoint renames by them."""
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, config, *args, **kwargs)
        rebuild(self, shapes, attributes)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                        "__qualname__": cls.__qualname__})


def rebuild_shapes(folder: Path, config: Any) -> dict[str, tuple[int, ...]]:
    """The shapes the architecture built from `config` is resized to: none where the config needs no
    rebuild, else those structprune recorded in it (the model's tensor names), or, in folders saved
    before it recorded them, the stored ones."""
    if getattr(config, LAYERS_KEY, None) is None:
        return {}  # transformers builds this config's model as it was saved
    recorded = getattr(config, SHAPES_KEY, None)
    return {k: tuple(v) for k, v in recorded.items()} if recorded is not None else stored_shapes(folder)


def built_for_folder(folder: Path, config: Any, cls: type) -> nn.Module:
    """The architecture `from_pretrained` loads the folder's tensors into: built from `config` without
    initialising weights, resized to the recorded shapes and given the recorded attributes."""
    with _weights_not_initialised():
        model = cls(config).to(_dtype(config))
    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights()  # transformers ties input and output embeddings in the initialisation skipped above
    return rebuild(model, rebuild_shapes(folder, config), getattr(config, ATTRIBUTES_KEY, None) or {})


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the names (and in the pieces) `save_pretrained` writes them: transformers
    5 reverts its checkpoint conversions on save; the plain state_dict where this transformers has none."""
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return state
    return revert_weight_conversion(model, dict(state))


def _weights_not_initialised() -> ContextManager:
    """transformers' context that builds a model without initialising its weights (they are all loaded
    next); a plain build where this transformers has none."""
    try:
        skip = importlib.import_module("transformers.initialization").no_init_weights
    except (ImportError, AttributeError):
        return nullcontext()
    return skip()


def _dtype(config: Any) -> torch.dtype:
    """The dtype the config was saved with (float32 where it names none), as transformers loads it."""
    dtype = getattr(config, "dtype", None)
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def architecture_class(config: Any) -> type:
    """The transformers class config.json names (`architectures[0]`), or the AutoModel class of its model
    type; never code from the folder (no `trust_remote_code`)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    cls = io_architecture_class(transformers, getattr(config, "architectures", None) or [], "config.json")
    return cls if issubclass(cls, transformers.PreTrainedModel) else MODEL_MAPPING[type(config)]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: one file, or the shards its index lists."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / name for name in shards]
    if (folder / SAFETENSORS).is_file():
        return [folder / SAFETENSORS]
    raise UsageError(f"{folder} holds no {SAFETENSORS} (or {SAFETENSORS_INDEX}); save it with save_pretrained")


def stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    shapes = {}
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as stream:
            shapes.update({key: tuple(stream.get_slice(key).get_shape()) for key in stream.keys()})
    return shapes


def load_strictly(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """load_state_dict where the only keys allowed missing are tied copies of loaded tensors. The stored
    tensors become the model's (no second copy); a name tied to a stored one is pointed at it too."""
    ties = _tied_names(model)
    result = model.load_state_dict(tensors, strict=False, assign=True)
    named = _named_tensors(model)
    for name in result.missing_keys:
        stored = next((other for other in ties.get(name, ()) if other in tensors), None)
        if stored is not None:
            _point_at(model, name, named[stored])
    named = _named_tensors(model)
    loaded = {id(t) for k, t in named.items() if k in tensors}
    untied = [k for k in result.missing_keys if id(named[k]) not in loaded]
    if result.unexpected_keys or untied:
        raise UsageError(f"{folder} does not fit the model its config describes (not in the model: "
                         f"{result.unexpected_keys[:3]}, not stored: {untied[:3]}); save it again with save_pretrained")


def _tied_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Name -> the other names of the same tensor (tied weights), before loading breaks the ties."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in _named_tensors(model).items():
        by_tensor.setdefault(id(tensor), []).append(name)
    return {name: tuple(n for n in names if n != name) for names in by_tensor.values() for name in names}


def _point_at(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, tensor)


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
