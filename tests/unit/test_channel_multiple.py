"""round_to=N keeps every layer a group touches at a multiple of N channels (structprune.selection.channel_multiple):
plain channel groups round their count to N, attention heads to the head count whose dims make a multiple of N."""
from __future__ import annotations

import pytest
from torch import nn

import models_zoo
import structprune


def changed_widths(dense: nn.Module, pruned: nn.Module) -> list[tuple[str, int]]:
    """(module.attribute, new width) for every channel width the rewrite changed."""
    dense_modules = dict(dense.named_modules())
    changed = []
    for name, module in pruned.named_modules():
        for attr in ("in_channels", "out_channels", "in_features", "out_features", "num_features"):
            if hasattr(module, attr) and getattr(module, attr) != getattr(dense_modules[name], attr):
                changed.append((f"{name}.{attr}", getattr(module, attr)))
    return changed


@pytest.mark.parametrize("name", ["mobilenet_v2", "convnext"])
def test_every_changed_layer_keeps_a_multiple_of_round_to_and_the_target_is_met(name: str) -> None:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name, batch=1)
    result = structprune.compress(model, x, target_macs=0.5, round_to=8)
    changed = changed_widths(model, result.model)
    assert changed and all(width % 8 == 0 for _, width in changed), [c for c in changed if c[1] % 8]
    assert result.report.verification["ok"] and result.report.to_json()["target"]["within_tolerance"]
    unrounded = changed_widths(model, structprune.compress(model, x, target_macs=0.5, round_to=1).model)
    assert any(width % 8 for _, width in unrounded)  # the rounding did the work, not the model's widths


def test_heads_round_to_the_head_count_whose_dims_are_a_multiple() -> None:
    """4-dim heads: a multiple of 8 dims is an even head count (never a multiple of 8 heads, which 8 heads
    could not prune at all)."""
    model = models_zoo.create("vit", embed_dim=32, num_heads=8, depth=2).eval()
    x = models_zoo.example_inputs("vit", batch=1)
    result = structprune.compress(model, x, ratio=0.4, round_to=8, ignore=["patch_embed", "blocks.*.mlp"])
    heads = [block.attn.num_heads for block in result.model.blocks]
    assert heads == [6, 6] and result.report.verification["ok"]  # 8 heads - 40% = 4.8 -> 5 kept -> 6
    assert all(block.attn.qkv.out_features == 3 * 4 * 6 and block.attn.proj.in_features == 24
               for block in result.model.blocks)
