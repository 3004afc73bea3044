"""A tuned block's output computed from its unit alone (calibrate/tail.py): the same network as running
the block again, used only where the first batch's replay agrees, and dropped past its memory budget."""
from __future__ import annotations

import importlib

import pytest
import torch
from test_calibrate_units import Block, Ffn, Gated, Stack
from torch import nn

import structprune
from structprune.calibrate import reconstruct, tail
from structprune.selection import Plan

reconstruct_module = importlib.import_module("structprune.calibrate.reconstruct")


class PreNorm(nn.Module):
    """x + down(ffn(norm(x))): the stream itself leaves the block (the next block reads it)."""

    def __init__(self, kind: type, width: int = 8, hidden: int = 16):
        super().__init__()
        self.norm, self.ffn, self.down = nn.LayerNorm(width), kind(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.down(self.ffn(self.norm(x)))


class Scaled(Block):
    """Post-norm, but the block returns twice the norm's output: the reader's output is not the block's."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def _tuned(block: type, kind: type, monkeypatch):
    """The network pruned, refit and tuned; the batches that took the shortcut; per block, the outputs the
    next block was given and those of running the block again."""
    torch.manual_seed(0)
    net = Stack(kind, block=block).eval()
    x = torch.randn(96, 5, 4)
    graph = structprune.analyze(net, x[:2])
    producer = "ffn.gate.weight:0" if kind is Gated else "ffn.dense.weight:0"
    groups = [g.id for g in graph.prunable if g.id.endswith(producer)]
    assert len(groups) == 3
    plan = Plan({g: tuple(range(0, 16, 2)) for g in groups}, {g: 16 for g in groups})
    pruned = structprune.apply_plan(net, x[:2], plan, graph=graph)
    shortcuts, outputs = [], []
    shortcut, block_outputs = tail._shortcut, reconstruct_module.block_outputs

    def given_and_full(module, rows, calls):
        with torch.no_grad():
            outputs.append((block_outputs(module, rows, calls), [module(*c.args, **c.kwargs) for c in calls]))
        return outputs[-1][0]

    monkeypatch.setattr(tail, "_shortcut", lambda *a: shortcuts.append(a[2]) or shortcut(*a))
    monkeypatch.setattr(reconstruct_module, "block_outputs", given_and_full)
    report = reconstruct(net, pruned, graph, plan, [(x[i:i + 24], None) for i in range(0, 96, 24)],
                         target="stream", tune_epochs=3, tune_lr=1e-2)
    assert [b.name for b in report.blocks] == [f"blocks.{i}.ffn" for i in range(3)]
    return shortcuts, outputs


@pytest.mark.parametrize("block, kind", [(Block, Ffn), (Block, Gated), (PreNorm, Ffn)])
def test_a_tuned_blocks_output_comes_from_its_unit_and_matches_running_the_block_again(block, kind, monkeypatch):
    shortcuts, outputs = _tuned(block, kind, monkeypatch)
    # three blocks, four batches: the first batch replayed against the full block, three by the shortcut
    # (the last block's output is not needed, but the shortcut gives it as cheaply)
    assert shortcuts == [0, 1, 2, 3] * 3 and len(outputs) == 3
    for given, full in outputs:
        assert len(given) == len(full) == 4
        for a, b in zip(given, full):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_where_the_readers_output_is_not_the_blocks_the_replay_disagrees_and_the_block_runs_again(monkeypatch):
    shortcuts, outputs = _tuned(Scaled, Ffn, monkeypatch)
    assert shortcuts == [0] * 3  # only the replay of each block's first batch, which disagrees
    for given, full in outputs:
        for a, b in zip(given, full):
            assert torch.equal(a, b)


def test_past_the_memory_budget_the_block_runs_again(monkeypatch):
    monkeypatch.setattr(tail, "MAX_TAIL_BYTES", 0)
    shortcuts, outputs = _tuned(Block, Ffn, monkeypatch)
    assert shortcuts == [] and len(outputs) == 3


def test_unit_inputs_and_rests_past_the_budget_are_dropped(monkeypatch):
    rows = tail.TailRows("ffn", False, "down", "norm")
    u, z, out = torch.ones(2, 3, 8), torch.full((2, 3, 8), 5.0), torch.full((2, 3, 8), 2.0)
    monkeypatch.setattr(tail, "MAX_TAIL_BYTES", 2 * 2 * 48 * 4)  # two batches of U and R
    rows.keep(u, z, out)
    assert rows.complete and torch.equal(rows.rests[0], torch.full((2, 3, 8), 3.0))
    rows.keep(u, z, out)
    assert rows.complete and len(rows.inputs) == 2
    rows.keep(u, z, out)
    assert not rows.complete and rows.inputs == [] and rows.rests == []
    rows.keep(u, z, out)
    assert not rows.complete and rows.inputs == []
