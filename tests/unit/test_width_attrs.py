"""Width attributes a module's forward reads are refreshed by a general search over the captured
graph (no list of names): each one derived from a pruned size takes the new size, the report lists
every change, and verification proves the result."""
from __future__ import annotations

import torch
from torch import nn

import structprune


class StoredWidthEncoder(nn.Module):
    """Reshapes with a stored width, as torchvision's ViT does with `self.hidden_dim`."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden_dim, self.kernel = hidden, 3
        self.patch = nn.Conv2d(3, hidden, 2, stride=2)
        self.mlp = nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, hidden))
        self.head = nn.Linear(hidden, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).reshape(x.shape[0], self.hidden_dim, -1).transpose(1, 2)
        return self.head((tokens + self.mlp(tokens)).mean(1))


class LayerScale(nn.Module):
    """A per-channel scale reshaped to a stored shape (PoolFormer's `Scale`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self.shape)


class ScaledCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.scale, self.conv2 = nn.Conv2d(3, 12, 3, padding=1), LayerScale(12), nn.Conv2d(12, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.scale(self.conv1(x))))


def _bottleneck() -> nn.Module:
    """An autoencoder decoder whose `nn.Unflatten` turns features into (channels, 4, 4)."""
    return nn.Sequential(nn.Linear(10, 8 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (8, 4, 4)),
                         nn.Conv2d(8, 3, 3, padding=1))


def _compress(model: nn.Module, x: torch.Tensor):
    torch.manual_seed(0)
    return structprune.compress(model.eval(), x, ratio=0.5)


def test_a_stored_width_follows_the_pruned_group_and_the_report_lists_it() -> None:
    torch.manual_seed(0)
    model = StoredWidthEncoder()
    result = _compress(model, torch.randn(2, 3, 8, 8))
    assert result.report.verification["ok"]
    assert result.model.hidden_dim == result.model.patch.out_channels == 8
    assert result.model.kernel == 3 and model.hidden_dim == 16  # unrelated int kept; caller's model untouched
    assert result.report.extra["refreshed_attributes"] == ["<root>.hidden_dim: 16 -> 8"]
    assert "verification_failed" not in str(result.plan.meta)
    assert result.model(torch.randn(3, 3, 8, 8)).shape == (3, 5)


def test_a_stored_shape_tuple_is_refreshed_element_by_element() -> None:
    torch.manual_seed(0)
    result = _compress(ScaledCNN(), torch.randn(1, 3, 6, 6))
    assert result.report.verification["ok"]
    assert result.model.scale.shape == (6, 1, 1) and result.model.scale.scale.shape == (6,)
    assert result.report.extra["refreshed_attributes"] == ["scale.shape: (12, 1, 1) -> (6, 1, 1)"]


def test_unflatten_size_of_an_autoencoder_bottleneck_is_refreshed() -> None:
    torch.manual_seed(0)
    result = _compress(_bottleneck(), torch.randn(2, 10))
    assert result.report.verification["ok"]
    assert result.model[2].unflattened_size == (4, 4, 4) and result.model[0].out_features == 64
    assert result.report.params_after < result.report.params_before
    assert result.report.extra["refreshed_attributes"] == ["2.unflattened_size: (8, 4, 4) -> (4, 4, 4)"]


class TwoOfAKind(nn.Module):
    """Reshapes two 8-wide values with one stored width: one is pruned, the other is a model output
    and keeps its 8. The size means two things, so the attribute is not refreshed."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 8
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.a(x)).reshape(x.shape[0], self.width, 1).squeeze(-1)
        return hidden, self.b(x).reshape(x.shape[0], self.width, 1)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.fc = TwoOfAKind(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, side = self.inner(x)
        return self.fc(hidden), side


def test_an_ambiguous_width_is_left_alone_and_verification_keeps_its_groups_whole() -> None:
    torch.manual_seed(0)
    result = _compress(Outer(), torch.randn(2, 4))
    assert result.report.verification["ok"]
    assert result.model.inner.width == 8
    blocked = dict(result.plan.meta["blocked_by_verification"])
    why = "verification_failed: re-capture failed in module 'inner' (every TwoOfAKind)"
    assert blocked == {"inner.a.weight:0": why}
    assert "refreshed_attributes" not in result.report.extra


class TokenWindow(nn.Module):
    """Weights the first `k` tokens, and `k` equals the hidden width (8) by chance: the search takes it
    for a width, and verification rejects that refresh."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 8
        self.a = nn.Linear(4, 8)
        self.token_weights = nn.Parameter(torch.linspace(0.1, 1.0, 8).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.relu(self.a(x))[:, : self.k] * self.token_weights).sum(1)


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool, self.fc = TokenWindow(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x))


def test_a_refresh_that_verification_rejects_is_undone_for_that_module_and_recorded_in_the_plan() -> None:
    """Re-capture fails in TokenWindow; running it finds that `k` must stay 8 (rewrite/width_search.py)."""
    torch.manual_seed(0)
    x = torch.randn(2, 10, 4)
    result = _compress(Pooled(), x)
    assert result.report.verification["ok"] and result.report.params_after < result.report.params_before
    assert result.plan.meta["width_attribute_choices"] == {"pool": {"k": 8}}
    assert result.plan.meta["width_searched_classes"] == [f"{TokenWindow.__module__}.TokenWindow"]
    assert result.model.pool.k == 8 and result.model.pool.a.out_features == 4
    assert "blocked_by_verification" not in result.plan.meta
    replayed = structprune.apply_plan(Pooled().eval(), x, structprune.Plan.from_json(result.plan.to_json()))
    assert replayed.pool.k == 8 and replayed.pool.a.out_features == 4


class Partition(nn.Module):
    """Splits the tokens into windows of p x p (data dims), as torchvision MaxViT's WindowPartition."""

    def forward(self, x: torch.Tensor, p: int) -> torch.Tensor:
        B, N, C = x.shape
        return x.reshape(B, N // (p * p), p, p, C).reshape(B, N // (p * p), p * p, C)


class WindowHeads(nn.Module):
    """Multi-head attention inside each window, its head count a stored attribute."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, G, P, C = x.shape
        q, k, v = self.qkv(x).reshape(B, G, P, 3, self.heads, self.head_dim).permute(3, 0, 1, 4, 2, 5).unbind(0)
        out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return self.proj(out.permute(0, 1, 3, 2, 4).reshape(B, G, P, self.heads * self.head_dim))


class WindowedLayer(nn.Module):
    """A partition size equal to the head count by chance: both are 4 (MaxViT's grid attention at
    28x28 has p = 4 and 4 heads); a child reshapes a data dim by it, the attention a channel dim."""

    def __init__(self) -> None:
        super().__init__()
        self.p = 4
        self.embed, self.partition, self.attn = nn.Linear(6, 32), Partition(), WindowHeads(32, 4)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.partition(self.embed(x), self.p)
        h = h + self.attn(h)
        return self.head(h.mean((1, 2)))


def test_a_size_a_child_reshapes_a_data_dim_by_is_not_taken_for_a_head_count() -> None:
    torch.manual_seed(0)
    result = structprune.compress(WindowedLayer().eval(), torch.randn(2, 32, 6), ratio=0.5)
    assert result.report.verification["ok"]
    assert result.model.p == 4 and result.model.attn.heads == 2
    assert "blocked_by_verification" not in result.plan.meta
    assert result.model.attn.qkv.weight.shape[0] == 3 * 2 * 8
    assert "<root>.p: 4 -> 2" not in result.report.extra["refreshed_attributes"]


class CrossStage(nn.Module):
    """A CSP block: the expanded width split in two halves by a size derived from an attribute (timm's
    `x.split(self.expand_chs // 2, dim=1)`), or by a literal written in the code."""

    def __init__(self, literal: bool = False) -> None:
        super().__init__()
        self.expand_chs, self.literal = 16, literal
        self.expand = nn.Conv2d(3, 16, 1)
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.transition = nn.Conv2d(16, 12, 1)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, xb = self.expand(x).split(8 if self.literal else self.expand_chs // 2, dim=1)
        out = self.transition(torch.cat([xs, self.blocks(xb)], dim=1))
        return self.head(out.mean((2, 3)))


def test_a_split_size_derived_from_an_attribute_is_pruned_in_equal_halves() -> None:
    torch.manual_seed(0)
    model = CrossStage().eval()
    result = structprune.compress(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.report.verification["ok"]
    assert "blocked_by_verification" not in result.plan.meta
    assert result.model.expand.out_channels == 8 and result.model.expand_chs == 8
    assert "<root>.expand_chs: 16 -> 8" in result.report.extra["refreshed_attributes"]
    kept = result.model.expand.weight.detach()
    halves = model.expand.weight.detach()[:8], model.expand.weight.detach()[8:]
    first = [i for i in range(8) if any(torch.equal(kept[j], halves[0][i]) for j in range(4))]
    second = [i for i in range(8) if any(torch.equal(kept[j], halves[1][i]) for j in range(4, 8))]
    assert first == second and len(first) == 4  # each half keeps the same local channels


def test_a_split_size_written_as_a_literal_keeps_its_group_whole_after_verification() -> None:
    torch.manual_seed(0)
    result = structprune.compress(CrossStage(literal=True).eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.report.verification["ok"]
    assert result.model.expand.out_channels == 16
    reasons = result.plan.meta["blocked_by_verification"]
    assert any(r.startswith("verification_failed:") for r in reasons.values())
    assert result.model.transition.out_channels == 6  # the rest is still pruned


class _TimmStyleAttention(nn.Module):
    """timm's Attention (>= 1.0.2x): reshapes the heads' output with a stored width, `attn_dim`."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.qkv, self.proj = nn.Linear(dim, self.attn_dim * 3), nn.Linear(self.attn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.attn_dim))


def test_a_timm_style_attn_dim_width_follows_the_pruned_heads() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_TimmStyleAttention(), nn.Linear(16, 3)).eval()
    result = structprune.compress(model, torch.randn(2, 5, 16), ratio=0.5)
    attn = result.model[0]
    assert result.report.verification["ok"] and attn.num_heads < 4
    assert attn.attn_dim == attn.num_heads * attn.head_dim == attn.proj.in_features
    assert model[0].attn_dim == 16


class _SingleHeadAttention(nn.Module):
    """hieradet's first stage: one head, q/k/v split from the projection with `-1` as head_dim."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.num_heads, self.dim_out = 1, dim
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, n, 3, self.num_heads, -1), 2)
        out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def _pruned_attention(attention: type, features: int, tokens: int) -> nn.Module:
    """The attention module of embed -> attention -> head, compressed at 0.5 with the embedding width
    kept, after checking that it verified with no group kept whole by verification."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, 16), attention(), nn.Linear(16, 3)).eval()
    result = structprune.compress(model, torch.randn(2, tokens, features), ratio=0.5, ignore=["0"])
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    return result.model[1]


def test_a_single_head_keeps_its_head_count_when_its_dims_are_pruned() -> None:
    attn = _pruned_attention(_SingleHeadAttention, 16, 5)
    assert attn.num_heads == 1 and attn.qkv.out_features == 3 * 8 and attn.proj.in_features == 8


class _PooledHeadAttention(nn.Module):
    """timm MViTv2: q, k and v are each pooled per head by a depthwise conv over head_dim that every head
    shares, so pruning keeps every head and removes the same dims from each (the head count must stay)."""

    def __init__(self, dim: int = 16, num_heads: int = 2, side: int = 2) -> None:
        super().__init__()
        self.num_heads, self.dim_out, self.side = num_heads, dim, side
        head_dim = dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.pools = nn.ModuleList(nn.Conv2d(head_dim, head_dim, 3, padding=1, groups=head_dim, bias=False)
                                   for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (self._pooled(pool, t) for pool, t in zip(self.pools, self.qkv(x).reshape(
            b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.dim_out))

    def _pooled(self, pool: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = t.shape
        t = pool(t.reshape(-1, self.side, self.side, t.shape[-1]).permute(0, 3, 1, 2))
        return t.reshape(b, self.num_heads, t.shape[1], n).transpose(2, 3)


def test_heads_sharing_a_weight_over_their_dims_keep_their_count() -> None:
    attn = _pruned_attention(_PooledHeadAttention, 6, 4)
    assert (attn.num_heads, attn.pools[0].in_channels, attn.qkv.out_features) == (2, 4, 3 * 8)


class _GlobalQueryAttention(nn.Module):
    """GCViT's global attention: a projection named `qkv` holds k|v only; q is a global query, made
    once from the first sample's features, repeated over the batch."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, dim * 2), nn.Linear(dim, dim)
        self.q_gen = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        k, v = self.qkv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q_gen(x[:1]).repeat_interleave(b, dim=0).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


def test_a_fused_key_value_projection_named_qkv_refreshes_the_head_count() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), _GlobalQueryAttention(), nn.Linear(16, 3)).eval()
    result = structprune.compress(model, torch.randn(2, 5, 6), ratio=0.5)
    attn = result.model[1]  # its output is reshaped to the input's width, so the heads follow that width
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    assert (attn.num_heads, attn.head_dim, attn.qkv.out_features, attn.q_gen.out_features) == (2, 4, 16, 8)
    assert result.model[0].out_features == attn.proj.out_features == 8


class _GatedMixer(nn.Module):
    """EfficientViM's HSM-SSD: a projection split into halves by `[self.d_inner, self.d_inner]`, where
    d_inner also equals the module's input width, which is not pruned (here: the model's output width)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.d_inner = dim
        self.hz_proj, self.out_proj = nn.Conv1d(dim, 2 * dim, 1), nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2)  # a value of the unpruned input width, computed inside the module
        h, z = torch.split(self.hz_proj(x), [self.d_inner, self.d_inner], dim=1)
        return x + self.out_proj(h * torch.sigmoid(z))


def test_split_piece_sizes_settle_an_attribute_equal_to_two_widths() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), _GatedMixer()).eval()
    result = structprune.compress(model, torch.randn(2, 3, 5, 1), ratio=0.5)
    pruned = result.model[1]
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    assert (pruned.d_inner, pruned.hz_proj.out_channels, pruned.out_proj.in_channels) == (4, 8, 4)


class PatchAttention(nn.Module):
    """torchvision-ViT-style: the patch size (a conv kernel) equals the head count inside the attention."""

    def __init__(self, patch: int = 4, heads: int = 4, dim: int = 32) -> None:
        super().__init__()
        self.patch_size, self.hidden_dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        n_h, n_w = h // self.patch_size, w // self.patch_size
        x = self.conv_proj(x).reshape(n, self.hidden_dim, n_h * n_w).permute(0, 2, 1)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(x.mean(1))


def test_a_kernel_size_equal_to_a_head_count_inside_is_not_refreshed_with_the_heads() -> None:
    torch.manual_seed(0)
    model = PatchAttention().eval()
    result = structprune.compress(model, torch.randn(1, 3, 24, 24), ratio=0.5)
    pruned = result.model
    assert "blocked_by_verification" not in result.plan.meta
    widths = (pruned.patch_size, pruned.hidden_dim, pruned.attn.num_heads, pruned.conv_proj.out_channels)
    assert widths == (4, 16, 2, 16)


class StackedQKVAttention(nn.Module):
    """One 1x1 conv writes q|k|v head by head, as timm's cpubone ConvAttention: the head count equals the
    number of keys (3) by chance, and the value width `inner` (24) is also the unchanged per-head q|k|v block
    (3 x 8), so the graph alone refreshes `num_keys` with the heads and leaves `inner` alone."""

    def __init__(self, dim: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.num_heads, self.num_keys, self.head_dim = heads, 3, dim // heads
        self.inner = self.num_heads * self.head_dim
        self.mix = nn.Conv2d(dim, self.num_keys * self.inner, 1)
        self.out = nn.Conv2d(self.inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        qkv = self.mix(x).reshape(n, self.num_heads, self.num_keys * self.head_dim, h * w).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=3)
        values = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(2, 3)
        return self.out(values.reshape(n, self.inner, h, w))


class StackedQKVNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.attn, self.head = nn.Conv2d(3, 24, 3, padding=1), StackedQKVAttention(), nn.Conv2d(24, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.attn(torch.relu(self.stem(x)))))


def test_width_attributes_the_graph_gets_wrong_are_found_by_running_the_failing_class() -> None:
    """Heads 3 -> 1: `num_heads` and `inner` follow, `num_keys` stays 3; the choice is in the plan, so
    applying the plan again rebuilds the same model, and every group verifies (nothing kept whole)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    result = structprune.compress(StackedQKVNet().eval(), x, ratio=0.5, strict=True)
    attn = result.model.attn
    assert (attn.num_heads, attn.num_keys, attn.head_dim, attn.inner) == (1, 3, 8, 8)
    assert attn.mix.out_channels == 24 and result.report.verification["masking_error"] < 1e-5
    assert result.plan.meta["width_attribute_choices"] == {"attn": {"num_keys": 3, "inner": 8}}
    assert sorted(result.report.extra["refreshed_attributes"]) == ["attn.inner: 24 -> 8", "attn.num_heads: 3 -> 1"]
    assert "blocked_by_verification" not in result.plan.meta
    replayed = structprune.apply_plan(StackedQKVNet().eval(), x, structprune.Plan.from_json(result.plan.to_json()))
    assert (replayed.attn.num_heads, replayed.attn.num_keys, replayed.attn.inner) == (1, 3, 8)


class StoredBiasShape(nn.Module):
    """A per-head bias table viewed to a stored (area, area, heads) shape, read by its parent through a
    method, not forward, as timm's RelPosBias.get_bias(): its nodes run in the parent."""

    def __init__(self, area: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.bias_shape = (area, area, heads)
        self.table = nn.Parameter(torch.randn(area * area, heads))

    def get_bias(self) -> torch.Tensor:
        return self.table.view(self.bias_shape).permute(2, 0, 1).unsqueeze(0)


class BiasedHeads(nn.Module):
    """Heads of 4 over 8 tokens of width 8, with StoredBiasShape's bias on their scores. With a batch of 2,
    the size 2 is both the head count (2 -> 1) and the batch, so the graph leaves `bias_shape` alone."""

    def __init__(self) -> None:
        super().__init__()
        self.head_dim = 4
        self.q, self.k, self.v, self.bias, self.proj = (nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                                          StoredBiasShape(), nn.Linear(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (layer(x).reshape(b, n, -1, self.head_dim).transpose(1, 2) for layer in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1) + self.bias.get_bias()).softmax(-1)
        return x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_a_shape_tuple_read_through_a_method_is_found_by_running_its_caller() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8)
    net = nn.Sequential(BiasedHeads(), nn.Linear(8, 3)).eval()
    graph = structprune.analyze(net, x)
    heads = next(g.id for g in graph.groups if g.size == 2 and any("bias.table" in m.fqn for m in g.members))
    plan = structprune.Plan({heads: (1,)}, {heads: 2})
    result = structprune.compress(net, x, plan=plan, strict=True)
    assert result.plan.meta["width_attribute_choices"] == {"0.bias": {"bias_shape": (8, 8, 1)}}
    assert result.model[0].bias.table.shape == (64, 1) and result.report.verification["masking_error"] < 1e-5


class SplitPaths(nn.Module):
    """Splits its input in halves by `self.in_channels // self.num_paths`, one conv per half, as timm's
    SelectiveKernel: no value inside is as wide as the input (16), so only the input's own width, 16 -> 8,
    says what `in_channels` becomes; the failure shows in a path's Conv2d, below this class."""

    def __init__(self, in_channels: int = 16, out_channels: int = 24) -> None:
        super().__init__()
        self.in_channels, self.num_paths = in_channels, 2
        self.paths = nn.ModuleList(nn.Conv2d(in_channels // 2, out_channels, 3, padding=1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        halves = torch.split(x, self.in_channels // self.num_paths, 1)
        return self.paths[0](halves[0]) + self.paths[1](halves[1])


def test_an_attribute_that_follows_the_input_width_is_found_from_the_inputs_read() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), SplitPaths(), nn.ReLU(), nn.Conv2d(24, 5, 1)).eval()
    result = structprune.compress(net, x, ratio=0.5, strict=True)
    assert result.model[0].out_channels == 8 and result.model[2].in_channels == 8
    assert result.plan.meta["width_attribute_choices"] == {"2": {"in_channels": 8}}
    assert result.report.verification["masking_error"] < 1e-5
