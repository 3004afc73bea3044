"""Per-head-dim attention pruning (attention="head_dims"): every head keeps its count and loses the
same dims; q, k and v keep one head_dim; the q·k groups are marked inexact (the softmax scale follows
head_dim) and the rewrite updates head_dim-style attributes instead of head counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models_zoo
import structprune
from helpers import MHABlock, group_with, outputs, positions, refs
from structprune.errors import UsageError
from structprune.selection.plan import Plan

X = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(0))


class SdpaAttention(nn.Module):
    """q/k/v/o projections around F.scaled_dot_product_attention; reshapes with self.head_dim."""

    def __init__(self, dim: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, -1, self.head_dim).transpose(1, 2)

    def forward(self, x):
        y = F.scaled_dot_product_attention(self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class MatmulAttention(nn.Module):
    """HF-eager-style attention written with matmul and a softmax scale stored at construction."""

    def __init__(self, dim: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.all_head_size = dim
        self.scaling = self.attention_head_size ** -0.5
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, x):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scaling, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], self.all_head_size)
        return self.out(y)


def head_dims(model: nn.Module, x=X):
    return structprune.analyze(model.eval(), x, attention="head_dims")


def compress_dims(model: nn.Module, x=X, **kw):
    return structprune.compress(model.eval(), x, **{"ratio": 0.5, "attention": "head_dims", **kw})


def test_sdpa_head_dims_tie_the_same_dim_of_every_head() -> None:
    graph = head_dims(SdpaAttention(12, 3))
    dims = group_with(graph, "q.weight:0")
    assert dims.size == 4 and dims.prunable  # head_dim, not the 3 heads
    assert refs(dims) == {f"{p}.{t}:0" for p in "qkv" for t in ("weight", "bias")} | {"o.weight:1"}
    assert positions(dims, "q.weight:0") == np.tile(np.arange(4), 3).tolist()
    assert positions(dims, "o.weight:1") == np.tile(np.arange(4), 3).tolist()
    assert not dims.exact and any("softmax scale" in op for op in dims.inexact_ops)


def test_whole_heads_remain_the_default_mode() -> None:
    heads = group_with(structprune.analyze(SdpaAttention(12, 3).eval(), X), "q.weight:0")
    assert heads.size == 3 and heads.exact


def test_head_dims_compress_keeps_every_head_and_halves_head_dim() -> None:
    result = compress_dims(SdpaAttention(12, 3))
    model = result.model
    assert model.head_dim == 2
    assert model.q.out_features == model.k.out_features == model.v.out_features == model.o.in_features == 6
    kept = result.plan.keep["q.weight:0"]
    assert len(kept) == 2 and result.plan.meta["attention"] == "head_dims"
    assert outputs(model, X).shape == (2, 5, 12)
    verification = result.report.verification
    assert verification["ok"] and verification["inexact_groups"] == ["q.weight:0"]


def test_head_dims_rewrite_slices_the_same_local_dims_from_each_head() -> None:
    dense = SdpaAttention(12, 3).eval()
    result = compress_dims(dense)
    kept = result.plan.keep["q.weight:0"]
    rows = [h * 4 + d for h in range(3) for d in kept]
    for name in "qkv":
        assert torch.equal(getattr(result.model, name).weight, getattr(dense, name).weight[rows])
    assert torch.equal(result.model.o.weight, dense.o.weight[:, rows])


def test_head_dims_with_a_stored_scale_equal_the_masked_dense_model() -> None:
    """With the scale kept as an attribute, dropping head dims is exactly zeroing them in q, k and v."""
    dense = MatmulAttention(12, 3).eval()
    result = compress_dims(dense)
    small = result.model
    assert (small.num_attention_heads, small.attention_head_size, small.all_head_size) == (3, 2, 6)
    assert small.scaling == dense.scaling
    kept = result.plan.keep["query.weight:0"]
    dropped = [h * 4 + d for h in range(3) for d in range(4) if d not in kept]
    masked = MatmulAttention(12, 3).eval()
    masked.load_state_dict(dense.state_dict())
    with torch.no_grad():
        for proj in (masked.query, masked.key, masked.value):
            proj.weight[dropped] = 0.0
            proj.bias[dropped] = 0.0
    torch.testing.assert_close(outputs(small, X), outputs(masked, X), rtol=1e-5, atol=1e-6)


def test_matmul_attention_ties_query_and_value_dims_through_the_module() -> None:
    dims = group_with(head_dims(MatmulAttention(12, 3)), "query.weight:0")
    assert {"query.weight:0", "key.weight:0", "value.weight:0", "out.weight:1"} <= refs(dims)
    assert dims.size == 4


def test_multihead_attention_keeps_heads_and_shrinks_embed_dim_per_head() -> None:
    x = torch.randn(2, 5, 4)
    result = compress_dims(MHABlock(), x)
    mha = result.model.mha
    assert (mha.num_heads, mha.head_dim, mha.embed_dim) == (3, 2, 6)
    assert mha.in_proj_weight.shape == (18, 6)
    assert outputs(result.model, x).shape == (2, 5, 2) and result.report.verification["ok"]


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_zoo_transformers_prune_head_dims_and_verify(name: str) -> None:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
    before = [m for m in model.modules() if hasattr(m, "num_heads") or hasattr(m, "num_attention_heads")]
    result = compress_dims(model, x)
    after = [m for m in result.model.modules() if hasattr(m, "num_heads") or hasattr(m, "num_attention_heads")]
    count = lambda m: getattr(m, "num_heads", None) or m.num_attention_heads  # noqa: E731
    size = lambda m: getattr(m, "head_dim", None) or m.attention_head_size  # noqa: E731
    assert [count(m) for m in after] == [count(m) for m in before]
    assert [size(m) for m in after] == [size(m) // 2 for m in before]
    assert result.report.verification["ok"]
    assert result.report.params_after < result.report.params_before
    assert outputs(result.model, x).shape == outputs(model, x).shape


def test_a_saved_head_dims_plan_replays_in_head_dims_mode() -> None:
    model, x = models_zoo.create("vit").eval(), models_zoo.example_inputs("vit")
    result = compress_dims(model, x)
    plan = Plan.from_json(result.plan.to_json())
    replayed = structprune.apply_plan(model, x, plan)
    assert {k: v.shape for k, v in replayed.state_dict().items()} == \
        {k: v.shape for k, v in result.model.state_dict().items()}
    torch.testing.assert_close(outputs(replayed, x), outputs(result.model, x))


def test_unknown_attention_mode_is_a_usage_error_naming_the_modes() -> None:
    with pytest.raises(UsageError, match="unknown attention mode 'dims'; choose one of: heads, head_dims"):
        structprune.compress(SdpaAttention(), X, attention="dims")
