"""Union-find over channel elements, solved once with scipy's connected components.

Notation: every channel element (one row of a weight axis, one channel of a value) is an integer id.
Rules *union* ids that must be pruned together; a blocked axis is unioned with a *reason element*
(an id that stands for "model output", "unsupported op aten.foo", ...); an axis whose masking cannot be
exact is *flagged inexact*. `solve()` returns the component of every id.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from structprune.ir.reasons import Reason


@dataclass(frozen=True)
class Solution:
    """Component per id, plus per-component flags (blocked reasons and inexactness)."""

    component: np.ndarray            # id -> component index
    reasons: dict[int, tuple[Reason, ...]]  # component -> reasons that block it
    inexact: np.ndarray              # component -> bool
    inexact_ops: dict[int, tuple[str, ...]]  # component -> ops that made it inexact
    assumptions: dict[int, tuple[str, ...]] = field(default_factory=dict)  # component -> what it relies on

    def is_blocked(self, comp: int) -> bool:
        return comp in self.reasons


class IdSpace:
    """Allocates ids and records unions, blocks and inexact flags."""

    def __init__(self) -> None:
        self._next = 0
        self._pairs_a: list[np.ndarray] = []
        self._pairs_b: list[np.ndarray] = []
        self._reason_ids: dict[Reason, int] = {}
        self._reason_of: dict[int, Reason] = {}
        self._inexact: list[tuple[np.ndarray, str]] = []
        self._mixing: list[tuple[np.ndarray, str]] = []
        self._assumed: list[tuple[np.ndarray, str]] = []

    @property
    def size(self) -> int:
        return self._next

    def fresh(self, n: int) -> np.ndarray:
        """n new ids, as a 1-D int64 array."""
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids

    def reason_id(self, reason: Reason) -> int:
        """The element that stands for `reason` (one per distinct reason)."""
        if reason not in self._reason_ids:
            rid = int(self.fresh(1)[0])
            self._reason_ids[reason] = rid
            self._reason_of[rid] = reason
        return self._reason_ids[reason]

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie a[i] with b[i] for every position after broadcasting the two arrays. A pair with a
        reason element blocks the other side instead (blocked channels are not merged together);
        `solve` sorts the pairs into ties and blocks."""
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        self._pairs_a.append(a.ravel())
        self._pairs_b.append(b.ravel())

    def union_all(self, ids: np.ndarray) -> None:
        """Tie every id in `ids` together."""
        flat = np.unique(np.asarray(ids, dtype=np.int64))
        if flat.size > 1:
            self.union(flat[:1], flat[1:])

    def block(self, ids: np.ndarray, reason: Reason) -> None:
        """Block every id in `ids` with `reason` (its reason element is made on the first real block)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size:
            self.union(ids, np.int64(self.reason_id(reason)))

    def flag_inexact(self, ids: np.ndarray, op: str) -> None:
        """Mark ids whose masking equivalence cannot be exact (a normalisation mixes them)."""
        self._inexact.append((np.asarray(ids, dtype=np.int64).ravel(), op))

    def flag_inexact_unless_whole(self, fibres: np.ndarray, op: str) -> None:
        """Mark the ids of each row of `fibres` (n_fibres x fibre length) inexact unless that row ends
        up one unit: an op that mixes along a fibre (softmax over a head's dims) stays exact when the
        whole fibre is kept or removed together."""
        self._mixing.append((np.asarray(fibres, dtype=np.int64).reshape(len(fibres), -1), op))

    def assume(self, ids: np.ndarray, what: str) -> None:
        """Record that pruning these ids relies on something only verification can confirm (a split size
        in the model's code that must follow the width): where a failure cannot be localised otherwise,
        verification keeps the groups that rely on an assumption whole first."""
        self._assumed.append((np.asarray(ids, dtype=np.int64).ravel(), what))

    def solve(self) -> Solution:
        """The component of every id, and the reasons and inexact ops of each component."""
        a, b = self._pairs()
        is_reason = np.zeros(self._next, dtype=bool)
        is_reason[list(self._reason_of)] = True
        ra, rb = is_reason[a], is_reason[b]
        plain = ~(ra | rb)
        comp = self._components(a[plain], b[plain])
        blocked = np.concatenate([a[rb & ~ra], b[ra & ~rb]])
        reason_ids = np.concatenate([b[rb & ~ra], a[ra & ~rb]])
        reasons: dict[int, set[Reason]] = {}
        for c, rid in set(zip(comp[blocked].tolist(), reason_ids.tolist())):
            reasons.setdefault(c, set()).add(self._reason_of[rid])
        inexact, inexact_ops = self._inexact_components(comp)
        return Solution(
            component=comp,
            reasons={c: tuple(sorted(r, key=str)) for c, r in reasons.items()},
            inexact=inexact,
            inexact_ops={c: tuple(sorted(o)) for c, o in inexact_ops.items()},
            assumptions=self._assumptions(comp),
        )

    def _components(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Connected components of the graph with an edge a[i] -- b[i] for every i."""
        n = self._next
        graph = csr_matrix((np.ones(a.size), (a, b)), shape=(n, n))  # csgraph's own format and dtype
        return connected_components(graph, directed=False)[1]

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pair recorded by `union` so far, as two flat id arrays."""
        if not self._pairs_a:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(self._pairs_a), np.concatenate(self._pairs_b)

    def _inexact_components(self, comp: np.ndarray) -> tuple[np.ndarray, dict[int, set[str]]]:
        """Which components some op flagged inexact, and the ops that did."""
        inexact = np.zeros(int(comp.max()) + 1 if comp.size else 0, dtype=bool)
        inexact_ops: dict[int, set[str]] = {}
        for ids, op in self._inexact + self._split_fibres(comp):
            comps = np.unique(comp[ids])
            inexact[comps] = True
            for c in comps.tolist():
                inexact_ops.setdefault(c, set()).add(op)
        return inexact, inexact_ops

    def _split_fibres(self, comp: np.ndarray) -> list[tuple[np.ndarray, str]]:
        """The ids of every fibre flagged by `flag_inexact_unless_whole` that spans several components."""
        found = []
        for fibres, op in self._mixing:
            c = comp[fibres]
            split = (c != c[:, :1]).any(axis=1)
            if split.any():
                found.append((fibres[split].ravel(), op))
        return found

    def _assumptions(self, comp: np.ndarray) -> dict[int, tuple[str, ...]]:
        found: dict[int, set[str]] = {}
        for ids, what in self._assumed:
            for c in np.unique(comp[ids]).tolist():
                found.setdefault(c, set()).add(what)
        return {c: tuple(sorted(w)) for c, w in found.items()}
