"""The Plan: the only thing that crosses from deciding to mutating. Plain data with a JSON round-trip."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

PLAN_FORMAT = 1


def dropped_mask(size: int, kept) -> np.ndarray:
    """Per channel of a group of `size`: True where it is not among the `kept` indices.

    >>> dropped_mask(4, (0, 2)).tolist()
    [False, True, False, True]
    """
    mask = np.ones(size, dtype=bool)
    mask[np.asarray(kept, dtype=np.int64)] = False
    return mask


@dataclass(frozen=True)
class Plan:
    """keep: group id -> sorted kept channel indices; sizes: group id -> size when planned.

    >>> plan = Plan({"fc1.weight:0": (0, 2)}, {"fc1.weight:0": 4}, {"criterion": "l2"})
    >>> Plan.from_json(plan.to_json()) == plan
    True
    """

    keep: Mapping[str, tuple[int, ...]]
    sizes: Mapping[str, int]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", MappingProxyType({k: tuple(int(i) for i in v) for k, v in self.keep.items()}))
        object.__setattr__(self, "sizes", MappingProxyType({k: int(v) for k, v in self.sizes.items()}))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and (dict(self.keep), dict(self.sizes), dict(self.meta)) == (
            dict(other.keep), dict(other.sizes), dict(other.meta))

    def __hash__(self) -> int:
        return hash(self.to_json())

    def pruned_groups(self) -> list[str]:
        """Ids of the groups that lose at least one channel."""
        return [g for g, kept in self.keep.items() if len(kept) < self.sizes[g]]

    def with_meta(self, **entries: Any) -> "Plan":
        """The same plan with `entries` added to its meta."""
        return Plan(self.keep, self.sizes, {**dict(self.meta), **entries})

    def keeping_whole(self, reasons: Mapping[str, str]) -> "Plan":
        """The same plan with the groups in `reasons` kept whole; `meta.blocked_by_verification`
        records group id -> why (a rewrite of that group did not verify).

        >>> Plan({"a:0": (0,)}, {"a:0": 2}).keeping_whole({"a:0": "masking"}).keep["a:0"]
        (0, 1)
        """
        keep = {g: tuple(range(self.sizes[g])) if g in reasons else kept for g, kept in self.keep.items()}
        blocked = {**dict(self.meta.get("blocked_by_verification", {})), **dict(reasons)}
        return Plan(keep, self.sizes, {**dict(self.meta), "blocked_by_verification": blocked})

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "keep": {k: list(v) for k, v in self.keep.items()},
                "sizes": dict(self.sizes), "meta": dict(self.meta)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
            if data.get("format") != PLAN_FORMAT:
                raise ValueError(f"unsupported plan format {data.get('format')!r} (expected {PLAN_FORMAT})")
            return cls(data["keep"], data["sizes"], data.get("meta", {}))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a structprune plan: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())


def compose_plans(plans) -> Plan:
    """One plan on the first plan's groups equivalent to applying `plans` in order.

    >>> a = Plan({"g": (0, 2, 3)}, {"g": 4}); b = Plan({"g": (1, 2)}, {"g": 3})
    >>> compose_plans([a, b]).keep["g"]
    (2, 3)
    """
    first, *rest = plans
    keep = {g: list(k) for g, k in first.keep.items()}
    for plan in rest:
        for gid, kept in plan.keep.items():
            if gid not in keep or len(keep[gid]) != plan.sizes[gid]:
                raise ValueError(f"cannot compose plans: group '{gid}' does not line up between cycles")
            keep[gid] = [keep[gid][i] for i in kept]
    meta = {**first.meta, "composed_from_cycles": len(plans)}
    return Plan(keep, first.sizes, meta)
