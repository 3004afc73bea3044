"""Ratios per set of groups: `group_ratios={"*.intermediate.*": 0.5, "*.attention.*": (0.25, "global")}`
(on the command line `--group-ratio '*.intermediate.*=0.5' '*.attention.*=0.25:global'`) prunes every
group whose own outputs match a glob by that glob's ratio instead of `ratio` -- a transformer's FFN
neurons and its heads at different depths, as Torch-Pruning's `pruning_ratio_dict` does.

A glob matches a group as `ignore` does: against the FQNs of the tensors whose output channels the group
removes (`select.output_fqns`), 'x' also matching 'x.*'; the first glob that matches wins. The groups of one
glob form a pool: "uniform" removes the ratio from each of them, "global" removes the ratio of the pool's
channels where the criterion scores them lowest (`select._global_counts`); without an allocation the pool
follows `global_pruning`. Groups no glob matches are pruned by `ratio` as before. A glob that matches no
group left to prune is an error: a misspelt name must not silently prune at the default ratio. The pools
are formed in `select.select_plan`.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from structprune.errors import PlanError

POOL_ALLOCATIONS = ("uniform", "global")


@dataclass(frozen=True)
class GroupRatio:
    """The groups whose outputs match `pattern` lose `ratio` of their channels, spread by `allocation`
    ("uniform", "global", or None: as `global_pruning` says).

    >>> GroupRatio.parse("*.attention.*=0.25:global")
    GroupRatio(pattern='*.attention.*', ratio=0.25, allocation='global')
    """

    pattern: str
    ratio: float
    allocation: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise PlanError(f"a group ratio needs a module glob, got {self.pattern!r}")
        number = not isinstance(self.ratio, bool) and isinstance(self.ratio, numbers.Real)
        if not (number and 0.0 <= float(self.ratio) < 1.0):
            raise PlanError(f"group ratio of '{self.pattern}' must be a number in [0, 1) (the fraction of its "
                            f"channels to remove), got {self.ratio!r}")
        if self.allocation not in (None, *POOL_ALLOCATIONS):
            raise PlanError(f"group ratio of '{self.pattern}': allocation must be one of "
                            f"{', '.join(POOL_ALLOCATIONS)}, got {self.allocation!r}")
        object.__setattr__(self, "ratio", float(self.ratio))

    @classmethod
    def parse(cls, text: str) -> GroupRatio:
        """'GLOB=R' or 'GLOB=R:uniform' / 'GLOB=R:global'; PlanError naming the text otherwise."""
        pattern, sep, value = str(text).rpartition("=")
        ratio, _, allocation = value.partition(":")
        if not sep or not pattern:
            raise PlanError(f"group ratio '{text}' is not GLOB=R[:uniform|:global] (e.g. '*.intermediate.*=0.5')")
        try:
            number = float(ratio)
        except ValueError:
            raise PlanError(f"group ratio '{text}': '{ratio}' is not a number in [0, 1)") from None
        return cls(pattern, number, allocation or None)

    def spreads_globally(self, global_pruning: bool) -> bool:
        """Whether this pool is cut by one global ranking: its allocation, else `global_pruning`."""
        return global_pruning if self.allocation is None else self.allocation == "global"

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "ratio": self.ratio, "allocation": self.allocation}


def as_group_ratios(value: Any) -> tuple[GroupRatio, ...]:
    """The GroupRatio tuple of `value`: a {glob: ratio or (ratio, allocation)} mapping, or an iterable of
    GroupRatio objects and 'GLOB=R[:allocation]' strings; PlanError for anything else or a glob given twice.

    >>> [g.ratio for g in as_group_ratios({"*.fc1": 0.5, "*.qkv": (0.25, "global")})]
    [0.5, 0.25]
    """
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = [GroupRatio(k, *(v if isinstance(v, tuple) else (v,))) for k, v in value.items()]
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise PlanError(f"group_ratios must be a mapping {{glob: ratio}} or a list of 'GLOB=R' strings, got "
                        f"{value!r}")
    else:
        items = [v if isinstance(v, GroupRatio) else GroupRatio.parse(v) for v in value]
    seen = [g.pattern for g in items]
    twice = sorted({p for p in seen if seen.count(p) > 1})
    if twice:
        raise PlanError(f"group ratio glob given twice: {', '.join(twice)}; give each glob one ratio")
    return tuple(items)
