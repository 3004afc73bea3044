"""select_plan: scores per group -> Plan. Uniform ratio per group, or one global ratio over
per-group-normalised scores with a cap per group; round_to; at least one channel kept; ignore globs;
ratios of their own for the groups that match globs (`group_ratios`)."""
from __future__ import annotations

import fnmatch
import math
import numbers
from typing import Iterable, Mapping

import numpy as np

from structprune.errors import PlanError
from structprune.selection.channel_multiple import unit_multiple
from structprune.selection.group_ratios import GroupRatio
from structprune.selection.plan import Plan


def check_ratio(ratio: float) -> float:
    """`ratio` as a float; PlanError unless it is a number in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= float(ratio) < 1.0:
        raise PlanError(f"ratio must be a number in [0, 1) (the fraction of channels to remove), got {ratio!r}")
    return float(ratio)


def check_round_to(round_to: int) -> None:
    """PlanError unless `round_to` is a positive integer."""
    if not isinstance(round_to, int) or round_to < 1:
        raise PlanError(f"round_to must be a positive integer, got {round_to!r}")


def check_max_group_ratio(max_group_ratio: float) -> None:
    """PlanError unless `max_group_ratio` is in (0, 1]."""
    if not 0.0 < float(max_group_ratio) <= 1.0:
        raise PlanError(f"max_group_ratio must be in (0, 1] (the most of one group global pruning may remove), "
                        f"got {max_group_ratio!r}")


def is_ignored(member_fqns: Iterable[str], ignore: Iterable[str]) -> bool:
    """True if any FQN matches any glob (a glob 'layer4' also matches 'layer4.*')."""
    patterns = [p for g in ignore for p in (g, f"{g}.*")]
    return any(fnmatch.fnmatchcase(f, p) for f in member_fqns for p in patterns)


def output_fqns(group) -> list[str]:
    """The tensors whose own output channels the group removes (not those that only read them): what
    `ignore` protects, as Torch-Pruning's `ignored_layers` does. Ignoring a classifier keeps its
    classes, not the width of the features it reads."""
    return sorted({m.fqn for m in group.members if m.role != "in"})


def select_plan(groups, scores: Mapping[str, np.ndarray], *, ratio: float, global_pruning: bool = False,
                round_to: int = 1, ignore: Iterable[str] = (), max_group_ratio: float = 0.9,
                meta: Mapping | None = None, group_ratios: tuple[GroupRatio, ...] = (),
                comparable_scores: bool = False) -> Plan:
    """Choose kept channels for every prunable group (others keep everything). `group_ratios`: the groups
    each glob matches pruned by its own ratio (`selection.group_ratios`); `comparable_scores`: global
    allocation compares the criterion's scores as they are instead of normalising each group's by its mean
    (for criteria whose scores are costs in one unit across groups, such as obs's output error)."""
    ratio = check_ratio(ratio)
    check_round_to(round_to)
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    check_max_group_ratio(max_group_ratio)
    active = [g for g in groups if g.prunable and not is_ignored(output_fqns(g), ignore)]
    matched, rest = _pools(active, tuple(group_ratios))
    spread = [(rest, ratio, global_pruning)] + [(matched[i], r.ratio, r.spreads_globally(global_pruning))
                                                for i, r in enumerate(group_ratios)]
    counts = {}
    for pool, pool_ratio, pool_global in spread:
        counts.update(_global_counts(pool, scores, pool_ratio, max_group_ratio, normalise=not comparable_scores)
                      if pool_global else _uniform_counts(pool, scores, pool_ratio, max_group_ratio))
    keep = {g.id: tuple(range(g.size)) for g in groups}
    for g in active:
        n_keep = _rounded(counts[g.id], g.size, unit_multiple(g, round_to))
        keep[g.id] = tuple(sorted(np.argsort(-scores[g.id], kind="stable")[:n_keep].tolist()))
    info = {"ratio": ratio, "global": global_pruning, "round_to": round_to, "ignore": list(ignore),
            "ignored_groups": [g.id for g in groups if g.prunable and g not in active],
            **({"group_ratios": [{**r.to_json(), "groups": len(matched[i])} for i, r in enumerate(group_ratios)]}
               if group_ratios else {})}
    return Plan(keep, {g.id: g.size for g in groups}, {**info, **(meta or {})})


def _pools(active: list, group_ratios: tuple[GroupRatio, ...]) -> tuple[dict[int, list], list]:
    """{index into `group_ratios`: the groups its glob matches first, as `ignore` matches} and the groups no
    glob matches; PlanError for a glob that matches none of `active`."""
    matched: dict[int, list] = {i: [] for i in range(len(group_ratios))}
    rest = []
    for g in active:
        index = next((i for i, r in enumerate(group_ratios) if is_ignored(output_fqns(g), [r.pattern])), None)
        (rest if index is None else matched[index]).append(g)
    empty = [group_ratios[i].pattern for i, found in matched.items() if not found]
    if empty:
        raise PlanError(f"group ratio glob {', '.join(repr(p) for p in empty)} matches no group left to prune "
                        "(none prunable, not ignored and not taken by an earlier glob): check the module names "
                        "with `structprune inspect MODEL`")
    return matched, rest


def removed_at(size: int, ratio: float) -> int:
    """Channels a group of `size` loses at `ratio`: the count nearest size x ratio, a half rounded up (3 heads
    at 0.5 lose 2, as Torch-Pruning cuts them; flooring kept 2 of 3, a third of the cut asked for), never the
    last channel.

    >>> removed_at(3, 0.5), removed_at(64, 0.3), removed_at(10, 0.25), removed_at(4, 0.9), removed_at(1, 0.5)
    (2, 19, 3, 3, 0)
    """
    return max(min(int(math.floor(size * ratio + 0.5 + 1e-9)), size - 1), 0)


def _uniform_counts(groups, scores, ratio, cap) -> dict[str, int]:
    return {g.id: g.size - removed_at(g.size, ratio) for g in groups}


def _global_counts(groups, scores, ratio, cap, *, normalise: bool = True) -> dict[str, int]:
    """Prune the globally lowest normalised scores (score / group mean; the scores as they are without
    `normalise`) until `ratio` of all prunable channels are gone, never more than `cap` of one group and
    never its last channel."""
    entries = []
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        norm = s / (s.mean() + 1e-12) if s.size and normalise else s
        entries += [(v, g.id) for v in norm.tolist()]
    limit = {g.id: min(int(math.floor(g.size * cap)), g.size - 1) for g in groups}
    pruned = {g.id: 0 for g in groups}
    target = int(sum(g.size for g in groups) * ratio)
    done = 0
    for _, gid in sorted(entries, key=lambda e: e[0]):
        if done >= target:
            break
        if pruned[gid] < limit[gid]:
            pruned[gid] += 1
            done += 1
    return {g.id: g.size - pruned[g.id] for g in groups}


def _rounded(n_keep: int, size: int, round_to: int) -> int:
    """Round the kept count *up* to a multiple of round_to (so caps on removal still hold; callers pass a
    group's `channel_multiple.unit_multiple`); a group that keeps everything stays whole."""
    if round_to > 1 and size >= round_to and n_keep < size:
        n_keep = math.ceil(n_keep / round_to) * round_to
    return int(min(max(n_keep, 1), size))
