"""Group assembly and the id space against plain-Python references, on random inputs."""
from __future__ import annotations

import numpy as np
import pytest

from structprune.ir.reasons import Reason, ReasonKind
from structprune.ir.unify import IdSpace, Solution
from structprune.rules.build import _group_components

OUTPUT = Reason(ReasonKind.MODEL_OUTPUT, "output 0", "out")


def _random_members(rng: np.random.Generator, ncomp: int):
    """Member axes whose positions hold components: runs of consecutive ones, or any ones."""
    members, vectors = [], []
    for m in range(int(rng.integers(1, 7))):
        size = int(rng.integers(1, 10))
        if rng.random() < 0.5:
            vec = (int(rng.integers(0, ncomp)) + np.arange(size)) % ncomp
        else:
            vec = rng.integers(0, ncomp, size)
        members.append((f"p{m}.weight", 0, "in" if m % 2 else "out"))
        vectors.append(vec.astype(np.int64))
    return members, vectors


def _reference_groups(vectors, blocked: set[int]) -> list[tuple[tuple[int, ...], list[int]]]:
    """(member indices, components) per group: components grouped by the axes they touch, sorted."""
    by_key: dict[tuple, list[int]] = {}
    for comp in sorted({int(c) for v in vectors for c in v}):
        sig = tuple(m for m, v in enumerate(vectors) if comp in v)
        by_key.setdefault((sig, comp in blocked), []).append(comp)
    return [(sig, comps) for (sig, _), comps in sorted(by_key.items())]


@pytest.mark.parametrize("seed", range(200))
def test_groups_match_a_per_component_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ncomp = int(rng.integers(1, 30))
    members, vectors = _random_members(rng, ncomp)
    reasons = {int(c): (OUTPUT,) for c in rng.integers(0, ncomp, int(rng.integers(0, 4)))}
    solution = Solution(np.arange(ncomp), reasons, np.zeros(ncomp, dtype=bool), {})
    groups = _group_components(members, vectors, solution)
    expected = _reference_groups(vectors, set(reasons))
    assert [sorted(g.components.tolist()) for g in groups] == [comps for _, comps in expected]
    assert [[m.fqn for m in g.members] for g in groups] == [[members[m][0] for m in sig] for sig, _ in expected]
    assert [g.prunable for g in groups] == [comps[0] not in reasons for _, comps in expected]
    for g in groups:
        for m in g.members:
            vec = vectors[int(m.fqn[1:].split(".")[0])]
            owned = m.positions >= 0
            assert g.components[m.positions[owned]].tolist() == vec[owned].tolist()


def test_reason_pairs_block_without_merging() -> None:
    space = IdSpace()
    a, b = space.fresh(2)
    space.block(np.array([a, b]), OUTPUT)
    solution = space.solve()
    assert solution.component[a] != solution.component[b]
    assert solution.reasons[solution.component[a]] == (OUTPUT,)
    assert solution.reasons[solution.component[b]] == (OUTPUT,)


def test_union_with_a_reason_element_blocks_the_other_side() -> None:
    space = IdSpace()
    ids = space.fresh(3)
    carrier = space.reason_id(OUTPUT)  # a value that carries a reason element, like a model input
    space.union(ids[:2], np.array([carrier, ids[2]]))
    solution = space.solve()
    comp = solution.component
    assert solution.is_blocked(comp[ids[0]]) and not solution.is_blocked(comp[ids[1]])
    assert comp[ids[1]] == comp[ids[2]]


def test_blocking_nothing_makes_no_reason_element() -> None:
    space = IdSpace()
    space.fresh(2)
    space.block(np.zeros(0, dtype=np.int64), OUTPUT)
    assert space.size == 2
