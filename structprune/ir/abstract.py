"""Abstract values: what the channel analysis knows about one tensor in the graph.

An `Abstract` holds an id array `ids` with the tensor's rank. On a *channel* dim (`chan[d]`) the array
has the tensor's full size there and position i holds the id of channel i; on a *data* dim (batch,
space, tokens) it has size 1. So a conv feature map (B, C, H, W) is ids of shape (1, C, 1, 1), and a
value with no channel dim at all holds a single id (a model input's reason element, say).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Abstract:
    ids: np.ndarray
    chan: tuple[bool, ...]
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_data(self) -> bool:
        """No channel dim: the value carries a single id (a reason or a derived-data element)."""
        return not any(self.chan)

    def dim(self, d: int) -> int:
        return d % self.ndim if self.ndim else 0


def data_value(shape: tuple[int, ...], ident: int) -> Abstract:
    """A value with no channel dims that carries one id everywhere."""
    return Abstract(np.full((1,) * len(shape), ident, dtype=np.int64), (False,) * len(shape), tuple(shape))


def channel_vector(ids: np.ndarray, ndim: int, dim: int) -> np.ndarray:
    """Reshape a 1-D id vector so it broadcasts along `dim` of a rank-`ndim` array."""
    shape = [1] * ndim
    shape[dim] = ids.size
    return ids.reshape(shape)


def expand_to(av: Abstract, dims: set[int]) -> np.ndarray:
    """The id array broadcast to the real size on `dims` (copies, so it can be sliced/reshaped)."""
    target = tuple(av.shape[d] if d in dims else av.ids.shape[d] for d in range(av.ndim))
    return np.broadcast_to(av.ids, target).copy()


def make(ids: np.ndarray, shape: tuple[int, ...]) -> Abstract:
    """Build an Abstract from a (possibly partly expanded) id array: dims of size > 1 are channel
    dims unless the ids are constant along them, in which case they collapse to data dims."""
    ids = np.asarray(ids, dtype=np.int64)
    chan = []
    for d in range(ids.ndim):
        if ids.shape[d] > 1 and _constant_along(ids, d):
            ids = ids.take([0], axis=d)
        chan.append(ids.shape[d] > 1)
    return Abstract(ids, tuple(chan), tuple(shape))


def make_with_chan(ids: np.ndarray, chan: tuple[bool, ...], shape: tuple[int, ...]) -> Abstract:
    """Build an Abstract whose channel flags are known (size-1 channel dims stay channel dims)."""
    return Abstract(np.asarray(ids, dtype=np.int64), tuple(chan), tuple(shape))


def _constant_along(ids: np.ndarray, d: int) -> bool:
    first = ids.take([0], axis=d)
    return bool((ids == first).all())


def representative(av: Abstract, dims: set[int]) -> np.ndarray:
    """Ids with `dims` narrowed to index 0 (valid once those dims were unioned fibre-wise)."""
    ids = av.ids
    for d in sorted(dims):
        ids = ids.take([0], axis=d)
    return ids


def new_shape(value: Abstract, keep: np.ndarray, component: np.ndarray) -> tuple[int, ...]:
    """The shape `value` has after pruning: a channel dim shrinks to the positions holding a kept element
    (`keep`: per component, `component`: id -> component), data dims stay."""
    mask = keep[component[value.ids]]
    shape = list(value.shape)
    for d in range(value.ndim):
        if value.chan[d] and mask.shape[d] == value.shape[d]:
            shape[d] = int(mask.any(axis=tuple(b for b in range(mask.ndim) if b != d)).sum())
    return tuple(shape)
