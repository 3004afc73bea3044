"""After pruning a Hugging Face model: the config that describes it, so `save_pretrained` writes a folder
that loads back to the same model.

`update_config` reads the pruned blocks' widths (hidden size, heads, key/value heads, head size, MLP
width; see layout.py), writes them into the pruned model's config (in place: its modules share that
object), and proves the run did not change: the pruned model's outputs are bit-identical before and
after. Then it asks whether transformers alone can rebuild the model from that config: it builds the
class from the config on the meta device and compares every tensor shape and every plain module
attribute with the pruned model. If they all agree the config is *uniform* and
`AutoModel.from_pretrained(folder)` loads the saved folder. If not (blocks kept different widths
under global pruning, or an attention width no field of the family expresses, as in BERT whose
attention is always hidden_size wide), the config also records the per-block sizes (LAYERS_KEY), the
shapes of the tensors whose build from the config differs (SHAPES_KEY, under the model's own names, which
the stored names need not be) and the module attributes a rebuild must set (ATTRIBUTES_KEY), and the folder
is loaded with `structprune.hf.from_pretrained`; the same check is then run on that rebuild. Where the widths make a
config transformers refuses to build (BERT wants hidden_size divisible by the head count), the config
keeps the original per-block fields as the base the rebuild starts from.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from structprune.data.running import eval_outputs
from structprune.errors import StructpruneError, VerificationError
from structprune.hf.layout import LAYOUTS, LayerSizes, Layout, config_fields, layer_sizes
from structprune.hf.rebuild import (
    ATTRIBUTES_KEY,
    LAYERS_KEY,
    SHAPES_KEY,
    attribute_differences,
    build,
    mismatches,
    rebuild,
)

PLAIN_LOADER = "transformers from_pretrained"
LAYERED_LOADER = "structprune.hf.from_pretrained"
RECORDS = (LAYERS_KEY, ATTRIBUTES_KEY, SHAPES_KEY)
_MISSING = object()


@dataclass(frozen=True)
class ConfigUpdate:
    """What `update_config` did: the fields it changed (name -> [before, after]), each block's sizes,
    which loader rebuilds the model from the saved folder, and whether the rebuild was proven equal."""

    changed: dict = field(default_factory=dict)
    layers: tuple[LayerSizes, ...] = ()
    loader: str = PLAIN_LOADER
    ok: bool = True
    detail: str = ""

    def to_json(self) -> dict:
        """The report's `hf_config` section."""
        return {"ok": self.ok, "loader": self.loader, "changed": self.changed,
                "layers": [s.to_json() for s in self.layers], "detail": self.detail}


def update_config(original: nn.Module, pruned: nn.Module, example_inputs: Any, *,
                  layouts: Mapping[str, Layout] = LAYOUTS) -> ConfigUpdate:
    """Write the pruned widths into `pruned.config` and prove a rebuild from it. A model it cannot
    describe is not an error: the config is left as it was, the update says why, and a warning too."""
    layout = layouts.get(getattr(pruned.config, "model_type", ""))
    try:
        sizes = layer_sizes(pruned, layout) if layout is not None else ()
        fields = config_fields(pruned, sizes, layout) if layout is not None else {}
    except (StructpruneError, AttributeError) as exc:
        return _not_updated(exc)
    keys = (*fields, *RECORDS)
    saved = {k: getattr(pruned.config, k, _MISSING) for k in keys}
    try:
        return _update(original, pruned, example_inputs, sizes, fields)
    except StructpruneError as exc:
        _set(pruned.config, saved)
        return _not_updated(exc)


def _update(original: nn.Module, pruned: nn.Module, example_inputs: Any, sizes: tuple[LayerSizes, ...],
            fields: dict) -> ConfigUpdate:
    changed = {k: [getattr(original.config, k, None), v] for k, v in fields.items()
               if getattr(original.config, k, None) != v}
    _set_keeping_outputs(pruned, {**fields, **dict.fromkeys(RECORDS, _MISSING)}, example_inputs)
    plain = _built(pruned, pruned.config)
    if plain is not None and not mismatches(plain, pruned):
        return ConfigUpdate(changed, sizes)
    if not fields:
        warnings.warn(f"structprune.hf has no layout for model type {getattr(pruned.config, 'model_type', '?')!r}: "
                      f"the config keeps its widths and the saved folder loads with {LAYERED_LOADER} only",
                      stacklevel=4)
    if plain is None:  # transformers refuses these widths: the rebuild starts from the original fields
        _set_keeping_outputs(pruned, {k: getattr(original.config, k, _MISSING) for k in fields}, example_inputs)
        changed = {}
    return _record_layers(pruned, sizes, changed)


def _record_layers(pruned: nn.Module, sizes: tuple[LayerSizes, ...], changed: dict) -> ConfigUpdate:
    """Record per-block sizes and the attributes a rebuild must set, then prove the rebuild."""
    config, shapes = pruned.config, saved_shapes(pruned)
    base = _built(pruned, config)
    if base is None:
        raise VerificationError(f"transformers cannot build {type(pruned).__name__} from the pruned config")
    built = {k: tuple(t.shape) for k, t in base.state_dict().items()}
    resized = {k: list(shape) for k, shape in shapes.items() if built.get(k) != shape}
    setattr(config, LAYERS_KEY, [s.to_json() for s in sizes])
    setattr(config, SHAPES_KEY, resized)
    setattr(config, ATTRIBUTES_KEY, attribute_differences(rebuild(base, resized, {}), pruned))
    wrong = mismatches(rebuild(_built(pruned, config), resized, getattr(config, ATTRIBUTES_KEY)), pruned)
    if wrong:
        raise VerificationError("the model rebuilt from the pruned config differs from it: " + "; ".join(wrong))
    return ConfigUpdate(changed, sizes, LAYERED_LOADER)


def saved_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor the model's state_dict holds (what save_pretrained writes)."""
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}


def plain_config(config: Any) -> Any:
    """A copy of `config` without structprune's records (what transformers alone reads)."""
    plain = copy.deepcopy(config)
    _set(plain, dict.fromkeys(RECORDS, _MISSING))
    return plain


def _built(pruned: nn.Module, config: Any) -> nn.Module | None:
    """The pruned model's class built from `config` on the meta device, once the config passes the checks
    transformers runs when it saves or loads one; None when transformers refuses either."""
    plain = plain_config(config)
    try:
        if callable(getattr(plain, "validate", None)):
            plain.validate()
        return build(type(pruned), plain, "meta")
    except Exception:  # noqa: BLE001 - transformers raises assorted errors for widths it refuses
        return None


def _set_keeping_outputs(pruned: nn.Module, fields: Mapping[str, Any], example_inputs: Any) -> None:
    """Set config fields (_MISSING: remove) and prove the model's outputs did not move."""
    before = eval_outputs(pruned, example_inputs)
    _set(pruned.config, fields)
    after = eval_outputs(pruned, example_inputs)
    if len(before) != len(after) or not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise VerificationError(f"{type(pruned).__name__} reads its config while it runs, and the pruned widths "
                                "change its outputs; its config was left as it was")


def _set(config: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if value is not _MISSING:
            setattr(config, key, value)
        elif key in vars(config):
            delattr(config, key)


def _not_updated(exc: Exception) -> ConfigUpdate:
    detail = exc.message if isinstance(exc, StructpruneError) else f"{type(exc).__name__}: {exc}"
    warnings.warn(f"the pruned model's Hugging Face config was not updated: {detail}", stacklevel=3)
    return ConfigUpdate(ok=False, loader="none", detail=detail)
