"""ChannelGraph.to_networkx(): the captured graph's nodes and data edges, each node tagged with the channel
groups its value carries, and the group table (with blocked reasons) in G.graph["groups"]."""
from __future__ import annotations

import networkx as nx
import pytest
import torch
from torch import nn

import models_zoo
from structprune import analyze


@pytest.fixture(scope="module")
def resnet():
    model = models_zoo.create("resnet20").eval()
    graph = analyze(model, torch.randn(1, 3, 32, 32))
    return graph, graph.to_networkx()


def test_nodes_are_the_captured_graphs_nodes_with_their_attributes(resnet) -> None:
    graph, G = resnet
    nodes = list(graph.captured.graph.nodes)
    assert list(G.nodes) == [n.name for n in nodes]  # every node, in graph (topological) order
    assert G.number_of_nodes() == len(nodes)
    kinds = [G.nodes[n.name]["kind"] for n in nodes]
    assert kinds.count("op") == sum(n.op == "call_function" for n in nodes)
    assert kinds.count("output") == 1 and kinds.count("input") == 1
    assert kinds.count("parameter") + kinds.count("buffer") == len(graph.captured.state_fqn)
    conv = G.nodes["conv2d"]
    assert (conv["kind"], conv["target"], conv["label"]) == ("op", "aten.conv2d.default", "conv2d")
    assert (conv["module"], conv["module_type"], conv["shape"]) == ("stem.0", "Conv2d", (1, 16, 32, 32))
    weight = G.nodes["p_stem_0_weight"]
    assert (weight["kind"], weight["label"], weight["module"]) == ("parameter", "stem.0.weight", "stem.0")
    assert set(weight["groups"]) == {"stem.0.weight:0", "stem.0.weight:1"}  # out- and in-channels
    assert G.nodes["b_stem_1_running_mean"]["kind"] == "buffer"
    assert nx.is_directed_acyclic_graph(G)


def test_edges_follow_the_data_flow(resnet) -> None:
    graph, G = resnet
    for node in graph.captured.graph.nodes:
        assert set(G.predecessors(node.name)) == {a.name for a in node.all_input_nodes}, node.name
    adds = [n for n, label in G.nodes(data="label") if label == "add"]
    assert len(adds) == 9  # one residual add per basic block
    for add in adds:
        inputs = list(G.predecessors(add))
        assert len(inputs) == 2 and all(G.nodes[i]["kind"] == "op" for i in inputs)
    # the first block's skip: the stem's relu feeds both the block's first conv and its add
    assert set(G.successors("relu")) == {"conv2d_1", "add"}


def test_every_group_sits_on_nodes_and_blocked_groups_carry_their_reason(resnet) -> None:
    graph, G = resnet
    table = G.graph["groups"]
    assert list(table) == [g.id for g in graph.groups]
    for group in graph.prunable:
        carriers = [n for n, ids in G.nodes(data="groups") if group.id in ids]
        assert any(G.nodes[n]["kind"] == "op" for n in carriers), group.id
        assert table[group.id]["nodes"] == carriers
        assert table[group.id]["size"] == group.size and table[group.id]["params"] == group.member_fqns()
    head = table["head.2.weight:0"]
    assert head["prunable"] is False
    assert head["why"] == "tied to a model output: output 0 (node linear)"
    assert [r["kind"] for r in head["reasons"]] == ["model_output"]
    assert "head.2.weight:0" in G.nodes["linear"]["groups"] and "head.2.weight:0" in G.nodes["output"]["groups"]
    # the stem's input channels: the image has no channel dim in the analysis, so only the weight carries them
    assert table["stem.0.weight:1"]["why"] == "tied to a model input: x"
    assert table["stem.0.weight:1"]["nodes"] == ["p_stem_0_weight"] and G.nodes["x"]["groups"] == ()


class Square(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        y = self.fc(x)
        return self.out(torch.cat([y * y, y], dim=1)[:, :6])


def test_an_input_read_twice_keeps_both_edges_keyed_by_argument_position() -> None:
    G = analyze(Square().eval(), torch.randn(1, 4)).to_networkx()
    assert sorted(G["linear"]["mul"]) == ["0", "1"]  # y * y: two edges
    assert sorted(G["mul"]["cat"]) == ["0.0"] and sorted(G["linear"]["cat"]) == ["0.1"]  # inside the list
    assert G.in_degree("mul") == 2 and len(set(G.predecessors("mul"))) == 1
