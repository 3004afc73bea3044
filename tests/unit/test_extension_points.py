"""A user teaches structprune a layer it does not know, without editing the package: an op rule for its
fused kernel (analysis), a shrink rule for its width (rewrite), a module rule for a tie its graph does
not show; passed to analyze/compress/apply_plan as rules=, shrink_rules=, module_rules=."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import structprune
from structprune import DEFAULT_MODULE_RULES, DEFAULT_RULES, DEFAULT_SHRINK_RULES, CompressConfig
from structprune.ir.roles import ROLE_ELEM
from structprune.rewrite import rewrite_model
from structprune.verify import verify_rewrite

X = torch.randn(2, 3, 8, 8)
KERNEL = "structprune_ext_test.channel_scale"


@torch.library.custom_op("structprune_ext_test::channel_scale", mutates_args=())
def channel_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A fused per-channel scale: torch.export keeps such a kernel as one op that no rule knows."""
    return x * scale.view(1, -1, 1, 1)


@channel_scale.register_fake
def _(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    channels: int


class ChannelScale(nn.Module):
    """A learned scale per channel through the fused kernel; its width lives in a config object (as in
    Hugging Face code), which no general attribute search looks into, and forward checks it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.config = ScaleConfig(channels)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.config.channels:
            raise ValueError(f"ChannelScale expects {self.config.channels} channels, got {x.shape[1]}")
        return channel_scale(x, self.scale)


def rule_channel_scale(ctx, node) -> None:
    """channel_scale(x, scale): scale[c] multiplies channel c (dim 1) of x; the output has x's channels."""
    x = ctx.value(node.args[0])
    ctx.tie_dim(x, 1, ctx.state_axis(node.args[1], 0, ROLE_ELEM), "channel_scale")
    ctx.set(node, x)


def refresh_channel_scale(module: ChannelScale, old: dict) -> None:
    module.config = dataclasses.replace(module.config, channels=module.scale.shape[0])


RULES = DEFAULT_RULES | {KERNEL: rule_channel_scale}
SHRINK_RULES = DEFAULT_SHRINK_RULES | {ChannelScale: (refresh_channel_scale, ())}


def scaled_net() -> nn.Module:
    torch.manual_seed(0)
    layers = (nn.Conv2d(3, 8, 3, padding=1), ChannelScale(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    return nn.Sequential(*layers).eval()


def test_an_unknown_kernel_blocks_its_channels_and_names_the_op() -> None:
    group = {g.id: g for g in structprune.analyze(scaled_net(), X).groups}["0.weight:0"]
    assert not group.prunable
    assert any(KERNEL in str(reason) for reason in group.reasons)


def test_the_users_op_rule_makes_the_channels_through_the_kernel_prunable() -> None:
    graph = structprune.analyze(scaled_net(), X, rules=RULES)
    group = {g.id: g for g in graph.groups}["0.weight:0"]
    assert group.prunable and group.size == 8
    assert {"0.weight", "1.scale", "3.weight"} <= set(group.member_fqns())


def test_without_the_shrink_rule_verification_keeps_the_layer_whole() -> None:
    result = structprune.compress(scaled_net(), X, ratio=0.5, rules=RULES)
    assert "0.weight:0" in result.plan.meta["blocked_by_verification"]
    assert result.model[1].scale.shape == (8,) and result.model[1].config.channels == 8


def test_with_the_users_rules_the_layer_is_pruned_through_and_verified() -> None:
    net = scaled_net()
    config = CompressConfig(ratio=0.5, rules=RULES, shrink_rules=SHRINK_RULES)
    result = structprune.compress(net, X, config=config)
    pruned = result.model
    assert result.report.verification["ok"] and result.report.verification["exact_groups"] == ["0.weight:0"]
    assert "blocked_by_verification" not in result.plan.meta
    assert (pruned[0].out_channels, pruned[1].scale.shape, pruned[1].config.channels, pruned[3].in_channels) == \
        (4, (4,), 4, 4)
    kept = list(result.plan.keep["0.weight:0"])
    assert torch.equal(pruned[1].scale.detach(), net[1].scale.detach()[kept])
    assert net[1].config.channels == 8  # the caller's model is untouched


def test_keywords_and_config_give_the_same_plan_and_a_plan_replays_with_the_same_tables() -> None:
    net = scaled_net()
    by_config = structprune.compress(net, X, config=CompressConfig(rules=RULES, shrink_rules=SHRINK_RULES))
    by_keywords = structprune.compress(net, X, rules=RULES, shrink_rules=SHRINK_RULES)
    assert by_config.plan == by_keywords.plan
    replayed = structprune.apply_plan(net, X, by_config.plan, rules=RULES, shrink_rules=SHRINK_RULES)
    assert replayed[1].config.channels == 4
    assert all(torch.equal(a, b) for a, b in zip(replayed.state_dict().values(),
                                                 by_config.model.state_dict().values(), strict=True))


class NoisyScale(nn.Module):
    """y = x * scale, plus learned per-channel noise in training: the eval graph never reads `noise`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self.noise = nn.Parameter(torch.full((channels,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale.view(1, -1, 1, 1)
        if self.training:
            y = y + self.noise.view(1, -1, 1, 1) * torch.randn_like(y)
        return y


def tie_noise_to_scale(ctx, prefix: str, module: NoisyScale) -> None:
    """NoisyScale's noise loses the channels its scale loses."""
    noise = next(n for n in ctx.captured.graph.nodes if ctx.fqn(n) == f"{prefix}noise")
    ctx.union(ctx.state_axis(noise, 0, ROLE_ELEM), ctx.axis_ids(f"{prefix}scale", 0))


def noisy_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), NoisyScale(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()


@pytest.mark.parametrize("with_rule", [False, True])
def test_a_module_rule_ties_a_parameter_the_graph_does_not_read(with_rule: bool) -> None:
    module_rules = DEFAULT_MODULE_RULES | {NoisyScale: tie_noise_to_scale} if with_rule else DEFAULT_MODULE_RULES
    result = structprune.compress(noisy_net(), X, ratio=0.5, module_rules=module_rules)
    pruned = result.model
    assert result.report.verification["ok"] and pruned[1].scale.shape == (4,)
    assert pruned[1].noise.shape == ((4,) if with_rule else (8,))
    if with_rule:  # the training path runs on the pruned model too
        assert pruned.train()(X).shape == (2, 4, 8, 8)


class FixedNormScale(nn.Module):
    """y = x * scale / sqrt(fan_in): `channels` is the width forward checks, `fan_in` the normaliser fixed
    when the layer was built (the trained function depends on it, so pruning must leave it). The general
    attribute search sees two integers equal to the pruned width and would shrink both; the user's shrink
    rule says that only `channels` follows the scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = self.fan_in = channels
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.channels:
            raise ValueError(f"FixedNormScale expects {self.channels} features, got {x.shape[-1]}")
        return x * self.scale / math.sqrt(self.fan_in)


def refresh_fixed_norm_scale(module: FixedNormScale, old: dict) -> None:
    module.channels = module.scale.shape[0]


FIXED_NORM_RULES = DEFAULT_SHRINK_RULES | {FixedNormScale: (refresh_fixed_norm_scale, ())}
FEATURES = torch.randn(5, 6)


def fixed_norm_mlp(*, layer_norm: bool = False) -> nn.Module:
    """Linear -> FixedNormScale -> ReLU [-> Linear -> LayerNorm, a group verified by shapes only] -> Linear."""
    torch.manual_seed(0)
    normed = (nn.Linear(16, 16), nn.LayerNorm(16)) if layer_norm else ()
    return nn.Sequential(nn.Linear(6, 16), FixedNormScale(16), nn.ReLU(), *normed, nn.Linear(16, 4)).eval()


@pytest.mark.parametrize(("shrink_rules", "fan_in"), [(DEFAULT_SHRINK_RULES, 8), (FIXED_NORM_RULES, 16)])
def test_a_class_the_shrink_rules_in_use_know_is_left_to_them_by_the_width_search(shrink_rules, fan_in) -> None:
    net = fixed_norm_mlp()
    graph = structprune.analyze(net, FEATURES)
    plan = structprune.select(net, FEATURES, graph, ratio=0.5)
    pruned = rewrite_model(net, graph, plan, shrink_rules=shrink_rules)
    assert (pruned[1].scale.shape, pruned[1].channels, pruned[1].fan_in) == ((8,), 8, fan_in)


@pytest.mark.parametrize("custom", [False, True])
def test_compress_with_the_users_shrink_rule_prunes_the_layer_and_verifies_it(custom: bool) -> None:
    net = fixed_norm_mlp()
    result = structprune.compress(net, FEATURES, ratio=0.5,
                                  shrink_rules=FIXED_NORM_RULES if custom else DEFAULT_SHRINK_RULES)
    pruned = result.model
    assert result.report.verification["ok"]
    if not custom:  # the search shrinks fan_in too: masking equivalence fails and the layer is kept whole
        assert result.plan.meta["blocked_by_verification"] == {
            "0.weight:0": "verification_failed: masking equivalence"}
        assert (pruned[1].scale.shape, pruned[1].channels, pruned[1].fan_in) == ((16,), 16, 16)
        return
    assert "blocked_by_verification" not in result.plan.meta
    assert (pruned[0].out_features, pruned[1].scale.shape, pruned[1].channels, pruned[1].fan_in) == (8, (8,), 8, 16)
    kept = list(result.plan.keep["0.weight:0"])
    assert torch.equal(pruned[1].scale.detach(), net[1].scale.detach()[kept])


def test_verification_rebuilds_its_partly_pruned_models_with_the_shrink_rules_it_is_given() -> None:
    """The plan also prunes a LayerNorm group, so the masking check builds the model pruned in the exact
    group alone: with the defaults that copy's fan_in is shrunk and the check fails on the user's layer."""
    net = fixed_norm_mlp(layer_norm=True)
    graph = structprune.analyze(net, FEATURES)
    plan = structprune.select(net, FEATURES, graph, ratio=0.5)
    assert set(plan.pruned_groups()) == {"0.weight:0", "3.weight:0"}
    pruned = rewrite_model(net, graph, plan, shrink_rules=FIXED_NORM_RULES)
    verdict = verify_rewrite(net, pruned, FEATURES, graph, plan, recapture=False, shrink_rules=FIXED_NORM_RULES)
    assert verdict.ok and verdict.inexact_groups == ("3.weight:0",) and verdict.masking_error <= 1e-4
    with_defaults = verify_rewrite(net, pruned, FEATURES, graph, plan, recapture=False)
    assert not with_defaults.ok
    assert with_defaults.failing_groups == (("0.weight:0", "masking equivalence"),)


def test_compress_verifies_a_partly_inexact_plan_with_the_users_shrink_rules() -> None:
    """compress passes its shrink rules to verification: the user's layer is pruned beside the LayerNorm
    group and the report lists no width attribute of it as refreshed by the search."""
    net = fixed_norm_mlp(layer_norm=True)
    result = structprune.compress(net, FEATURES, ratio=0.5, shrink_rules=FIXED_NORM_RULES)
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    assert (result.model[1].channels, result.model[1].fan_in) == (8, 16)
    assert not any(line.startswith("1.") for line in result.report.extra.get("refreshed_attributes", []))
