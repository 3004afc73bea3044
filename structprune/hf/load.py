"""`from_pretrained`: load a folder written by `save_pretrained` after structprune pruned the model.

A folder whose config transformers can rebuild alone (no LAYERS_KEY in config.json) is loaded by
transformers' own `from_pretrained`. Otherwise transformers' `from_pretrained` loads it into a subclass
of the model's class that, right after transformers builds it from config.json, resizes itself to the
recorded shapes (SHAPES_KEY, the model's own tensor names; older folders: the shapes stored in the
safetensors files) and sets the recorded module attributes (rebuild.py). So transformers' loader does
what it does for any model: it renames and merges stored tensors where the family's checkpoint format
differs from its modules (transformers 5 saves GPT-NeoX's `lm_head` as `embed_out` and Mixtral's fused
experts one by one), reads shards and dtypes, builds on the meta device and assigns the stored tensors.
Both loads are strict: a missing, unexpected or mis-shaped tensor is an error (transformers alone only
warns and initialises what is missing at random). The model returned is of the original class. Only
safetensors are read, so loading never unpickles anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structprune.errors import UsageError
from structprune.hf.rebuild import ATTRIBUTES_KEY, LAYERS_KEY, SHAPES_KEY, rebuild
from structprune.io.hf_folder import architecture_class as io_architecture_class
from structprune.io.hf_folder import quiet_progress

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


LOAD_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")  # of output_loading_info


def from_pretrained(folder: str | Path, model_class: type | None = None) -> nn.Module:
    """The model saved in `folder`, in eval mode; `model_class` defaults to the config's architecture.

    Use it for every folder structprune wrote: it calls transformers' `from_pretrained` where that is
    enough and rebuilds per-block widths where it is not.
    """
    import transformers  # lazy: transformers is an optional extra (structprune[hf])

    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = model_class or architecture_class(config)
    loader = cls
    if getattr(config, LAYERS_KEY, None) is not None:
        loader = _resizing_class(cls, rebuild_shapes(folder, config), getattr(config, ATTRIBUTES_KEY, None) or {})
    with quiet_progress():
        model, info = loader.from_pretrained(folder, config=config, use_safetensors=True, output_loading_info=True)
    model.__class__ = cls
    problems = {key: sorted(map(str, found))[:3] for key, found in info.items() if found and key in LOAD_PROBLEMS}
    if problems:  # transformers only warns, and leaves missing tensors randomly initialised
        raise UsageError(f"{folder} does not fit {cls.__name__} as its config describes it ({problems}); load it with "
                         "the class it was saved from, or save it again with save_pretrained")
    return model.eval()


def _resizing_class(cls: type, shapes: dict, attributes: dict) -> type:
    """`cls`, resized to `shapes` with `attributes` set as soon as transformers has built it. It keeps
    cls's name and module: transformers looks up a family's checkpoint renames by them."""
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, config, *args, **kwargs)
        try:
            rebuild(self, shapes, attributes)
        except AttributeError as exc:  # a recorded name this class does not have
            raise UsageError(f"{cls.__name__} does not hold the tensors the saved folder records ({exc}); load it "
                             "with the class it was saved from") from exc

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                        "__qualname__": cls.__qualname__, "_structprune_resizing": True})


def rebuild_shapes(folder: Path, config: Any) -> dict[str, tuple[int, ...]]:
    """The shapes the architecture built from `config` is resized to: none where the config needs no
    rebuild, else those structprune recorded in it (the model's tensor names), or, in folders saved
    before it recorded them, the stored ones."""
    if getattr(config, LAYERS_KEY, None) is None:
        return {}  # transformers builds this config's model as it was saved
    recorded = getattr(config, SHAPES_KEY, None)
    return {k: tuple(v) for k, v in recorded.items()} if recorded is not None else stored_shapes(folder)


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the names (and in the pieces) `save_pretrained` writes them: without
    the keys the model never saves, and with transformers 5's checkpoint conversions reverted (none where
    this transformers has none). Tied copies are still in; save_pretrained writes one of each."""
    ignored = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    state = {name: tensor for name, tensor in model.state_dict().items() if name not in ignored}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return state
    return revert_weight_conversion(model, state)


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
