"""Recurrent layers: aten.lstm / gru / rnn_tanh / rnn_relu (nn.LSTM, nn.GRU, nn.RNN).

params = per layer l, per direction d: w_ih (G·H, I), w_hh (G·H, H), [b_ih (G·H), b_hh (G·H)], with
G gate blocks (LSTM 4, GRU 3, RNN 1). Hidden unit j of (l, d) is row j of every gate block of all four
tensors and column j of w_hh: those are one unit. The module has one `hidden_size`, so every layer and
direction keeps the same count: hidden units are tied by index across them (as chunk ties its pieces).
Layer 0's w_ih columns are the input's features; layer l > 0 reads cat(h of each direction of l - 1).
The output's features are cat(h of each direction of the last layer); h_n / c_n carry h on their last
dim. Packed sequences (`.data` overloads) and LSTM projections (`proj_size`) are blocked.
"""
from __future__ import annotations

import numpy as np
from torch import fx

from structprune.ir.abstract import channel_vector, make_with_chan
from structprune.ir.roles import ROLE_IN, ROLE_OUT
from structprune.rules.context import RuleContext
from structprune.rules.fallback import op_key, rule_unsupported

STATE_FACTORIES = ("aten.zeros", "aten.new_zeros", "aten.zeros_like")


def rule_rnn(ctx: RuleContext, node: fx.Node) -> None:
    """lstm.input(x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)."""
    if getattr(node.target, "_overloadname", "input") != "input":
        return rule_unsupported(ctx, node, "packed sequence")
    x, hx, params = ctx.value(node.args[0]), node.args[1], list(node.args[2])
    has_biases, layers, bidirectional = node.args[3], node.args[4], node.args[7]
    directions = 2 if bidirectional else 1
    per_cell = 4 if has_biases else 2
    if x is None or len(params) != layers * directions * per_cell or any(ctx.fqn(p) is None for p in params):
        return rule_unsupported(ctx, node, "recurrent layer with projections or weights that are not parameters")
    cells = [params[i:i + per_cell] for i in range(0, len(params), per_cell)]
    hidden = [_tie_cell(ctx, cell) for cell in cells]
    for h in hidden[1:]:
        ctx.union(h, hidden[0])
    for layer in range(layers):
        for d in range(directions):
            w_ih = ctx.state_axis(cells[layer * directions + d][0], 1, ROLE_IN)
            if layer == 0:
                ctx.tie_dim(x, -1, w_ih, op_key(node.target))
            else:
                ctx.union(w_ih, np.concatenate(hidden[(layer - 1) * directions:layer * directions]))
    _tie_initial_state(ctx, node, hx, hidden[0])
    ctx.set(node, _outputs(ctx, node, np.concatenate(hidden[-directions:]), hidden[0]))


def _tie_cell(ctx: RuleContext, cell: list[fx.Node]) -> np.ndarray:
    """Tie one (layer, direction)'s gate rows to its hidden units; returns the hidden ids (w_hh columns)."""
    hidden = ctx.state_axis(cell[1], 1, ROLE_IN)
    for tensor in cell:
        rows = ctx.state_axis(tensor, 0, ROLE_OUT)
        ctx.union(rows.reshape(-1, hidden.size), hidden[None, :])
    return hidden


def _tie_initial_state(ctx: RuleContext, node: fx.Node, hx, hidden: np.ndarray) -> None:
    """h0 / c0 (layers·directions, batch, H): their last dim is the hidden units. Zeros the RNN module
    makes itself (no h0 passed) follow its hidden_size and need no tie."""
    for state in (hx if isinstance(hx, (list, tuple)) else [hx]):
        value = ctx.value(state)
        if value is not None and not _own_zeros(state, node):
            ctx.tie_dim(value, -1, hidden, op_key(node.target))


def _own_zeros(state: fx.Node, node: fx.Node) -> bool:
    if state.op != "call_function" or op_key(state.target) not in STATE_FACTORIES:
        return False
    return _module_path(state) is not None and _module_path(state) == _module_path(node)


def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def _outputs(ctx: RuleContext, node: fx.Node, features: np.ndarray, hidden: np.ndarray) -> tuple:
    """(output, h_n[, c_n]): output's last dim carries `features`; the states' last dim `hidden`."""
    results = []
    for index, val in enumerate(node.meta["val"]):
        shape = tuple(int(s) for s in val.shape)
        ids = features if index == 0 else hidden
        chan = tuple(d == len(shape) - 1 for d in range(len(shape)))
        results.append(make_with_chan(channel_vector(ids, len(shape), len(shape) - 1), chan, shape))
    return tuple(results)


RECURRENT_OPS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
