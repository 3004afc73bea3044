"""First-order Taylor importance (Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation
for Neural Network Pruning", CVPR 2019).

Paper: the importance of a set S of parameters is the squared first-order change of the loss when
they are zeroed, I_S = (sum_{s in S} g_s w_s)^2 (sec. 3, eq. 4 "group contribution"), averaged over
mini-batches. Our adaptation: S is the channel's slice of *every* parameter of its coupled group
(producer rows, norm entries, consumer columns -- removing the channel zeroes them all), and we rank
by the per-batch absolute value |sum_{s in S} w_s dL/dw_s| averaged over calibration batches (the
same ranking per batch as the square, less dominated by single batches). Needs labelled data; the
loss is cross-entropy by default; the model runs in eval mode (BatchNorm statistics untouched).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from structprune.criteria.activations import load_batches
from structprune.criteria.base import GroupView, MemberSlice, ScoringContext, canonical_names, rows_of
from structprune.criteria.gradients import LossFn, cross_entropy, gradients, requiring_grad
from structprune.data.running import eval_mode


@dataclass(frozen=True)
class Taylor:
    """|sum over the channel's group slice of w * dL/dw|, averaged over calibration batches."""

    name: str = "taylor"
    max_samples: int | None = 512
    loss_fn: LossFn = cross_entropy
    needs_data: bool = True
    needs_labels: bool = True
    description: str = "first-order Taylor |sum w*grad| over the group (Molchanov et al. 2019)"

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        batches = load_batches(ctx, self.max_samples, self.name, labels=True)
        names = canonical_names(ctx.model)
        members = {g.group_id: _distinct_params(g, names) for g in groups}
        params = {alias: ctx.model.get_parameter(name) for alias, name in names.items()}
        used = sorted({names[m.fqn] for ms in members.values() for m in ms})
        totals = {g.group_id: np.zeros(g.size) for g in groups}
        with eval_mode(ctx.model), requiring_grad([params[f] for f in used]):
            for batch in batches:
                grads = dict(zip(used, gradients(ctx.model, batch, [params[f] for f in used], self.loss_fn)))
                for g in groups:
                    totals[g.group_id] += np.abs(_group_change(g, members[g.group_id], params, grads, names))
        return {gid: t / len(batches) for gid, t in totals.items()}


def _distinct_params(group: GroupView, names: dict[str, str]) -> list[MemberSlice]:
    """The group's parameter members, each tensor once: a depthwise weight shows up on two axes, a tied
    one (an LM head sharing the embedding) under two names, and its gradient already sums both uses."""
    seen, out = set(), []
    for m in group.members:
        if m.is_param and names[m.fqn] not in seen:
            seen.add(names[m.fqn])
            out.append(m)
    return out


def _group_change(group: GroupView, members, params, grads, names: dict[str, str]) -> np.ndarray:
    """Per channel: sum over its slice of all members of w * dL/dw (first-order loss change)."""
    total = np.zeros(group.size)
    for m in members:
        product = rows_of(m, params[m.fqn].detach() * grads[names[m.fqn]])
        total += m.per_channel(product.sum(dim=1), group.size)
    return total
