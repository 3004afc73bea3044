"""Rebuild a pruned Hugging Face architecture from its config alone, the way its folder is loaded.

transformers builds every block from one config, so a model whose blocks kept different widths (or
whose attention width no config field can express, like BERT's, which is always hidden_size) cannot be
built by `from_pretrained`. `rebuild` does what it lacks: build the model from the config, give every
tensor the shape it was saved with (one new tensor per tied group), let the shrink rules refresh the
attributes of the modules whose tensors changed (Linear's in/out_features, LayerNorm's shape, GPT-2's
Conv1D `nf`/`nx`), then set the module attributes recorded in the config under ATTRIBUTES_KEY (head
counts, head sizes, softmax scales: whatever the pruned model holds and the rebuild does not).

`attribute_differences` computes that record; `mismatches` proves a rebuild equals the pruned model:
every tensor's shape and every plain attribute of every module.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES, refresh_attributes, snapshot

LAYERS_KEY = "structprune_layers"  # config: per-block sizes (LayerSizes.to_json), when blocks differ
ATTRIBUTES_KEY = "structprune_module_attributes"  # config: module FQN -> {attribute: value} to set after resizing
SHAPES_KEY = "structprune_shapes"  # config: tensor name (the model's) -> shape, where the build from config differs
PLAIN = (bool, int, float, str, type(None))
SKIPPED = frozenset({"training"})


def hf_shrink_rules() -> Mapping:
    """The shrink table plus transformers' Conv1D (GPT-2), whose weight is (in, out)."""
    from transformers.pytorch_utils import Conv1D  # lazy: transformers is an optional extra

    def refresh_conv1d(module: nn.Module, old: dict) -> None:
        module.nx, module.nf = module.weight.shape

    return DEFAULT_SHRINK_RULES | {Conv1D: (refresh_conv1d, ())}


def with_hf_shrink_rules(model: nn.Module, rules: Mapping) -> Mapping:
    """`rules` plus transformers' Conv1D (`hf_shrink_rules`) where `model` holds one, at any depth: its
    `nf` is a width the general search cannot always place (GPT-2's attention output projection reads
    heads x head size and writes the hidden size, both the same number before pruning)."""
    if not any(_is_transformers_conv1d(m) for m in model.modules()):
        return rules
    extra = hf_shrink_rules()
    return rules if all(cls in rules for cls in extra) else {**extra, **rules}


def _is_transformers_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers.")


def build(model_class: type, config: Any, device: str | torch.device = "cpu") -> nn.Module:
    """`model_class(config)` on `device` ("meta": shapes and attributes only, no memory)."""
    with torch.device(device):
        return model_class(config)


def rebuild(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], attributes: Mapping[str, Mapping]) -> nn.Module:
    """Resize `model` (freshly built from the config) to the saved `shapes` and set `attributes`; in place."""
    resize_to_shapes(model, shapes)
    set_attributes(model, attributes)
    return model


def resize_to_shapes(model: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Give every parameter or buffer named in `shapes` that shape (new, uninitialised storage; tied
    tensors stay tied), then refresh the owning modules' attributes. Returns the resized names."""
    owners = _owners(model)
    rules = hf_shrink_rules()
    before = {id(m): snapshot(m, rules) for m in model.modules()}
    resized, touched = [], {}
    for key, shape in shapes.items():
        path, _, name = key.rpartition(".")
        tensor = getattr(model.get_submodule(path), name, None)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) == tuple(shape):
            continue
        fresh = _empty_like(tensor, tuple(shape))
        for module, attr in owners[id(tensor)]:
            setattr(module, attr, fresh)  # a Parameter re-registers as one; a buffer name keeps its buffer slot
            touched[id(module)] = module
        resized.append(key)
    for module in touched.values():
        refresh_attributes(module, before[id(module)], table=rules)
    return resized


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    owners: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            owners[id(tensor)].append((module, name))
    return owners


def _empty_like(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    fresh = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
    return nn.Parameter(fresh, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else fresh


def plain_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Module FQN -> its public attributes that are numbers, strings, flags or tuples/lists of them."""
    return {fqn: {k: _plain(v) for k, v in vars(m).items() if _is_plain(k, v)} for fqn, m in model.named_modules()}


def _is_plain(name: str, value: Any) -> bool:
    if name.startswith("_") or name in SKIPPED:
        return False
    return isinstance(value, PLAIN) or (isinstance(value, (tuple, list)) and all(isinstance(v, PLAIN) for v in value))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def attribute_differences(rebuilt: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    """The plain attributes (JSON values) the pruned model holds and the rebuild does not."""
    have, want = plain_attributes(rebuilt), plain_attributes(pruned)
    found = {fqn: {k: v for k, v in attrs.items() if have.get(fqn, {}).get(k, _MISSING) != v}
             for fqn, attrs in want.items()}
    return {fqn: attrs for fqn, attrs in found.items() if attrs}


def set_attributes(model: nn.Module, attributes: Mapping[str, Mapping[str, Any]]) -> None:
    """Set recorded attributes (a JSON list becomes a tuple where the module held a tuple)."""
    for fqn, attrs in attributes.items():
        module = model.get_submodule(fqn)
        for name, value in attrs.items():
            current = getattr(module, name, None)
            setattr(module, name, tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value)


def mismatches(rebuilt: nn.Module, pruned: nn.Module, limit: int = 3) -> list[str]:
    """Where `rebuilt` differs from `pruned`: tensor names and shapes, then attributes (at most `limit`)."""
    have = {k: tuple(t.shape) for k, t in _tensors(rebuilt).items()}
    want = {k: tuple(t.shape) for k, t in _tensors(pruned).items()}
    found = [f"{k}: shape {have.get(k)} rebuilt, {shape} pruned" for k, shape in want.items() if have.get(k) != shape]
    found += [f"{k}: only in the rebuilt model" for k in have.keys() - want.keys()]
    rebuilt_attributes = plain_attributes(rebuilt)
    for fqn, attrs in attribute_differences(rebuilt, pruned).items():
        found += [f"{fqn}.{k}: {rebuilt_attributes.get(fqn, {}).get(k, _MISSING)!r} rebuilt, {v!r} pruned"
                  for k, v in attrs.items()]
    return found[:limit]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
