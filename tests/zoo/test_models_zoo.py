"""models_zoo: every registered model builds, runs, is captured by torch.export, and is seeded."""

from __future__ import annotations

import pytest
import torch

import models_zoo
from models_zoo.vit import default_patch_size

ALL_MODELS = models_zoo.list_models()
IMAGE_MODELS = [n for n in ALL_MODELS if models_zoo.spec(n).input_kind == "image"]


def _run(model: torch.nn.Module, inputs: models_zoo.ModelInputs) -> torch.Tensor:
    args, kwargs = models_zoo.as_call_args(inputs)
    with torch.no_grad():
        return model(*args, **kwargs)


def _export_and_compare(name: str, **kw: object) -> None:
    model = models_zoo.create(name, **kw).eval()
    args, kwargs = models_zoo.as_call_args(models_zoo.example_inputs(name, **kw))
    program = torch.export.export(model, args, kwargs, strict=False)
    with torch.no_grad():
        expected = model(*args, **kwargs)
        actual = program.module()(*args, **kwargs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_gives_finite_logits(name: str) -> None:
    torch.manual_seed(0)
    model = models_zoo.create(name).eval()
    logits = _run(model, models_zoo.example_inputs(name, batch=2))
    assert logits.shape == (2, models_zoo.spec(name).num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_export_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    _export_and_compare(name)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_runs_on_8x8_grayscale_digits(name: str) -> None:
    torch.manual_seed(0)
    kw = {"in_chans": 1, "image_size": 8, "num_classes": 10}
    inputs = models_zoo.example_inputs(name, batch=3, **kw)
    assert inputs.shape == (3, 1, 8, 8)
    logits = _run(models_zoo.create(name, **kw).eval(), inputs)
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()
    _export_and_compare(name, **kw)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_same_seed_gives_same_weights(name: str) -> None:
    torch.manual_seed(123)
    first = models_zoo.create(name).state_dict()
    torch.manual_seed(123)
    second = models_zoo.create(name).state_dict()
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


@pytest.mark.parametrize("name", ALL_MODELS)
def test_spec_matches_default_inputs(name: str) -> None:
    spec = models_zoo.spec(name)
    args, kwargs = models_zoo.as_call_args(models_zoo.example_inputs(name, batch=5))
    first = args[0] if args else kwargs["input_ids"]
    assert spec.name == name
    assert tuple(first.shape) == (5, *spec.input_shape)
    assert spec.input_kind in {"image", "tokens", "vector"}
    assert spec.family and spec.description


def test_list_models_is_sorted_and_complete() -> None:
    expected = {
        "mlp", "cnn", "vgg", "resnet20", "resnet56", "resnet18", "resnet50", "mobilenet_v2",
        "densenet", "csp", "shufflenet", "convnext", "vit", "bert",
    }  # fmt: skip
    assert ALL_MODELS == sorted(ALL_MODELS)
    assert set(ALL_MODELS) == expected


def test_unknown_name_raises_with_available_models() -> None:
    with pytest.raises(ValueError, match="unknown zoo model 'nope'; available: bert, cnn"):
        models_zoo.create("nope")
    with pytest.raises(ValueError, match="resnet20"):
        models_zoo.spec("nope")


def test_unknown_keyword_raises_type_error() -> None:
    with pytest.raises(TypeError, match="image_size"):
        models_zoo.create("mlp", image_size=8)
    with pytest.raises(TypeError, match="in_features"):
        models_zoo.example_inputs("cnn", in_features=3)


def test_example_inputs_are_seeded_and_honour_shape_kwargs() -> None:
    first, again, other = (models_zoo.example_inputs("vgg", seed=s) for s in (1, 1, 2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert models_zoo.example_inputs("mlp", batch=3, in_features=7).shape == (3, 7)
    images = models_zoo.example_inputs("cnn", batch=1, in_chans=2, image_size=16)
    assert images.shape == (1, 2, 16, 16)
    tokens = models_zoo.example_inputs("bert", batch=4, seq_len=24, vocab_size=5)
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape == (4, 24)
    assert tokens["input_ids"].dtype == tokens["attention_mask"].dtype == torch.long
    assert int(tokens["input_ids"].max()) < 5
    assert bool(tokens["attention_mask"][:, 0].all())


def test_factory_kwargs_change_the_model() -> None:
    mlp = models_zoo.create("mlp", in_features=7, hidden=(5,), num_classes=3)
    assert mlp(torch.zeros(2, 7)).shape == (2, 3)
    cnn = models_zoo.create("cnn", image_size=16, channels=(4, 8))
    assert cnn.fc1.in_features == 8 * 4 * 4
    half = models_zoo.create("resnet20", width=0.5)
    assert half.stem[0].out_channels == 8
    assert len(models_zoo.create("resnet56").stages[0]) == 9


@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_imagenet_resnets_have_reference_sizes(name: str, params: int) -> None:
    model = models_zoo.create(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == params  # torchvision's counts


def test_resnet18_runs_at_224() -> None:
    model = models_zoo.create("resnet18", image_size=224).eval()
    logits = _run(model, models_zoo.example_inputs("resnet18", batch=1, image_size=224))
    assert logits.shape == (1, 10)


def test_vit_patch_size_divides_image_size() -> None:
    assert [default_patch_size(s) for s in (8, 28, 32, 224)] == [1, 2, 4, 28]
    vit = models_zoo.create("vit")
    assert vit.blocks[0].attn.num_heads == 4 and vit.blocks[0].attn.head_dim == 8
    assert vit.pos_embed.shape == (1, 8 * 8 + 1, 32)
    with pytest.raises(ValueError, match="must divide"):
        models_zoo.create("vit", image_size=32, patch_size=5)


def test_bert_ignores_padded_tokens() -> None:
    torch.manual_seed(0)
    model = models_zoo.create("bert").eval()
    inputs = models_zoo.example_inputs("bert", batch=2)
    mask = inputs["attention_mask"]
    assert not bool(mask.all())  # some row is padded
    changed = inputs["input_ids"].masked_fill(mask == 0, 0)
    same = _run(model, {"input_ids": changed, "attention_mask": mask})
    torch.testing.assert_close(same, _run(model, inputs))
    unmasked = _run(model, {"input_ids": inputs["input_ids"]})
    assert not torch.allclose(unmasked, _run(model, inputs))
    attention = model.bert.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.attention_head_size) == (4, 8)
    assert attention.all_head_size == 32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_resnets_export_at_224(name: str) -> None:
    torch.manual_seed(0)
    _export_and_compare(name, image_size=224, num_classes=1000)
