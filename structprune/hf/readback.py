"""Read a saved Hugging Face folder back against the model it was saved from, without holding a second
copy of the weights (for models too large to load twice).

`check_saved` does what `from_pretrained(folder)` does, step by step, and compares as it goes: it builds
the architecture from the folder's config as `from_pretrained` does (`built_for_folder`: the class built
from the config, resized to the recorded shapes, the recorded attributes set), reads every stored tensor
one at a time and compares it bit for bit with the model's tensor saved under that name
(`checkpoint_state`: the names and pieces save_pretrained writes), checks every such tensor is stored
(only tied copies may be absent) and that the model's tensors fit the built model strictly, then runs the
built model on the model's own tensors (assigned, not copied) and compares its outputs with the model's.
If all of that holds, `from_pretrained(folder)` gives the same model: the same architecture holding the
same bytes. One step is transformers' and taken on trust: for families whose stored names differ from
their modules' (GPT-NeoX, Mixtral), the renames and merges its loader applies are the inverse of those
its save applied; `from_pretrained` (which the CLI's read-back runs) exercises them.
"""
from __future__ import annotations

import importlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn

from structprune.data.running import eval_outputs
from structprune.errors import UsageError
from structprune.hf.load import architecture_class, checkpoint_state, rebuild_shapes, weight_files
from structprune.hf.rebuild import ATTRIBUTES_KEY, rebuild
from structprune.hf.runtime import without_cache


@dataclass(frozen=True)
class SavedCheck:
    """What `check_saved` found: `ok`, the tensors compared, the worst output difference, why not ok."""

    ok: bool
    tensors: int
    max_abs_difference: float
    detail: str = ""


def check_saved(folder: str | Path, model: nn.Module, example_inputs: Any) -> SavedCheck:
    """Check `folder` (written by `model.save_pretrained`) against `model`; see the module docstring.

    Example, with `pruned` a pruned Hugging Face model saved to `out`:
    `check_saved(out, pruned, {"input_ids": ids}).ok` is True when `from_pretrained(out)` gives `pruned`.
    """
    import transformers  # lazy: transformers is an optional extra (structprune[hf])

    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    built = built_for_folder(folder, config, architecture_class(config))
    saved = checkpoint_state(model)
    different = _stored_differences(folder, saved)
    if different:
        return SavedCheck(False, 0, float("inf"), f"stored tensors differ from the model's: {different[:3]}")
    stored = _stored_names(folder)
    unsaved = _unsaved(saved, set(stored))
    if unsaved:
        return SavedCheck(False, len(stored), float("inf"), f"tensors of the model not stored: {unsaved[:3]}")
    try:
        load_strictly(built, model.state_dict(), folder)
    except UsageError as exc:
        return SavedCheck(False, len(stored), float("inf"), exc.message)
    worst = _worst_difference(built.eval(), model, example_inputs)
    ok = worst == 0.0
    return SavedCheck(ok, len(stored), worst, "" if ok else f"outputs differ by up to {worst:.3g}")


def _unsaved(saved: dict[str, torch.Tensor], stored: set[str]) -> list[str]:
    """Names save_pretrained should have written and did not: all but tied copies of a stored tensor."""
    stored_memory = {_memory(t) for name, t in saved.items() if name in stored}
    return [name for name, t in saved.items() if name not in stored and _memory(t) not in stored_memory]


def _memory(tensor: torch.Tensor) -> tuple:
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride()


def _stored_names(folder: Path) -> list[str]:
    return [name for path in weight_files(folder) for name in _tensor_entries(path)[1]]


def _tensor_entries(path: Path) -> tuple[int, dict[str, dict]]:
    """A safetensors file's data start and its tensors' header entries (dtype, shape, data_offsets)."""
    with open(path, "rb") as stream:
        header_size = int.from_bytes(stream.read(8), "little")
        header = json.loads(stream.read(header_size))
    header.pop("__metadata__", None)
    return 8 + header_size, header


def _stored_differences(folder: Path, state: dict[str, torch.Tensor]) -> list[str]:
    """Stored names whose tensor is not bit-identical to the model's (or that the model lacks). Each tensor
    is read from the file into its own buffer and dropped after the comparison (a memory map would keep
    every page it touched resident until the file is closed: a second copy of the weights)."""
    different = []
    for path in weight_files(folder):
        start, entries = _tensor_entries(path)
        with open(path, "rb") as stream:
            for name, entry in sorted(entries.items(), key=lambda item: item[1]["data_offsets"][0]):
                begin, end = entry["data_offsets"]
                stream.seek(start + begin)
                stored = _as_tensor(bytearray(stream.read(end - begin)), entry)
                mine = state.get(name)
                if mine is None or mine.dtype != stored.dtype or not torch.equal(mine, stored):
                    different.append(name)
    return different


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def _as_tensor(raw: bytearray, entry: dict) -> torch.Tensor:
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise UsageError(f"a stored tensor has dtype {entry['dtype']}, which structprune cannot compare; "
                         "save the model in a torch float or integer dtype")
    flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    return flat.reshape(entry["shape"])


def _worst_difference(built: nn.Module, model: nn.Module, example_inputs: Any) -> float:
    with without_cache(built, model):
        mine, theirs = eval_outputs(model, example_inputs), eval_outputs(built, example_inputs)
    if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
        return float("inf")
    return max((float((a.double() - b.double()).abs().max()) for a, b in zip(mine, theirs) if a.numel()),
               default=0.0)


def built_for_folder(folder: Path, config: Any, cls: type) -> nn.Module:
    """The architecture `from_pretrained` builds for the folder: the class built from `config` without
    initialising weights, resized to the recorded shapes and given the recorded attributes."""
    with _weights_not_initialised():
        model = cls(config).to(_dtype(config))
    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights()  # transformers ties input and output embeddings in the initialisation skipped above
    return rebuild(model, rebuild_shapes(folder, config), getattr(config, ATTRIBUTES_KEY, None) or {})


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
