"""Hugging Face model folders as a model spec: `config.json` beside safetensors weights, loaded with
transformers (the optional extra `structprune[hf]`), which is imported only when a folder is loaded.

Refused with a one-line UsageError: pickled weights (`pytorch_model.bin`: unpickling runs code from the
file) unless trust_pickle; an architecture transformers does not ship (structprune never runs code
from a model folder, `trust_remote_code` stays off); a folder structprune wrote with per-block widths
(`structprune_layers` in config.json), which only `structprune.hf.from_pretrained` builds; a folder
without weights, a config.json that is not a JSON object, and a missing or broken transformers (a
package transformers imports for the model that fails to import is named, with its own error).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structprune.errors import UsageError
from structprune.io.probe import ModelFile, first_line

HF_CONFIG = "config.json"
HF_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
HF_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HF_RECORDS = ("structprune_layers",)  # config.json keys that only structprune.hf.from_pretrained can build
HF_BATCH, HF_SEQUENCE = 2, 16  # example token inputs: 2 sequences of 16 tokens (fewer if positions are fewer)


def hf_folder_spec(spec: str) -> ModelFile | None:
    """`spec` as a Hugging Face folder (kind "hf_folder"), or None when it is no folder with a config.json."""
    try:
        folder = Path(spec)
        return ModelFile(spec, "hf_folder", folder) if (folder / HF_CONFIG).is_file() else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: probing explains it
        return None


def load_hf_model(folder: Path, trust_pickle: bool) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model of `folder` in eval mode (the class config.json names, built by transformers'
    `from_pretrained`) and example token inputs for it."""
    config = _config_json(folder)
    safetensors = _weights_are_safetensors(folder, trust_pickle)
    transformers = _import_transformers(folder)
    try:
        cls = architecture_class(transformers, config.get("architectures") or [], folder)
        with quiet_progress():
            model = cls.from_pretrained(folder, use_safetensors=safetensors)
    except UsageError:
        raise
    except ImportError as exc:  # transformers imports a model's code on first use: the environment is at fault
        raise UsageError(import_failure(folder, exc)) from exc
    except Exception as exc:  # noqa: BLE001 - transformers raises assorted errors for a folder it cannot load
        raise UsageError(f"transformers could not load {folder} ({type(exc).__name__}: {first_line(exc)}); "
                         "save it again with save_pretrained") from exc
    return model.eval(), example_inputs(model.config)


def import_failure(folder: Path, exc: ImportError) -> str:
    """The one-line message for transformers failing to import a model's code: the root cause (transformers
    hides it behind 'Could not import module'), and that the Python environment, not the folder, needs fixing."""
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    return (f"transformers could not import the code of the model in {folder}: {type(root).__name__}: "
            f"{first_line(root)}. The Python environment is broken, not the folder: reinstall the package that "
            "fails (often torchvision, or another package built for a different torch) to match this torch")


@contextmanager
def quiet_progress() -> Iterator[None]:
    """transformers' own progress bars (loading weights, writing shards) off inside the block, as
    structprune's are when output is no terminal; its setting is restored on exit."""
    from transformers.utils import logging  # lazy: the optional extra structprune[hf]

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def architecture_class(transformers: Any, architectures: list, where: Path | str) -> type:
    """The transformers class config.json names (`architectures[0]`), or AutoModel without one; never
    code from the folder."""
    if not architectures:
        return transformers.AutoModel
    cls = getattr(transformers, str(architectures[0]), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UsageError(f"{where}: config.json names architecture {architectures[0]!r}, which transformers "
                         f"{transformers.__version__} does not provide; structprune never runs code from a model "
                         "folder: upgrade transformers or save the model with a built-in architecture")
    return cls


def example_inputs(config: Any) -> dict[str, torch.Tensor]:
    """Token inputs for a text model: `input_ids` (random, seeded, within the vocabulary) and an all-ones
    `attention_mask`, HF_BATCH x HF_SEQUENCE (shorter if the model has fewer positions)."""
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    length = min(HF_SEQUENCE, max_positions(text) or HF_SEQUENCE)
    ids = torch.randint(0, int(text.vocab_size), (HF_BATCH, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def max_positions(config: Any) -> int | None:
    """How many positions the model has (None where its config sets no limit)."""
    return next((int(v) for k in ("max_position_embeddings", "n_positions")
                 if isinstance(v := getattr(config, k, None), int)), None)


def _config_json(folder: Path) -> dict:
    try:
        config = json.loads((folder / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{folder / HF_CONFIG} is not readable JSON ({first_line(exc)}); save it again") from exc
    if not isinstance(config, dict):
        raise UsageError(f"{folder / HF_CONFIG} does not hold a JSON object; save the model with save_pretrained")
    if any(key in config for key in HF_RECORDS):
        raise UsageError(f"{folder} holds a model structprune pruned to different widths per block, which "
                         "transformers cannot build: load it with structprune.hf.from_pretrained in Python and "
                         "pass that model to structprune.compress")
    return config


def _weights_are_safetensors(folder: Path, trust_pickle: bool) -> bool:
    """True for safetensors weights; False for pickled ones (trust_pickle only); UsageError otherwise."""
    if any((folder / name).is_file() for name in HF_SAFE_WEIGHTS):
        return True
    pickled = next((name for name in HF_PICKLED_WEIGHTS if (folder / name).is_file()), None)
    if pickled is None:
        raise UsageError(f"{folder} has a config.json but no weights ({HF_SAFE_WEIGHTS[0]}); save the model "
                         "with save_pretrained")
    if not trust_pickle:
        raise UsageError(f"{folder / pickled} is a pickle; unpickling runs code from the file, so it is refused: "
                         "save the model with save_pretrained (model.safetensors), or pass --trust-pickle if you "
                         "trust the file")
    return False


def _import_transformers(folder: Path) -> Any:
    try:
        import transformers  # lazy: the optional extra structprune[hf]

        return transformers
    except Exception as exc:  # noqa: BLE001 - missing, or installed but broken (its own imports fail)
        raise UsageError(f"{folder} is a Hugging Face folder, and loading it needs transformers: pip install "
                         f"'structprune[hf]' ({type(exc).__name__}: {first_line(exc)})") from exc
