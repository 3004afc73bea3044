"""The context a channel rule works in: abstract values of its inputs, parameter axes, ties, blocks."""
from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np
import torch
from torch import fx

from structprune.capture import Captured
from structprune.ir.abstract import Abstract, channel_vector, data_value, make_with_chan, representative
from structprune.ir.ops import op_key
from structprune.ir.reasons import Reason, ReasonKind
from structprune.ir.roles import ROLE_ELEM, StateMap
from structprune.ir.unify import IdSpace

# ops that piece a buffer into a channel-carrying value (offsets) or add it element by element
PIECING_OPS = frozenset({"aten.cat", "aten.concat", "aten.concatenate", "aten.add", "aten.sub"})


class RuleContext:
    """Everything a rule may touch. Rules read `value(arg)`, create parameter axes with
    `state_axis`, record ties with `union`, and publish their output with `set`."""

    def __init__(self, captured: Captured, space: IdSpace) -> None:
        self.captured = captured
        self.space = space
        self.values: dict[str, object] = {}
        self.state_maps: dict[str, list[StateMap]] = {}
        self._axis_ids: dict[tuple[str, int], np.ndarray] = {}
        self.grids: list[np.ndarray] = []  # id arrays of channel dims split into grids (see build)
        self.node: fx.Node | None = None
        self.deferred: dict[str, tuple[fx.Node, Callable]] = {}  # weight expressions (rules/weights.py)
        self.memo: dict[tuple, object] = {}  # per-analysis caches of rule helpers, keyed (helper, node name)
        self.sized_splits: list = []  # unequal splits of a channel dim, checked once modules are known

    # ---- graph facts -------------------------------------------------------------------------
    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        if isinstance(val, torch.Tensor):
            return tuple(int(s) for s in val.shape)
        return None

    def fqn(self, arg) -> str | None:
        """The parameter/buffer FQN a placeholder stands for, else None."""
        if isinstance(arg, fx.Node) and arg.op == "placeholder":
            return self.captured.state_fqn.get(arg.name)
        return None

    def reason(self, kind: ReasonKind, detail: str = "") -> Reason:
        return Reason(kind, detail, self.node.name if self.node is not None else "")

    # ---- values --------------------------------------------------------------------------------
    def value(self, arg) -> Abstract | None:
        """The abstract value of a graph input to the current node (None if not a tensor)."""
        if not isinstance(arg, fx.Node):
            return None
        self._materialise(arg)
        if arg.name not in self.values and arg.op == "placeholder":
            self.values[arg.name] = self._placeholder_value(arg)
        val = self.values.get(arg.name)
        return val if isinstance(val, Abstract) else None

    def raw(self, arg):
        """The stored value (an Abstract, a tuple of them for multi-output ops, or None)."""
        if not isinstance(arg, fx.Node):
            return None
        self._materialise(arg)
        return self.values.get(arg.name)

    def set(self, node: fx.Node, value) -> None:
        self.values[node.name] = value

    # ---- deferred nodes -------------------------------------------------------------------------
    def defer(self, node: fx.Node, rule: Callable) -> None:
        """Run `rule` on `node` only when some other rule reads the node's value. A weight computed
        from parameters (`v * g / |v|`) is read axis by axis by the layer that uses it; its own rule
        (which would treat the parameters as activations) runs only if something else reads it."""
        self.deferred[node.name] = (node, rule)

    def is_deferred(self, arg) -> bool:
        return isinstance(arg, fx.Node) and arg.name in self.deferred

    def _materialise(self, arg: fx.Node) -> None:
        if arg.name not in self.deferred:
            return
        node, rule = self.deferred.pop(arg.name)
        outer, self.node = self.node, node
        try:
            rule(self, node)
        finally:
            self.node = outer

    def fresh_data(self, shape: tuple[int, ...]) -> Abstract:
        """A value with no channel dims and a new id of its own."""
        return data_value(shape, int(self.space.fresh(1)[0]))

    def _placeholder_value(self, node: fx.Node) -> Abstract | None:
        shape = self.shape(node)
        if shape is None:
            return None
        fqn = self.captured.state_fqn.get(node.name)
        if fqn is not None and node.meta["val"].is_floating_point() and self._holds_channels(node, fqn):
            return self._state_value(node, fqn, shape)
        if fqn is not None:  # integer/bool buffers (position ids, masks) are data, never channels; so are
            return self.fresh_data(shape)  # most buffers left out of the state_dict (see _holds_channels)
        kind = ReasonKind.MODEL_INPUT if node.name in self.captured.user_inputs else ReasonKind.TENSOR_CONSTANT
        return data_value(shape, self.space.reason_id(Reason(kind, node.name)))

    def _holds_channels(self, node: fx.Node, fqn: str) -> bool:
        """Whether a float parameter or buffer has channel axes. A buffer left out of the state_dict is
        computed by its module's code (RoPE's `inv_freq`, read through views, a product with positions and
        a broadcast over heads), so it is data - unless every use pieces it into a value or adds it to one
        (PIECING_OPS: timm Swin V2's zero `k_bias` in `cat((q_bias, k_bias, v_bias))`): then each element
        stands for one channel of that value, and the rewrite slices the module's copy like any buffer."""
        if fqn not in self._computed_buffers:
            return True
        return bool(node.users) and all(op_key(user.target) in PIECING_OPS for user in node.users)

    @cached_property
    def _computed_buffers(self) -> frozenset[str]:
        """FQNs of the non-persistent buffers: the module computes them from its configuration (RoPE's
        `inv_freq`), a reload recomputes them at their old size, so their sizes are fixed in code."""
        return frozenset(self.captured.program.graph_signature.non_persistent_buffers)

    def _state_value(self, node: fx.Node, fqn: str, shape: tuple[int, ...]) -> Abstract:
        """A parameter or float buffer: one channel axis where it has one big dim; with several, nothing says
        which are channels, so every element gets an id (a grid the consumers narrow) - unless it is a
        table of layer inputs (`_is_layer_input_table`), which is data."""
        big = [d for d, s in enumerate(shape) if s > 1]
        if not big or (len(big) > 1 and self._is_layer_input_table(node)):
            return self.fresh_data(shape)
        if len(big) == 1:
            ids = self.state_axis(node, big[0], ROLE_ELEM)
            return make_with_chan(channel_vector(ids, len(shape), big[0]), _flags(len(shape), big), shape)
        sub = tuple(s if d in big else 1 for d, s in enumerate(shape))
        ids = self.space.fresh(int(np.prod(sub))).reshape(sub)
        self.state_maps.setdefault(fqn, []).append(StateMap(fqn, ids, ROLE_ELEM, None))
        return make_with_chan(ids, _flags(len(shape), big), shape)

    def _is_layer_input_table(self, node: fx.Node) -> bool:
        """A buffer with several big dims that only Linear layers read, as their input: a table of
        constant input vectors at positions that the module builds for its own layer (Swin V2's relative
        coordinates, (1, 2W-1, 2W-1, 2), fed to its position-bias MLP). The Linear reads the last dim as
        features and the others as positions (data dims, as in any activation). Its features are values
        the module's code computes, like a model input's, so they are not pruned either: the table is data,
        as it is where the module keeps it out of the state_dict (timm's copy). A grid of ids would make
        every position a channel, and the Linear's output features a product with them (blocked), which
        blocks every width the MLP's output meets (the attention heads)."""
        signature = self.captured.program.graph_signature
        return (node.name in signature.inputs_to_buffers and bool(node.users)
                and all(op_key(user.target) == "aten.linear" and user.args[0] is node for user in node.users))

    # ---- parameter axes --------------------------------------------------------------------------
    def state_axis(self, arg, axis: int, role: str) -> np.ndarray | None:
        """1-D ids of one axis of the parameter/buffer behind `arg` (created once per axis)."""
        fqn = self.fqn(arg)
        shape = self.shape(arg)
        if fqn is None or shape is None:
            return None
        axis %= len(shape)
        key = (fqn, axis)
        if key not in self._axis_ids:
            self._axis_ids[key] = self.space.fresh(shape[axis])
        ids = self._axis_ids[key]
        maps = self.state_maps.setdefault(fqn, [])
        if not any(m.axis == axis and m.role == role for m in maps):  # a tied weight may play two roles
            maps.append(StateMap(fqn, channel_vector(ids, len(shape), axis), role, axis))
        return ids

    def axis_ids(self, fqn: str, axis: int) -> np.ndarray | None:
        """Ids of an axis some rule already created (None if no rule touched it)."""
        return self._axis_ids.get((fqn, axis))

    # ---- ties ---------------------------------------------------------------------------------------
    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.space.union(a, b)

    def block(self, ids: np.ndarray, kind: ReasonKind, detail: str = "") -> None:
        self.space.block(ids, self.reason(kind, detail))

    def block_index_values(self, arg, op: str) -> None:
        """Block the channels of `arg` where an op reads its values as positions (an index tensor): pruning
        would change what they point at, and the masked model, which keeps every position, cannot show it."""
        index = self.value(arg)
        if index is not None and any(index.chan):
            self.block(index.ids, ReasonKind.DATA_DIMENSION, f"{op} reads indices computed from channel values")

    def flag_inexact(self, ids: np.ndarray, op: str) -> None:
        self.space.flag_inexact(ids, op)

    def assume(self, ids: np.ndarray, what: str) -> None:
        """Pruning these ids relies on `what`, which only verification can confirm (see IdSpace.assume)."""
        self.space.assume(ids, what)

    def flag_inexact_unless_whole(self, av: Abstract, dim: int, op: str) -> None:
        """Flag `av`'s channels inexact where an op mixes along `dim` across more than one unit."""
        self.space.flag_inexact_unless_whole(np.moveaxis(av.ids, dim, -1).reshape(-1, av.ids.shape[dim]), op)

    def tie_dim(self, av: Abstract, dim: int, vec: np.ndarray, op: str) -> None:
        """Tie dim `dim` of value `av` with the 1-D id vector `vec` (a weight axis, say)."""
        dim = av.dim(dim)
        if av.chan[dim]:
            self.union(av.ids, channel_vector(vec, av.ndim, dim))
        elif av.is_data:
            self.union(vec, av.ids.ravel()[:1])
        else:
            self.block(vec, ReasonKind.DATA_DIMENSION, f"{op} consumes dim {dim}, which is not a channel dim")

    def union_fibres(self, av: Abstract, dims) -> None:
        """Tie all ids along `dims` together, for each position of the other dims."""
        for d in dims:
            if av.ids.shape[d] > 1:
                self.union(av.ids, av.ids.take([0], axis=d))

    def fibres_as_units(self, av: Abstract, dims, shape: tuple[int, ...]) -> Abstract:
        """`av`'s fibres along `dims` tied into one unit each, returned at `shape` with `dims` as data dims
        (a parameter grid resampled or padded over its positions keeps its other channel axis)."""
        self.union_fibres(av, dims)
        chan = tuple(c and d not in dims for d, c in enumerate(av.chan))
        return make_with_chan(representative(av, set(dims)), chan, shape)


def _flags(ndim: int, dims) -> tuple[bool, ...]:
    return tuple(d in dims for d in range(ndim))


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """Every tensor-valued fx.Node among the node's args and kwargs, in order."""
    found: list[fx.Node] = []

    def visit(a):
        if isinstance(a, fx.Node):
            if isinstance(a.meta.get("val"), torch.Tensor):
                found.append(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                visit(x)
        elif isinstance(a, dict):
            for x in a.values():
                visit(x)

    visit(node.args)
    visit(node.kwargs)
    return found
