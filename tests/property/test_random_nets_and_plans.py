"""Property tests: random small conv nets x random plans -> compress verifies, the plan round-trips
through JSON, and re-applying the loaded plan rebuilds exactly the same pruned model."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import structprune
from helpers import assert_state_equal, outputs, randomize_norm_stats
from structprune import Plan

IN_CHANS, SIZE, BATCH = 3, 4, 2
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- a tiny random-architecture builder ------------------------------------------------------------

@dataclass(frozen=True)
class BlockSpec:
    kind: str       # conv | residual | cat | chunk_cat | chunk_add | depthwise | grouped | split
    out: int = 0    # output channels (conv, grouped) or first branch width (cat)
    out2: int = 0   # second branch width (cat, chunk_cat)
    bn: bool = True
    act: bool = True
    kernel: int = 1


def conv_unit(cin: int, cout: int, kernel: int = 1, groups: int = 1, bn: bool = True,
              act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CatBranches(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class ChunkBlock(nn.Module):
    """x.chunk(2) on channels; transform one half; cat with the other half, or add both transforms."""

    def __init__(self, a: nn.Module, b: nn.Module | None, mode: str) -> None:
        super().__init__()
        self.a, self.b, self.mode = a, b, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = x.chunk(2, dim=1)
        if self.mode == "cat":
            return torch.cat([self.a(p), q], 1)
        return self.a(p) + self.b(q)


class SplitBlock(nn.Module):
    """split with literal sizes along channels (blocked as FIXED_SIZE), both parts transformed."""

    def __init__(self, sizes: tuple[int, int], a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.sizes, self.a, self.b = sizes, a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = x.split(list(self.sizes), dim=1)
        return torch.cat([self.a(p), self.b(q)], 1)


class FlattenHead(nn.Module):
    def __init__(self, channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels * SIZE * SIZE, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class PoolHead(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def build_block(spec: BlockSpec, cin: int) -> tuple[nn.Module, int]:
    """The block for `spec` on `cin` input channels, and its output channel count."""
    if spec.kind == "conv":
        return conv_unit(cin, spec.out, spec.kernel, bn=spec.bn, act=spec.act), spec.out
    if spec.kind == "residual":
        return Residual(conv_unit(cin, cin, spec.kernel, bn=spec.bn, act=spec.act)), cin
    if spec.kind == "cat":
        return CatBranches(conv_unit(cin, spec.out, bn=spec.bn), conv_unit(cin, spec.out2, 3, bn=spec.bn)), \
            spec.out + spec.out2
    if spec.kind == "chunk_cat":
        half = cin // 2
        return ChunkBlock(conv_unit(half, half, spec.kernel, bn=spec.bn), None, "cat"), cin
    if spec.kind == "chunk_add":
        half = cin // 2
        return ChunkBlock(conv_unit(half, spec.out, bn=spec.bn), conv_unit(half, spec.out, bn=spec.bn), "add"), \
            spec.out
    if spec.kind == "depthwise":
        return conv_unit(cin, cin * spec.out, 3, groups=cin, bn=spec.bn, act=spec.act), cin * spec.out
    if spec.kind == "grouped":
        return conv_unit(cin, spec.out, spec.kernel, groups=2, bn=spec.bn, act=spec.act), spec.out
    if spec.kind == "split":
        first = max(1, cin // 3)
        return SplitBlock((first, cin - first), conv_unit(first, spec.out), conv_unit(cin - first, spec.out2)), \
            spec.out + spec.out2
    raise AssertionError(spec.kind)


def build_net(specs: list[BlockSpec], head: str, hidden: int, stem: int) -> nn.Module:
    layers: list[nn.Module] = [conv_unit(IN_CHANS, stem, 3)]
    channels = stem
    for spec in specs:
        block, channels = build_block(spec, channels)
        layers.append(block)
    layers.append(FlattenHead(channels, hidden, 5) if head == "flatten" else PoolHead(channels, 5))
    return nn.Sequential(*layers)


even = st.sampled_from([2, 4, 6])


@st.composite
def block_specs(draw, cin: int) -> BlockSpec:
    kinds = ["conv", "residual", "cat", "depthwise", "split"]
    if cin % 2 == 0:
        kinds += ["chunk_cat", "chunk_add", "grouped"]
    kind = draw(st.sampled_from(kinds))
    bn, act, kernel = draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from([1, 3]))
    if kind == "depthwise":
        return BlockSpec(kind, draw(st.sampled_from([1, 2])), bn=bn, act=act)
    out = draw(even if kind == "grouped" else st.integers(2, 6))
    return BlockSpec(kind, out, draw(st.integers(2, 5)), bn, act, kernel)


@st.composite
def random_nets(draw) -> tuple[nn.Module, list[BlockSpec]]:
    stem = draw(st.sampled_from([4, 6, 8]))
    specs, channels = [], stem
    for _ in range(draw(st.integers(1, 3))):
        spec = draw(block_specs(channels))
        _, channels = build_block(spec, channels)
        specs.append(spec)
    head, hidden = draw(st.sampled_from(["flatten", "pool"])), draw(st.integers(3, 8))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net = randomize_norm_stats(build_net(specs, head, hidden, stem), seed=len(specs)).eval()
    return net, specs


plans = st.fixed_dictionaries({
    "ratio": st.floats(0.0, 0.9, allow_nan=False),
    "global_pruning": st.booleans(),
    "criterion": st.sampled_from(["l1", "l2", "bn_scale", "random"]),
    "round_to": st.sampled_from([1, 1, 2]),
    "seed": st.integers(0, 1000),
})


# ---- properties ----------------------------------------------------------------------------------------

@PROPERTY
@given(net_and_specs=random_nets(), options=plans)
def test_random_net_random_plan_compresses_verifies_and_replays(net_and_specs, options) -> None:
    net, specs = net_and_specs
    x = torch.randn(BATCH, IN_CHANS, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dense_out = outputs(net, x)

    result = structprune.compress(net, x, **options)

    verification = result.report.verification
    assert verification["ok"], verification
    assert {c["name"] for c in verification["checks"]} >= {"recapture", "output_shapes", "sizes"}
    if verification["exact_groups"]:
        assert verification["masking_error"] is not None and verification["masking_error"] <= 1e-4
    pruned_out = outputs(result.model, x)
    assert pruned_out.shape == dense_out.shape
    assert torch.isfinite(pruned_out).all()
    assert_state_equal(net.state_dict(), before)  # the caller's model is untouched
    assert result.report.params_after <= result.report.params_before

    for group in result.graph.groups:
        kept = result.plan.keep[group.id]
        assert 1 <= len(kept) <= group.size and list(kept) == sorted(set(kept))
        if not group.prunable:
            assert kept == tuple(range(group.size))

    loaded = Plan.from_json(result.plan.to_json())
    assert loaded == result.plan
    # re-analysis and re-verification of a replay are covered on zoo models in unit/test_api.py
    replayed = structprune.apply_plan(net, x, loaded, graph=result.graph, verify=False)
    assert_state_equal(replayed.state_dict(), result.model.state_dict())
    torch.testing.assert_close(outputs(replayed, x), pruned_out, rtol=0, atol=0)


@PROPERTY
@given(net_and_specs=random_nets())
def test_random_net_groups_partition_every_parameter_axis(net_and_specs) -> None:
    """Each position of each member axis belongs to exactly one group, and every member of a group
    covers every channel of that group (a group is the set of axes its channels touch)."""
    net, _ = net_and_specs
    graph = structprune.analyze(net, torch.randn(BATCH, IN_CHANS, SIZE, SIZE))
    owners: dict[str, list] = {}
    for group in graph.groups:
        assert group.prunable == (not group.reasons)
        for m in group.members:
            assert set(m.positions[m.positions >= 0].tolist()) == set(range(group.size)), (group.id, m.ref)
            owners.setdefault(m.ref, []).append(m.positions >= 0)
    for ref, masks in owners.items():
        coverage = sum(mask.astype(int) for mask in masks)
        assert (coverage == 1).all(), ref
    assert len({g.id for g in graph.groups}) == len(graph.groups)
