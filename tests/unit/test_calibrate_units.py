"""Tuning by units: where a refit layer's producers sit in a module that maps positions one at a time
(a feed-forward network), tuning trains that module and the layer on rows instead of re-running the
whole block; a module that mixes positions is not a unit, and the whole block is tuned as before."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import structprune
from helpers import import_transformers
from structprune.calibrate import reconstruct
from structprune.calibrate.stream import find_reader
from structprune.calibrate.unit_tuning import Unit, find_unit
from structprune.criteria.obs import StructuredOBS
from structprune.data.batches import Batch


class Ffn(nn.Module):
    """Up-projection then activation, as Hugging Face's BertIntermediate (the consumer lies outside)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x):
        return torch.nn.functional.gelu(self.dense(x))


class Mixing(Ffn):
    """Like Ffn, but each position also reads the one before it: not position-wise."""

    def forward(self, x):
        h = super().forward(x)
        return h + 0.5 * torch.roll(h, 1, dims=1)


class Gated(nn.Module):
    """SwiGLU as LlamaMLP: gate and up projections, and the down projection (the consumer) inside."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(width, hidden), nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Post-norm residual block around one of the feed-forward kinds above."""

    def __init__(self, kind: type, width: int = 8, hidden: int = 16):
        super().__init__()
        self.ffn, self.norm = kind(width, hidden), nn.LayerNorm(width)
        self.down = nn.Linear(hidden, width) if kind is not Gated else None

    def forward(self, x):
        out = self.ffn(x)
        return self.norm(x + (out if self.down is None else self.down(out)))


class Stack(nn.Module):
    def __init__(self, kind: type, depth: int = 3, block: type = Block):
        super().__init__()
        self.inp, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        self.blocks = nn.ModuleList(block(kind) for _ in range(depth))

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _consumer(kind: type) -> str:
    return "ffn.down" if kind is Gated else "down"


def _pruned(net: Stack, x: torch.Tensor, kind: type):
    graph = structprune.analyze(net, x[:2])
    producer = "ffn.gate.weight:0" if kind is Gated else "ffn.dense.weight:0"
    groups = [g.id for g in graph.prunable if any(g.id.endswith(f"{i}.{producer}") for i in range(3))]
    assert len(groups) == 3, [g.id for g in graph.prunable]
    plan = Plan_of(groups)
    return graph, plan, structprune.apply_plan(net, x[:2], plan, graph=graph)


def Plan_of(groups):  # noqa: N802 - reads as a constructor
    from structprune.selection import Plan
    return Plan({g: tuple(range(0, 16, 2)) for g in groups}, {g: 16 for g in groups})


@pytest.fixture
def data():
    torch.manual_seed(0)
    x = torch.randn(96, 5, 4)
    return x, [(x[:48], None), (x[48:], None)]


@pytest.mark.parametrize("kind, producers, expected", [
    (Ffn, ["ffn.dense"], Unit("ffn", holds_consumer=False)),
    (Gated, ["ffn.gate", "ffn.up"], Unit("ffn", holds_consumer=True)),
    (Mixing, ["ffn.dense"], None),
])
def test_a_unit_is_the_module_that_maps_positions_to_the_consumers_input_or_output(kind, producers, expected):
    torch.manual_seed(0)
    block = Block(kind).eval()
    assert find_unit(block, _consumer(kind), producers, torch.randn(4, 5, 8)) == expected


def _refit_and_tuned(kind: type, data, seed: int = 0, **tuning):
    torch.manual_seed(seed)
    net, (x, loader) = Stack(kind).eval(), data
    graph, plan, pruned = _pruned(net, x, kind)
    refit_only = copy.deepcopy(pruned)
    reconstruct(net, refit_only, graph, plan, loader, target="stream")
    report = reconstruct(net, pruned, graph, plan, loader, target="stream", **tuning)
    return net, x, refit_only, pruned, report


@pytest.mark.parametrize("kind", [Ffn, Gated])
def test_units_are_tuned_on_rows_and_lower_the_networks_output_error(data, kind):
    net, x, refit_only, pruned, report = _refit_and_tuned(kind, data, tune_epochs=30, tune_lr=1e-2)
    assert report.passes == "blocks" and [b.name for b in report.blocks] == [f"blocks.{i}.ffn" for i in range(3)]
    assert all(b.steps == 30 and b.error_after < b.error_before for b in report.blocks)  # 480 rows: 1 step each
    with torch.no_grad():
        dense, tuned, refit = net(x), pruned(x), refit_only(x)
    assert float((tuned - dense).pow(2).mean()) < 0.9 * float((refit - dense).pow(2).mean())
    changed = {n for (n, a), b in zip(pruned.named_parameters(), refit_only.parameters()) if not torch.equal(a, b)}
    producer = "ffn.gate" if kind is Gated else "ffn.dense"
    assert {f"blocks.0.{producer}.weight", f"blocks.0.{_consumer(kind)}.weight"} <= changed
    assert not any("norm" in n or n.startswith(("inp", "head")) for n in changed)


@pytest.mark.parametrize("kind, tuned", [(Ffn, "ffn"), (Mixing, "")])
def test_tuning_leaves_no_gradient_on_the_model_and_every_requires_grad_flag_as_it_was(data, kind, tuned):
    net, _, _, pruned, report = _refit_and_tuned(kind, data, tune_epochs=3, tune_lr=1e-2)
    assert [b.name for b in report.blocks] == [f"blocks.{i}{'.' if tuned else ''}{tuned}" for i in range(3)]
    assert all(p.requires_grad for p in pruned.parameters())  # as nn.Module made them; a frozen copy:
    assert [n for n, p in pruned.named_parameters() if p.grad is not None] == []
    frozen = copy.deepcopy(pruned).requires_grad_(False)
    reconstruct(net, frozen, *_pruned(net, data[0], kind)[:2], data[1], target="stream", tune_epochs=1)
    assert not any(p.requires_grad or p.grad is not None for p in frozen.parameters())


def test_unit_tuning_that_does_not_help_leaves_the_layers_as_they_were(data):
    _, _, refit_only, pruned, report = _refit_and_tuned(Ffn, data, tune_epochs=1, tune_lr=1e3)
    assert [b.name for b in report.blocks] == [f"blocks.{i}.ffn" for i in range(3)]
    assert all(b.error_after == b.error_before for b in report.blocks)
    for a, b in zip(pruned.parameters(), refit_only.parameters()):
        torch.testing.assert_close(a, b)


def test_the_rows_a_unit_is_tuned_on_are_capped_by_a_seeded_share_of_every_batch(data, monkeypatch):
    module = importlib.import_module("structprune.calibrate.reconstruct")
    seen, tune = [], module.tune_unit
    monkeypatch.setattr(module, "tune_unit", lambda *args: seen.append(args[4]) or tune(*args))
    monkeypatch.setattr(module, "MAX_UNIT_ROWS", 40)
    _refit_and_tuned(Ffn, data, tune_epochs=1, tune_lr=1e-2)
    assert [rows.inputs.shape for rows in seen] == [(40, 8)] * 3  # 2 batches of 240 rows: 20 of each
    assert all(rows.targets.shape == (40, 8) and rows.weights.shape == (40,) for rows in seen)
    again = []
    monkeypatch.setattr(module, "tune_unit", lambda *args: again.append(args[4]) or tune(*args))
    _refit_and_tuned(Ffn, data, tune_epochs=1, tune_lr=1e-2)
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(seen, again))


def test_token_batches_keep_every_row_up_to_the_cap_then_shares_by_their_real_tokens(monkeypatch):
    module = importlib.import_module("structprune.calibrate.reconstruct")

    def batch(real: int) -> Batch:
        mask = torch.zeros(2, 20, dtype=torch.long)
        mask.view(-1)[:real] = 1
        return Batch({"input_ids": torch.zeros(2, 20, dtype=torch.long), "attention_mask": mask}, None)

    monkeypatch.setattr(module, "MAX_UNIT_ROWS", 40)
    assert module._unit_caps([batch(10), batch(30)]) == [10, 30]  # 40 real tokens: all kept
    assert module._unit_caps([batch(20), batch(40)]) == [13, 26]  # 60: shares of 40 by tokens


def test_without_a_unit_the_whole_block_is_tuned(data):
    _, _, _, _, report = _refit_and_tuned(Mixing, data, tune_epochs=5, tune_lr=1e-2)
    assert [b.name for b in report.blocks] == ["blocks.0", "blocks.1", "blocks.2"]


def test_a_hugging_face_llama_is_refit_block_by_block_and_tuned_by_its_mlps():
    transformers = import_transformers()
    torch.manual_seed(0)
    model = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=64)).eval()
    ids = torch.randint(0, 100, (8, 12), generator=torch.Generator().manual_seed(1))
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": torch.ones(4, 12, dtype=torch.long)} for i in (0, 4)]
    criterion = StructuredOBS(tune_epochs=3)
    result = structprune.compress(model, batches[0], ratio=0.5, criterion=criterion, data=batches,
                                  ignore=["*self_attn*", "embed*"])
    assert result.report.verification["ok"]
    assert result.report.extra["calibration"]["tuned"] == ["layers.0.mlp", "layers.1.mlp"]
    pruned = structprune.apply_plan(model, batches[0], result.plan, graph=result.graph)
    # pre-norm: layer 0's down projection is read by the next layer (its stream), layer 1's by the final norm
    assert find_reader(pruned, "layers.0.mlp.down_proj", batches[0]).name == "layers.1"
    assert find_reader(pruned, "layers.1.mlp.down_proj", batches[0]).name == "norm"
    report = reconstruct(model, pruned, result.graph, result.plan, batches)
    assert report.passes == "blocks" and [b.name for b in report.blocks] == ["layers.0.mlp", "layers.1.mlp"]
    assert all(b.error_after <= b.error_before for b in report.blocks)
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batches[1]).last_hidden_state,
                                   result.model(**batches[1]).last_hidden_state)


def test_tuning_asked_for_where_there_is_no_chain_of_blocks_is_reported_and_warned():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 6), nn.LayerNorm(6)).eval()
    x = torch.randn(64, 6)
    with pytest.warns(UserWarning, match="tuning was asked for and not run: the refit layers do not lie in one chain"):
        result = structprune.compress(net, x[:2], ratio=0.5, criterion=StructuredOBS(tune_epochs=2),
                                      data=[(x[:32], None), (x[32:], None)])
    calibration = result.report.extra["calibration"]
    assert calibration["reconstructed_layers"] == 1 and "tuned" not in calibration
    assert calibration["tuning_skipped"].startswith("the refit layers do not lie in one chain of blocks")


@pytest.mark.parametrize("holds_consumer", [False, True])
def test_after_tuning_the_consumer_is_refit_exactly_on_its_new_inputs(holds_consumer):
    """Targets that are an exact linear map (plus bias) of the unit's output: the refit recovers that map."""
    unit_tuning = importlib.import_module("structprune.calibrate.unit_tuning")
    torch.manual_seed(0)
    block = nn.Module()
    block.up, block.down = Ffn(6, 10), nn.Linear(10, 4)
    if holds_consumer:  # a LlamaMLP-like unit that holds the consumer: the row function is the unit itself
        block.mlp = nn.Sequential(block.up, block.down)
        forward, consumer = block.mlp, "mlp.1"
    else:
        forward, consumer = (lambda x: block.down(block.up(x))), "down"
    rows = torch.randn(300, 6)
    truth = nn.Linear(10, 4)
    with torch.no_grad():
        targets = truth(block.up(rows))
    data = unit_tuning.UnitRows(rows, targets, torch.rand(300) + 0.5)
    unit_tuning._refit_consumer(block, forward, consumer, data, ridge=1e-9)
    torch.testing.assert_close(block.down.weight, truth.weight, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(block.down.bias, truth.bias, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", [Ffn, Gated])
def test_adam_tunes_the_producers_and_leaves_the_consumer_to_the_least_squares_solve(data, kind, monkeypatch):
    unit_tuning = importlib.import_module("structprune.calibrate.unit_tuning")
    reconstruct_module = importlib.import_module("structprune.calibrate.reconstruct")
    solved, changed = [], []
    monkeypatch.setattr(unit_tuning, "_refit_consumer", lambda module, forward, consumer, *_: solved.append(consumer))
    tune_unit = reconstruct_module.tune_unit

    def watched(label, block, *args):
        before = {n: p.detach().clone() for n, p in block.named_parameters()}
        record = tune_unit(label, block, *args)
        changed.append({n for n, p in block.named_parameters() if not torch.equal(p, before[n])})
        return record

    monkeypatch.setattr(reconstruct_module, "tune_unit", watched)
    report = _refit_and_tuned(kind, data, tune_epochs=30, tune_lr=1e-2)[-1]
    assert solved == [_consumer(kind)] * 3 and all(b.error_after < b.error_before for b in report.blocks)
    producers = ("ffn.gate", "ffn.up") if kind is Gated else ("ffn.dense",)
    assert changed == [{f"{p}.{t}" for p in producers for t in ("weight", "bias")}] * 3
