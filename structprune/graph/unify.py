"""Union-find over channel elements, solved once with scipy's connected components.

Notation: every channel element (one row of a weight axis, one channel of a value) is an integer id.
Rules *union* ids that must be pruned together; a blocked axis is unioned with a *reason element*
(an id that stands for "model output", "unsupported op aten.foo", ...); an axis whose masking cannot be
exact is *flagged inexact*. `solve()` returns the component of every id.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from structprune.graph.reasons import Reason


@dataclass(frozen=True)
class Solution:
    """Component per id, plus per-component flags (blocked reasons and inexactness)."""

    component: np.ndarray            # id -> component index
    reasons: dict[int, tuple[Reason, ...]]  # component -> reasons that block it
    inexact: np.ndarray              # component -> bool
    inexact_ops: dict[int, tuple[str, ...]]  # component -> ops that made it inexact

    def is_blocked(self, comp: int) -> bool:
        return comp in self.reasons


class IdSpace:
    """Allocates ids and records unions, blocks and inexact flags."""

    def __init__(self) -> None:
        self._next = 0
        self._edges_a: list[np.ndarray] = []
        self._edges_b: list[np.ndarray] = []
        self._reason_ids: dict[Reason, int] = {}
        self._reason_of: dict[int, Reason] = {}
        self._blocked: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, reason ids)
        self._inexact: list[tuple[np.ndarray, str]] = []

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
        reason element blocks the other side instead (blocked channels are not merged together)."""
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        a, b = a.ravel(), b.ravel()
        if self._reason_of:
            reasons = np.fromiter(self._reason_of, dtype=np.int64)
            ra, rb = np.isin(a, reasons), np.isin(b, reasons)
            self._blocked.append((a[rb & ~ra], b[rb & ~ra]))
            self._blocked.append((b[ra & ~rb], a[ra & ~rb]))
            plain = ~(ra | rb)
            a, b = a[plain], b[plain]
        keep = a != b
        if keep.any():
            self._edges_a.append(a[keep])
            self._edges_b.append(b[keep])

    def union_all(self, ids: np.ndarray) -> None:
        """Tie every id in `ids` together."""
        flat = np.unique(np.asarray(ids, dtype=np.int64))
        if flat.size > 1:
            self.union(flat[:1], flat[1:])

    def block(self, ids: np.ndarray, reason: Reason) -> None:
        """Block every id in `ids` with `reason`."""
        flat = np.unique(np.asarray(ids, dtype=np.int64))
        if flat.size:
            self.union(flat, np.int64(self.reason_id(reason)))

    def flag_inexact(self, ids: np.ndarray, op: str) -> None:
        """Mark ids whose masking equivalence cannot be exact (a normalisation mixes them)."""
        self._inexact.append((np.unique(np.asarray(ids, dtype=np.int64)), op))

    def solve(self) -> Solution:
        n = self._next
        if self._edges_a:
            a = np.concatenate(self._edges_a)
            b = np.concatenate(self._edges_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        reasons: dict[int, set[Reason]] = {}
        for ids, rids in self._blocked:
            for c, rid in set(zip(comp[ids].tolist(), rids.tolist())):
                reasons.setdefault(c, set()).add(self._reason_of[rid])
        inexact = np.zeros(int(comp.max()) + 1 if n else 0, dtype=bool)
        inexact_ops: dict[int, set[str]] = {}
        for ids, op in self._inexact:
            comps = np.unique(comp[ids])
            inexact[comps] = True
            for c in comps.tolist():
                inexact_ops.setdefault(c, set()).add(op)
        return Solution(
            component=comp,
            reasons={c: tuple(sorted(r, key=str)) for c, r in reasons.items()},
            inexact=inexact,
            inexact_ops={c: tuple(sorted(o)) for c, o in inexact_ops.items()},
        )
