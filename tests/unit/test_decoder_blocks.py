"""Decoder LLM blocks: grouped-query attention (query heads that share a key/value head go with it),
RoPE (a head's rotary dims never split: its `inv_freq` is a buffer the module computes, not a weight),
SwiGLU (gate and up tied), RMSNorm, and Hugging Face's own Llama, Qwen2, Mistral, GPT-2 (Conv1D) and
Falcon (fused grouped q/k/v) built from their config classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import structprune
from helpers import import_transformers

HEAD_DIM, HEADS, KV_HEADS, HIDDEN = 4, 8, 2, 32


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class RotaryGQABlock(nn.Module):
    """Llama-style: RMSNorm, q/k/v with fewer key/value heads, RoPE from a non-persistent inv_freq,
    repeat_kv (Hugging Face's expand + reshape, or timm's `repeat_interleave(groups, dim=1)`), causal
    SDPA, o_proj; then RMSNorm and a SwiGLU MLP."""

    def __init__(self, repeat_kv: str = "expand") -> None:
        super().__init__()
        self.repeat_kv = repeat_kv
        self.q_proj = nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)
        self.gate_proj, self.up_proj = nn.Linear(HIDDEN, 48, bias=False), nn.Linear(HIDDEN, 48, bias=False)
        self.down_proj = nn.Linear(48, HIDDEN, bias=False)
        self.norm1, self.norm2 = RMSNorm(HIDDEN), RMSNorm(HIDDEN)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM),
                             persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, HEAD_DIM).transpose(1, 2)
        freqs = torch.arange(s, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        n_rep = q.shape[1] // k.shape[1]
        if self.repeat_kv == "interleave":
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        else:
            k = k[:, :, None].expand(b, k.shape[1], n_rep, s, HEAD_DIM).reshape(b, -1, s, HEAD_DIM)
            v = v[:, :, None].expand(b, v.shape[1], n_rep, s, HEAD_DIM).reshape(b, -1, s, HEAD_DIM)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        h = self.norm2(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def _rows_in_blocks(rows, block: int) -> list[int]:
    """The blocks of `block` consecutive rows that `rows` keeps, asserting each is kept whole."""
    rows = np.asarray(rows)
    blocks = sorted(set((rows // block).tolist()))
    assert rows.tolist() == [b * block + i for b in blocks for i in range(block)], rows
    return blocks


def _kept_rows(model: nn.Module, pruned: nn.Module, name: str) -> list[int]:
    """Which output rows of `model.<name>` survive in `pruned.<name>` (input width kept, rows matched by value)."""
    dense, small = getattr(model, name).weight.detach(), getattr(pruned, name).weight.detach()
    return [next(i for i in range(dense.shape[0]) if torch.equal(dense[i], row)) for row in small]


@pytest.mark.parametrize("repeat_kv", ["expand", "interleave"])
def test_query_heads_go_with_their_key_value_head_and_rotary_dims_stay_whole(repeat_kv: str) -> None:
    torch.manual_seed(0)
    model = RotaryGQABlock(repeat_kv).eval()
    x = torch.randn(2, 6, HIDDEN)
    graph = structprune.analyze(model, x)
    heads = next(g for g in graph.groups if any(m.fqn == "k_proj.weight" and m.axis == 0 for m in g.members))
    assert (heads.size, heads.prunable, heads.exact) == (KV_HEADS, True, True)
    assert {m.fqn for m in heads.members} == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}
    assert all(m.fqn != "inv_freq" for g in graph.groups for m in g.members)
    result = structprune.compress(model, x, ratio=0.5, ignore=["norm1"])  # the hidden width stays
    pruned = result.model
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    kv_kept = _rows_in_blocks(_kept_rows(model, pruned, "k_proj"), HEAD_DIM)
    assert _rows_in_blocks(_kept_rows(model, pruned, "v_proj"), HEAD_DIM) == kv_kept and len(kv_kept) == 1
    n_rep = HEADS // KV_HEADS
    assert _rows_in_blocks(_kept_rows(model, pruned, "q_proj"), HEAD_DIM) == [
        kv * n_rep + r for kv in kv_kept for r in range(n_rep)]
    assert pruned.gate_proj.out_features == pruned.up_proj.out_features == pruned.down_proj.in_features == 24
    assert torch.equal(pruned.inv_freq, model.inv_freq)
    out = pruned(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def _hf_decoder(name: str) -> nn.Module:
    """A small random Hugging Face decoder built from its config class (no download)."""
    transformers = import_transformers()
    llama_like = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
    build = {
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_like)),
        "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**llama_like)),
        "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**llama_like)),
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64, eos_token_id=0, bos_token_id=0)),
        # fused grouped q/k/v read as `x @ weight.T`, key and value picked by a constant index
        "falcon": lambda: transformers.FalconForCausalLM(transformers.FalconConfig(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_kv_heads=2,
            new_decoder_architecture=True, eos_token_id=0, bos_token_id=0)),
    }
    torch.manual_seed(0)
    model = build[name]().eval()
    model.config.use_cache = False
    return model


@pytest.mark.parametrize("name, heads_member, units, export", [
    ("llama", "model.layers.0.self_attn.k_proj.weight", 2, True),
    ("qwen2", "model.layers.0.self_attn.k_proj.weight", 2, False),
    ("mistral", "model.layers.0.self_attn.k_proj.weight", 2, False),
    ("gpt2", "transformer.h.0.attn.c_attn.weight", 4, True),
    ("falcon", "transformer.h.0.self_attention.query_key_value.weight", 2, False),
])
def test_hugging_face_decoders_prune_whole_heads_generate_and_export(name, heads_member, units, export,
                                                                     tmp_path) -> None:
    model = _hf_decoder(name)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    graph = structprune.analyze(model, inputs)
    heads = [g for g in graph.groups if any(m.fqn == heads_member and m.role == "out" for m in g.members)]
    assert [(g.size, g.prunable, g.exact) for g in heads] == [(units, True, True)]  # one group: whole KV groups
    result = structprune.compress(model, inputs, ratio=0.5)
    assert result.report.verification["ok"] and result.report.params_before / result.report.params_after > 3
    pruned = result.model
    assert len(result.plan.keep[heads[0].id]) == units // 2
    assert pruned.get_parameter(heads_member).numel() < model.get_parameter(heads_member).numel() / 3
    assert torch.isfinite(pruned(**inputs).logits).all()
    tokens = pruned.generate(ids[:1, :5], attention_mask=torch.ones(1, 5, dtype=torch.long), max_new_tokens=4,
                             do_sample=False, use_cache=True, pad_token_id=0)
    assert tokens.shape == (1, 9) and torch.equal(tokens[:, :5], ids[:1, :5])
    if export:
        written = structprune.export(pruned, inputs, str(tmp_path / "model.onnx"))
        assert written["dynamic_batch"] and written["dynamic_sequence"] and written["parity"]["ok"]
