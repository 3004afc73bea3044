"""structprune.hf.check_saved: a saved folder read back against the model it came from without a second
copy of the weights; it must agree with a full `from_pretrained` and catch a folder that differs.
Also `compress(plan=, graph=)` reuses the analysis the plan was made on (no second capture)."""
from __future__ import annotations

import json

import pytest
import torch
from test_hf_config import max_diff, tiny, tokens

import structprune
from structprune import hf
from structprune.errors import UsageError


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A Llama (GQA) and a BERT pruned with different widths per block, each saved with save_pretrained."""
    found = {}
    for name in ("llama", "bert"):
        result = structprune.compress(tiny(name), tokens(), ratio=0.5, global_pruning=True)
        folder = tmp_path_factory.mktemp(name)
        result.model.save_pretrained(folder)
        found[name] = (result.model, folder)
    return found


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_check_saved_passes_a_faithful_folder_that_from_pretrained_reloads(saved, name: str) -> None:
    model, folder = saved[name]
    check = hf.check_saved(folder, model, tokens(3, 7))
    assert check.ok and check.max_abs_difference == 0.0, check
    assert 0 < check.tensors <= len(model.state_dict())
    assert max_diff(hf.from_pretrained(folder), model, tokens(3, 7)) == 0.0


def test_check_saved_names_a_tensor_that_differs_from_the_model(saved) -> None:
    model, folder = saved["llama"]
    name = next(n for n in model.state_dict() if n.endswith("mlp.down_proj.weight"))
    kept = model.get_parameter(name).detach().clone()
    with torch.no_grad():
        model.get_parameter(name).add_(1e-3)
    try:
        check = hf.check_saved(folder, model, tokens())
    finally:
        with torch.no_grad():
            model.get_parameter(name).copy_(kept)
    assert not check.ok and name in check.detail


def test_check_saved_catches_a_config_that_builds_another_architecture(saved, tmp_path) -> None:
    model, folder = saved["llama"]
    for path in folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["rms_norm_eps"] = 0.5  # same shapes, other computation
    (tmp_path / "config.json").write_text(json.dumps(config))
    check = hf.check_saved(tmp_path, model, tokens())
    assert not check.ok and check.max_abs_difference > 0 and "outputs differ" in check.detail


def _renamed_on_save(name: str) -> torch.nn.Module:
    """Families whose checkpoint names differ from their modules' in transformers 5: GPT-NeoX saves
    `lm_head` as `embed_out`; Mixtral stores each expert's weights apart from its fused expert tensors."""
    t = pytest.importorskip("transformers", minversion="5")  # earlier ones save these names as they are
    decoder = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(0)
    if name == "gpt_neox":
        return t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**decoder)).eval()
    return t.MixtralForCausalLM(t.MixtralConfig(**decoder, num_key_value_heads=2, num_local_experts=4,
                                                num_experts_per_tok=2)).eval()


@pytest.mark.parametrize("name, stored", [("gpt_neox", "embed_out.weight"),
                                          ("mixtral", "model.layers.0.block_sparse_moe.experts.3.w2.weight")])
def test_a_folder_saved_under_the_familys_checkpoint_names_reloads_and_checks(name: str, stored: str,
                                                                               tmp_path) -> None:
    """These folders failed to reload ('GPTNeoXForCausalLM has no attribute embed_out'): the rebuild read
    shapes and tensors by their stored names."""
    result = structprune.compress(_renamed_on_save(name), tokens(), ratio=0.5)
    result.model.save_pretrained(tmp_path)
    assert stored in hf.load.stored_shapes(tmp_path) and stored not in result.model.state_dict()
    again = hf.from_pretrained(tmp_path)
    assert type(again) is type(result.model) and not again.training
    assert max_diff(again, result.model, tokens(3, 7)) == 0.0
    check = hf.check_saved(tmp_path, result.model, tokens(3, 7))
    assert check.ok and check.max_abs_difference == 0.0, check


def test_keys_a_family_never_saves_are_not_required_in_the_folder(tmp_path) -> None:
    """Marian leaves its sinusoidal position tables out of the folder (_keys_to_ignore_on_save)."""
    t = pytest.importorskip("transformers", minversion="5")
    torch.manual_seed(0)
    model = t.MarianMTModel(t.MarianConfig(vocab_size=100, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                           encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                                           decoder_attention_heads=4, max_position_embeddings=32, pad_token_id=0,
                                           decoder_start_token_id=0)).eval()
    inputs = {**tokens(), "decoder_input_ids": tokens()["input_ids"][:, :4]}
    result = structprune.compress(model, inputs, ratio=0.5)
    result.model.save_pretrained(tmp_path)
    ignored = set(model._keys_to_ignore_on_save)
    assert ignored and not ignored & set(hf.load.stored_shapes(tmp_path))
    check = hf.check_saved(tmp_path, result.model, inputs)
    assert check.ok, check


def test_loading_into_a_class_the_folder_does_not_fill_is_refused(tmp_path) -> None:
    """transformers alone would warn and initialise the missing LM head at random."""
    t = pytest.importorskip("transformers")
    t.LlamaModel(t.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4)).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match=r"does not fit LlamaForCausalLM.*lm_head.weight"):
        hf.from_pretrained(tmp_path, t.LlamaForCausalLM)


def test_compress_with_a_plan_reuses_the_given_analysis(monkeypatch) -> None:
    model = tiny("llama")
    graph = structprune.analyze(model, tokens())
    plan = structprune.select(model, tokens(), graph, ratio=0.5)
    expected = structprune.compress(model, tokens(), plan=plan)
    monkeypatch.setattr("structprune.api.analyze", lambda *a, **k: pytest.fail("analysed again"))
    result = structprune.compress(model, tokens(), plan=plan, graph=graph)
    assert result.report.verification["ok"]
    assert max_diff(result.model, expected.model, tokens(3, 7)) == 0.0
    with pytest.raises(UsageError, match="pass plan= with it"):
        structprune.compress(model, tokens(), graph=graph)
