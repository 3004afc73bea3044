"""benchmarks/minilm.py's `--head-allocation global`: as many heads go as the ratio of every layer's would, the
lowest-scored heads of all layers first, at least one head left in each layer; FFN groups keep their ratio."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.minilm import GroupRatios


@dataclass(frozen=True)
class View:
    group_id: str
    size: int


@dataclass(frozen=True)
class Chooser:
    """Scores as given; `select` keeps the highest-scored channels and records the counts it was handed."""

    scores: dict
    name: str = "fixed"
    needs_data: bool = False

    def score(self, groups, ctx):
        return {g.group_id: self.scores[g.group_id] for g in groups}

    def select(self, groups, ctx, keep_counts):
        from structprune.criteria import Selection
        return Selection({g.group_id: tuple(sorted(np.argsort(-self.scores[g.group_id])[:keep_counts[g.group_id]]))
                          for g in groups}, {"counts": dict(keep_counts)})


def test_global_head_allocation_removes_the_lowest_scored_heads_of_all_layers_keeping_one_per_layer():
    heads = [View(f"layer.{i}.attention.self.query.weight:0", 4) for i in range(3)]
    ffn = View("layer.0.intermediate.dense.weight:0", 8)
    scores = {heads[0].group_id: np.array([0.1, 0.2, 0.3, 0.4]),  # the four lowest heads: layer 0 keeps one
              heads[1].group_id: np.array([5.0, 6.0, 7.0, 8.0]), heads[2].group_id: np.array([0.5, 9.0, 9.0, 9.0]),
              ffn.group_id: np.arange(8.0)}
    groups = [*heads, ffn]
    counts = GroupRatios(Chooser(scores), ffn=0.5, heads=0.5, head_allocation="global").select(groups, None, {}) \
        .meta["counts"]  # 6 heads in all: layer 0's four lowest but one, then 0.5, 5.0 and 6.0
    assert counts == {heads[0].group_id: 1, heads[1].group_id: 2, heads[2].group_id: 3, ffn.group_id: 4}
    uniform = GroupRatios(Chooser(scores), ffn=0.5, heads=0.5).select(groups, None, {}).meta["counts"]
    assert uniform == {**{h.group_id: 2 for h in heads}, ffn.group_id: 4}
