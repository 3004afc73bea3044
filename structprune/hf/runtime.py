"""Running a Hugging Face model the way structprune runs every model: plain tensors out, no KV cache.

A causal LM (or an encoder-decoder such as T5) whose `config.use_cache` is set returns a cache object
(`DynamicCache`, `EncoderDecoderCache`) next to its logits; torch.export
cannot capture that object (it is no pytree) and the cache only repeats keys and values the logits
already depend on. So while structprune captures, verifies and exports, `without_cache` sets
`use_cache` to False on every config the model holds and puts the user's values back afterwards, even on
error. The logits are the same either way, so verification compares what the model computes; the
exported `model.pt2` / `model.onnx` take tokens and return logits without a cache.

transformers is never imported here: whether a model is a `PreTrainedModel` is read from its class.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import nn

RUNTIME_FLAGS = {"use_cache": False}  # config attribute -> the value structprune runs with


def is_hf_model(model: Any) -> bool:
    """Is `model` a transformers `PreTrainedModel`? Read from its class's bases, so that asking never
    imports transformers (nor touches a lazy transformers module that cannot import its models).

    >>> is_hf_model(nn.Linear(2, 2))
    False
    """
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
               for cls in type(model).__mro__)


def model_configs(model: nn.Module) -> list[Any]:
    """Every config the model runs with, each once, in module order: its own, its text config (a
    multimodal model's decoder) and those its submodules hold (T5 and BART give their decoder stack a
    copy of the config, which decides that stack's cache)."""
    found: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            continue
        text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else None
        for each in (config, text):
            if each is not None:
                found.setdefault(id(each), each)
    return list(found.values())


@contextmanager
def without_cache(*models: nn.Module | None) -> Iterator[None]:
    """Inside the block every Hugging Face model among `models` runs with RUNTIME_FLAGS
    (`use_cache=False`); on exit each config gets back its own values. Other models are untouched.

    >>> with without_cache(nn.Linear(2, 2), None):
    ...     pass
    """
    with ExitStack() as stack:
        for model in models:
            if is_hf_model(model):
                for config in model_configs(model):
                    stack.enter_context(_flags_set(config))
        yield


@contextmanager
def _flags_set(config: Any) -> Iterator[None]:
    saved = {name: getattr(config, name) for name in RUNTIME_FLAGS if hasattr(config, name)}
    try:
        for name in saved:
            setattr(config, name, RUNTIME_FLAGS[name])
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


def restore_runtime_flags(original: nn.Module, copy: nn.Module) -> None:
    """Give `copy` (made from `original` inside `without_cache`) the user's runtime flags back."""
    for source, target in zip(model_configs(original), model_configs(copy), strict=True):
        for name in RUNTIME_FLAGS:
            if hasattr(source, name):
                setattr(target, name, getattr(source, name))
