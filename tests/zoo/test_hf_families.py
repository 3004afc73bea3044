"""Hugging Face families nobody here wrote, built from their config classes (random weights, 2 layers,
hidden 64; nothing is downloaded): each compresses at ratio 0.5 with `l2` and with `obs` on token batches
(padding included), verifies, comes back smaller, reloads from `save_pretrained` through
`structprune.hf.from_pretrained` with identical outputs, passes `check_saved`, and a causal LM generates.

This sweep found Falcon pruning nothing (`x @ weight.T`, a constant index into its fused projection), T5
failing to capture (its decoder's own config kept the cache), GPT-NeoX and Mixtral folders that did not
reload (names transformers renames on save) and `obs` crashing on parallel blocks (GPT-J, GPT-NeoX, Phi).
Heavier than the default run (about 2 minutes): `make test-slow` (CI runs it) or `make test-all`.
"""
from __future__ import annotations

import pytest
import torch

import structprune
from helpers import import_transformers

pytestmark = pytest.mark.slow

VOCAB = 100
ENCODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
               max_position_embeddings=64)
DECODER = dict(ENCODER, num_key_value_heads=2)
T5 = dict(vocab_size=VOCAB, d_model=64, d_ff=128, d_kv=8, num_layers=2, num_heads=8, decoder_start_token_id=0)
FAMILIES = {  # name -> (model class, config class, config fields)
    "roberta": ("RobertaModel", "RobertaConfig", dict(ENCODER, pad_token_id=1)),
    "albert": ("AlbertModel", "AlbertConfig", dict(ENCODER, embedding_size=32)),
    "electra": ("ElectraModel", "ElectraConfig", dict(ENCODER, embedding_size=32)),
    "deberta_v2": ("DebertaV2Model", "DebertaV2Config", ENCODER),
    "mpnet": ("MPNetModel", "MPNetConfig", ENCODER),
    "modernbert": ("ModernBertModel", "ModernBertConfig", dict(ENCODER, pad_token_id=0)),
    "t5": ("T5ForConditionalGeneration", "T5Config", T5),
    "bart": ("BartModel", "BartConfig", dict(vocab_size=VOCAB, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                             encoder_layers=2, decoder_layers=2, encoder_attention_heads=8,
                                             decoder_attention_heads=8, max_position_embeddings=64)),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", ENCODER),
    "gptj": ("GPTJForCausalLM", "GPTJConfig", dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=8, n_positions=64,
                                                   rotary_dim=4)),
    "falcon": ("FalconForCausalLM", "FalconConfig", dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                                         num_attention_heads=8, new_decoder_architecture=True,
                                                         num_kv_heads=2)),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=8)),
    "phi": ("PhiForCausalLM", "PhiConfig", DECODER),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", DECODER),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(DECODER, head_dim=8)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(DECODER, head_dim=8)),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", DECODER),
    "cohere": ("CohereForCausalLM", "CohereConfig", DECODER),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(DECODER, num_local_experts=4, num_experts_per_tok=2)),
    "vit": ("ViTModel", "ViTConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=8, image_size=32, patch_size=8)),
}


def build(name: str) -> torch.nn.Module:
    transformers = import_transformers()
    model_class, config_class, fields = FAMILIES[name]
    if not hasattr(transformers, model_class):
        pytest.skip(f"this transformers has no {model_class}")
    torch.manual_seed(0)
    return getattr(transformers, model_class)(getattr(transformers, config_class)(**fields)).eval()


def batches(name: str) -> list[dict]:
    """Three batches of 8: 16 tokens with padding on every other row (T5: 8 decoder tokens; ViT: images)."""
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return [{"pixel_values": torch.randn(8, 3, 32, 32, generator=g)} for _ in range(3)]
    found = []
    for _ in range(3):
        ids = torch.randint(4, VOCAB, (8, 16), generator=g)
        mask = torch.ones_like(ids)
        mask[::2, 11:] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        found.append({**batch, "decoder_input_ids": ids[:, :8]} if name == "t5" else batch)
    return found


def first_output(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


@pytest.mark.parametrize("criterion", ["l2", "obs"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_compresses_verifies_reloads_and_generates(name: str, criterion: str, tmp_path) -> None:
    model, data = build(name), batches(name)
    example = {k: v[:2] for k, v in data[0].items()}
    result = structprune.compress(model, example, ratio=0.5, criterion=criterion,
                                  data=data if criterion != "l2" else None)
    pruned, held = result.model, data[-1]
    assert result.report.verification["ok"] and result.report.params_after < result.report.params_before
    assert torch.isfinite(first_output(pruned, held)).all()
    pruned.save_pretrained(tmp_path)
    again = structprune.hf.from_pretrained(tmp_path)
    assert type(again) is type(pruned) and torch.equal(first_output(again, held), first_output(pruned, held))
    check = structprune.hf.check_saved(tmp_path, pruned, held)
    assert check.ok, check
    if type(pruned).__name__.endswith("CausalLM"):
        tokens = pruned.generate(held["input_ids"][:1, :5], attention_mask=torch.ones(1, 5, dtype=torch.long),
                                 max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert tokens.shape == (1, 8)
