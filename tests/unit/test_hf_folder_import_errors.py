"""A Hugging Face folder whose model code transformers cannot import (a torchvision built for another
torch is the common case) is refused with one line that names the root cause and the environment as
the thing to fix, never with advice to save the folder again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import structprune.io.hf_folder as hf_folder
from helpers import import_transformers
from structprune.errors import UsageError


def broken_import(*_args, **_kwargs):
    try:
        raise RuntimeError("operator torchvision::nms does not exist")
    except RuntimeError as cause:
        raise ModuleNotFoundError("Could not import module 'BertModel'. Are this object's requirements "
                                  "defined correctly?") from cause


def test_a_model_class_that_fails_to_import_names_the_root_cause(tmp_path, monkeypatch) -> None:
    import_transformers()
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}), encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(hf_folder, "architecture_class", broken_import)
    with pytest.raises(UsageError) as caught:
        hf_folder.load_hf_model(tmp_path, trust_pickle=False)
    message = caught.value.message
    assert "\n" not in message
    assert "RuntimeError: operator torchvision::nms does not exist" in message
    assert "environment is broken, not the folder" in message and "save it again" not in message


def test_the_root_cause_is_found_through_an_implicit_context_too() -> None:
    try:
        try:
            raise OSError("libfoo.so: cannot open shared object file")
        except OSError:
            raise ImportError("Could not import module 'GPT2Model'")  # noqa: B904 - the context is the point
    except ImportError as exc:
        message = hf_folder.import_failure(Path("m"), exc)
    assert "model in m: OSError: libfoo.so: cannot open shared object file." in message
