"""Reconstruction block by block: a chain of blocks is found only where replaying it reproduces the
network, refitting through the chain gives the layers the prefix passes give, and block tuning lowers
the blocks' output error or leaves the block as it was."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import structprune
from structprune.calibrate import reconstruct
from structprune.calibrate.block_tuning import owns_parameters
from structprune.calibrate.chain import Chain, find_chain
from structprune.selection import Plan

reconstruct_module = importlib.import_module("structprune.calibrate.reconstruct")


class Block(nn.Module):
    """Post-norm residual MLP block that also reads a keyword argument, as transformer layers do."""

    def __init__(self, width: int = 8, hidden: int = 16):
        super().__init__()
        self.up, self.down, self.norm = nn.Linear(width, hidden), nn.Linear(hidden, width), nn.LayerNorm(width)

    def forward(self, x, scale=None):
        return self.norm(x + self.down(torch.relu(self.up(x))) * scale)


class PreNormBlock(Block):
    """Pre-norm (Llama, ViT): the block returns the stream; the next block's norm reads it."""

    def forward(self, x, scale=None):
        return x + self.down(torch.relu(self.up(self.norm(x)))) * scale


class Stack(nn.Module):
    """Blocks in a ModuleList; `vary` gives each block another keyword value (not a chain); pre-norm
    blocks are followed by a final norm."""

    def __init__(self, depth: int = 3, vary: bool = False, kind: type = Block):
        super().__init__()
        self.inp, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        self.blocks = nn.ModuleList(kind() for _ in range(depth))
        self.final = nn.LayerNorm(8) if kind is PreNormBlock else nn.Identity()
        self.vary = vary

    def forward(self, x):
        h = self.inp(x)
        for i, block in enumerate(self.blocks):
            h = block(h, scale=torch.full((1,), 1.0 + i * self.vary))
        return self.head(self.final(h))


def _pruned(net: nn.Module, x: torch.Tensor):
    graph = structprune.analyze(net, x[:2])
    groups = [f"blocks.{i}.up.weight:0" for i in range(len(net.blocks))]
    plan = Plan({g: tuple(range(0, 16, 2)) for g in groups}, {g: 16 for g in groups})
    return graph, plan, structprune.apply_plan(net, x[:2], plan, graph=graph)


@pytest.fixture
def data():
    torch.manual_seed(0)
    x = torch.randn(96, 5, 4)
    return x, [(x[:48], None), (x[48:], None)]


def test_a_chain_is_found_only_where_replaying_the_blocks_reproduces_the_network(data):
    x, _ = data
    names = [f"blocks.{i}.down" for i in range(3)]
    assert find_chain(Stack().eval(), x[:4], names) == Chain(("blocks.0", "blocks.1", "blocks.2"))
    assert find_chain(Stack(vary=True).eval(), x[:4], names) is None  # each block reads another `scale`
    assert find_chain(Stack().eval(), x[:4], names + ["head"]) is None  # a layer outside every block


@pytest.mark.parametrize("kind", [Block, PreNormBlock])
def test_refitting_through_the_chain_gives_the_layers_the_prefix_passes_give(data, monkeypatch, kind):
    torch.manual_seed(1)
    net, (x, loader) = Stack(kind=kind).eval(), data
    graph, plan, pruned = _pruned(net, x)
    by_blocks = copy.deepcopy(pruned)
    report = reconstruct(net, by_blocks, graph, plan, loader, target="stream")
    monkeypatch.setattr(reconstruct_module, "find_chain", lambda *args: None)
    by_prefixes = copy.deepcopy(pruned)
    assert reconstruct(net, by_prefixes, graph, plan, loader, target="stream").passes == "prefixes"
    assert report.passes == "blocks" and [f.name for f in report.layers] == [f"blocks.{i}.down" for i in range(3)]
    for a, b in zip(by_blocks.parameters(), by_prefixes.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all(f.error_after < f.error_before for f in report.layers)
    readers = {name: reconstruct_module.find_reader(pruned, name, x[:2]).name for name in report_names(report)}
    expected = {f"blocks.{i}.down": f"blocks.{i}.norm" for i in range(3)} if kind is Block else \
        {"blocks.0.down": "blocks.1", "blocks.1.down": "blocks.2", "blocks.2.down": "final"}
    assert readers == expected  # pre-norm: each reader lies outside the consumer's block


def report_names(report) -> list[str]:
    return [f.name for f in report.layers]


def _refit_and_tuned(seed: int, data, **tuning):
    """(dense net, input, refit-only pruned net, refit-then-tuned pruned net, report of the tuned one)."""
    torch.manual_seed(seed)
    net, (x, loader) = Stack().eval(), data
    graph, plan, pruned = _pruned(net, x)
    refit_only = copy.deepcopy(pruned)
    reconstruct(net, refit_only, graph, plan, loader, target="stream")
    report = reconstruct(net, pruned, graph, plan, loader, target="stream", **tuning)
    return net, x, refit_only, pruned, report


def test_block_tuning_lowers_each_blocks_output_error(data):
    net, x, refit_only, pruned, report = _refit_and_tuned(2, data, tune_epochs=20, tune_lr=1e-2)
    assert [b.name for b in report.blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    assert all(b.steps == 40 and b.error_after < b.error_before for b in report.blocks)
    with torch.no_grad():
        dense, tuned, refit = net(x), pruned(x), refit_only(x)
    assert float((tuned - dense).pow(2).mean()) < float((refit - dense).pow(2).mean())


def test_block_tuning_that_does_not_help_leaves_the_block_as_it_was(data):
    _, _, refit_only, pruned, report = _refit_and_tuned(3, data, tune_epochs=1, tune_lr=1e3)
    assert all(b.error_after == b.error_before for b in report.blocks)
    for a, b in zip(pruned.parameters(), refit_only.parameters()):
        torch.testing.assert_close(a, b)


def test_blocks_sharing_weights_with_the_rest_of_the_network_are_not_tuned():
    net = Stack()
    assert owns_parameters(net, "blocks.1")
    net.blocks[1].up.weight = net.blocks[0].up.weight
    assert not owns_parameters(net, "blocks.1") and not owns_parameters(net, "blocks.0")
