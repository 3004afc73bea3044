"""Per-channel rescaling of consumer inputs, carried by a plan as data.

A sampling-based selection (coreset, sampled variant) keeps channel c with an importance weight
(how often it was drawn / (m p_c)); the pruned network is an unbiased estimate of the dense one
only if every consumer multiplies channel c's input weights by that factor. The factors live in
`plan.meta["channel_scales"] = {group_id: [factor per kept channel, in plan.keep order]}` so the
plan stays the only thing that crosses from deciding to mutating."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from structprune.criteria.base import SCALES_KEY
from structprune.graph.channel_graph import ChannelGraph
from structprune.rewrite.keep import component_keep, kept_indices
from structprune.selection.plan import Plan


def apply_channel_scales(pruned: nn.Module, graph: ChannelGraph, plan: Plan) -> int:
    """Multiply the consumer-side weights of kept channels by the plan's scales (in place);
    returns the number of tensors changed (0 when the plan carries no scales)."""
    scales = plan.meta.get(SCALES_KEY) or {}
    if not scales:
        return 0
    kept_axes = kept_indices(graph, component_keep(graph, plan))
    params = dict(pruned.named_parameters())
    changed = 0
    for gid, factors in scales.items():
        per_channel = _per_channel(plan.keep[gid], factors, graph.group(gid).size)
        for member in graph.group(gid).members:
            if member.role == "in" and member.fqn in params and params[member.fqn].ndim >= 2:
                kept_rows = kept_axes.get(member.fqn, {}).get(member.axis, np.arange(len(member.positions)))
                changed += _scale_axis(params[member.fqn], member.axis, member.positions[kept_rows], per_channel)
    return changed


def _per_channel(kept, factors, size: int) -> np.ndarray:
    out = np.ones(size)
    out[np.asarray(kept, dtype=np.int64)] = np.asarray(factors, dtype=np.float64)
    return out


def _scale_axis(param: torch.Tensor, axis: int, channels: np.ndarray, per_channel: np.ndarray) -> int:
    if param.shape[axis] != len(channels):
        return 0
    factor = np.where(channels >= 0, per_channel[np.maximum(channels, 0)], 1.0)
    shape = [1] * param.ndim
    shape[axis] = len(factor)
    with torch.no_grad():
        param.mul_(torch.as_tensor(factor, dtype=param.dtype, device=param.device).reshape(shape))
    return 1
