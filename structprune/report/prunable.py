"""What could be pruned and what was not: the lines the CLI summary, report.md and `structprune inspect`
print from the report's groups and its `prunable` section (built by `graph.cost.prunable_section`).

A group is *prunable* when the analysis allows pruning it and verification did not block it; groups a
user ignores still count (that is a choice, not a limit). The channel share is the prunable groups'
channels over all groups' channels; the MACs share is `graph.cost.prunable_macs`: the MACs of the ops
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

TOP_REASONS = 3


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
