"""`round_to=N`: every layer a group touches keeps a multiple of N channels, as hardware kernels like them
(onnxruntime's CPU convolutions run in blocks of 8 channels, NCHWc; a layer with another count falls back to
slower kernels with layout reorders around it; GPU tensor cores want multiples of 8 as well).

A group's channel is not always one channel of every layer it touches: an attention head is `head_dim`
channels of the output projection's input and 3 x `head_dim` of a fused qkv; a channel flattened into a
Linear is H x W of its features. Member axis m holds w_m positions per group channel (`Member.positions`),
so keeping k channels keeps k w_m there, a multiple of N for every m exactly when k is a multiple of

    unit_multiple = lcm over m of N / gcd(N, w_m)

Twelve heads of 64 dims need no rounding (any head count keeps a multiple of 8 dims); a plain channel
group (w = 1) rounds to N itself, what `round_to` always meant. Concatenated groups keep each piece a
multiple of N, hence the sum. Selection rounds a group's kept count *up* to that multiple (`select._rounded`:
the caps on removal still hold; a group smaller than its multiple stays as chosen).
"""
from __future__ import annotations

import math


def unit_multiple(group, round_to: int) -> int:
    """How many of `group`'s channels to keep a multiple of so that every member axis keeps a multiple of
    `round_to` channels (module docstring); `round_to` itself for a group without member positions.

    >>> import numpy as np
    >>> from types import SimpleNamespace as S
    >>> heads = S(size=4, members=(S(positions=np.repeat(np.arange(4), 24)), S(positions=np.repeat(np.arange(4), 4))))
    >>> unit_multiple(heads, 8), unit_multiple(S(size=16, members=()), 8)  # 4-dim heads: an even count
    (2, 8)
    """
    if round_to <= 1:
        return 1
    widths = [int((m.positions >= 0).sum()) // group.size for m in group.members if hasattr(m, "positions")]
    widths = [w for w in widths if w > 0]
    if not widths:
        return round_to
    return math.lcm(*(round_to // math.gcd(round_to, w) for w in widths))
