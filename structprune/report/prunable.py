"""What could be pruned and what was not: the report's `prunable` section (groups, channels and MACs in
prunable groups) and the lines the CLI summary, report.md and `structprune inspect` print from it.

A group is *prunable* when the analysis allows pruning it and verification did not block it; groups a
user ignores still count (that is a choice, not a limit). The channel share is the prunable groups'
channels over all groups' channels; the MACs share is `metrics.prunable_macs`: the MACs of the ops
that touch a prunable group over all MACs.

>>> groups = [{"id": "a:0", "size": 30, "kept": 15, "prunable": True, "why": ""},
...           {"id": "b:0", "size": 10, "kept": 10, "prunable": False, "why": "tied to a model output: output 0"}]
>>> print("\\n".join(group_lines(groups, {"macs": 87_552, "macs_total": 104_096})))
groups: 1 of 2 prunable, holding 30 of 40 channels (75.0%) and 84.1% of MACs
blocked: 1 group, top reasons: tied to a model output: output 0 (1)
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from structprune.report.metrics import prunable_macs

TOP_REASONS = 3


def prunable_section(graph, prunable_ids: Iterable[str] | None = None) -> dict:
    """The report's `prunable` section for a ChannelGraph: prunable groups, their channels and the MACs
    of the ops touching them, each with its total and share (SCHEMA.md). `prunable_ids`: the groups
    counted as prunable (default: the analysis's; a report leaves out those verification blocked).

    >>> import torch
    >>> from torch import nn
    >>> from structprune.api import analyze
    >>> graph = analyze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4))
    >>> prunable_section(graph)["channel_share"], prunable_section(graph)["macs_share"]
    (0.5714, 1.0)
    """
    ids = {g.id for g in graph.prunable} if prunable_ids is None else set(prunable_ids)
    chosen = [g for g in graph.groups if g.id in ids]
    channels, all_channels = sum(g.size for g in chosen), sum(g.size for g in graph.groups)
    macs = prunable_macs(graph, ids)
    return {"groups": len(chosen), "groups_total": len(graph.groups),
            "channels": channels, "channels_total": all_channels, "channel_share": _share(channels, all_channels),
            "macs": macs.prunable, "macs_total": macs.total, "macs_share": _share(macs.prunable, macs.total)}


def group_lines(groups: list[dict], prunable: dict | None = None) -> list[str]:
    """"groups: P of N prunable, holding C of T channels (S%) and M% of MACs" and, when any are blocked,
    "blocked: B groups, top reasons: ...". The MACs share comes from the `prunable` section's counts
    (left out when the section is missing or the model has no MACs)."""
    if not groups:
        return ["groups: no channel groups found"]
    chosen = [g for g in groups if g.get("prunable", True)]
    channels, total = sum(g["size"] for g in chosen), sum(g["size"] for g in groups)
    line = (f"groups: {len(chosen)} of {len(groups)} prunable, holding {channels:,} of {total:,} channels "
            f"({100 * channels / max(total, 1):.1f}%)")
    macs, all_macs = (prunable or {}).get("macs"), (prunable or {}).get("macs_total")
    lines = [line + (f" and {100 * macs / all_macs:.1f}% of MACs" if macs is not None and all_macs else "")]
    blocked = len(groups) - len(chosen)
    if blocked:
        reasons = "; ".join(f"{text} ({count})" for text, count in top_blocked_reasons(groups))
        lines.append(f"blocked: {blocked} group{'s' * (blocked != 1)}, top reasons: {reasons}")
    return lines


def group_dicts(graph) -> list[dict]:
    """A ChannelGraph's groups as report rows (id, size, kept, prunable, why), nothing pruned: what
    `group_lines` reads when there is no report (`structprune inspect`)."""
    return [{"id": g.id, "size": g.size, "kept": g.size, "prunable": g.prunable,
             "why": "; ".join(sorted({str(r) for r in g.reasons}))} for g in graph.groups]


def nothing_pruned_warning(report: dict) -> list[str]:
    """A warning line when the plan removed no channel, saying why (every group blocked, or ignored).

    >>> nothing_pruned_warning({"groups": [{"size": 4, "kept": 4, "prunable": False, "why": "op x"}]})
    ['warning: nothing was pruned: all 1 channel groups are blocked (op x (1)); the model is returned unchanged']
    """
    groups = report.get("groups", [])
    if any(g["kept"] < g["size"] for g in groups):
        return []
    blocked = [g for g in groups if not g.get("prunable", True)]
    if groups and len(blocked) == len(groups):
        reasons = "; ".join(f"{text} ({count})" for text, count in top_blocked_reasons(groups))
        why = f"all {len(groups)} channel groups are blocked ({reasons})"
    else:
        why = "no prunable group lost a channel (ratio too small, or groups ignored)"
    return [f"warning: nothing was pruned: {why}; the model is returned unchanged"]


def top_blocked_reasons(groups: list[dict], top: int = TOP_REASONS) -> list[tuple[str, int]]:
    """The most common reasons among blocked groups, with how many groups each blocks (the graph
    node is left out, so the same reason at different nodes counts once per group)."""
    counts: Counter[str] = Counter()
    for group in groups:
        if not group.get("prunable", True):
            reasons = {re.sub(r" \(node [^)]*\)$", "", r.strip()) for r in (group.get("why") or "").split("; ")}
            counts.update(r or "(no reason recorded)" for r in reasons)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]


def _share(part: int, total: int) -> float | None:
    return round(part / total, 4) if total else None
