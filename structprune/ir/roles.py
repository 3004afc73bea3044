"""Member roles: how the masking check treats one axis of a parameter/buffer in a channel group.

'in' is a consumer's input axis (zeroed to mask a channel), 'out' a producer's output axis, 'elem' an
element-wise axis (BatchNorm, bias, scale). A `StateMap` records which ids one tensor's axis carries
and in which role; rules create them, the graph assembly turns them into group members.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLE_IN, ROLE_OUT, ROLE_ELEM = "in", "out", "elem"


@dataclass(frozen=True, eq=False)
class StateMap:
    """Ids of one parameter/buffer: `ids` broadcasts to the tensor's shape (size 1 on axes it does
    not cover). `role` says how masking treats it: 'in' = consumer input axis (zeroed to mask)."""

    fqn: str
    ids: np.ndarray
    role: str
    axis: int | None = None  # the axis a per-axis map covers; None for a joint map
