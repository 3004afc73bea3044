"""A block's output after only its feed-forward unit changed, without running the block again.

Block by block, each tuned block must hand its new output to the next one. Where the block's only
refit consumer belongs to a unit (`unit_tuning`: a feed-forward network) and its output is added to a
residual stream Z = O + R, the rest R does not depend on the unit, so the new output is

    reader(R + O_new)    with O_new the consumer's output on the unit's input rows U,

where `reader` is the module that normalises the stream and returns the block's output (a post-norm
transformer's LayerNorm), or the identity where the stream itself leaves the block (pre-norm: the reader
is the next block). U and R are kept from the pass that gathered the refit's rows, so the block's attention
is not run a second time (in a tuned all-MiniLM-L6-v2 compress, 2.9 s instead of 6.5 s). Whether
this holds is checked by replay on the first batch (the full block against the shortcut); where it does
not, or U and R would take more than MAX_TAIL_BYTES, the block is run again as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from structprune.calibrate.stream import OUTPUT
from structprune.calibrate.unit_tuning import agrees_on_replay
from structprune.data.running import Call, call_model, first_tensor

MAX_TAIL_BYTES = 1 << 30  # unit inputs and stream rests kept per block at most (else the block is run again)


@dataclass
class TailRows:
    """Per batch: the unit's input U and the stream's rest R = Z - O (full tensors, padding included);
    `complete` is False once keeping them would pass MAX_TAIL_BYTES (then they are dropped)."""

    unit: str
    holds_consumer: bool
    consumer: str
    reader: str
    inputs: list[torch.Tensor] = field(default_factory=list)
    rests: list[torch.Tensor] = field(default_factory=list)
    complete: bool = True
    size: int = 0

    def keep(self, u: torch.Tensor, z: torch.Tensor, out: torch.Tensor) -> None:
        """Keep one batch's U and R (from the reader's input Z and the consumer's output O)."""
        if not self.complete:
            return
        if z.shape != out.shape:
            self._drop()
            return
        self.size += (u.numel() + z.numel()) * u.element_size()
        if self.size > MAX_TAIL_BYTES:
            self._drop()
            return
        self.inputs.append(u.detach())
        self.rests.append((z - out).detach())

    def _drop(self) -> None:
        self.complete, self.inputs, self.rests = False, [], []


def block_outputs(block: nn.Module, tail: TailRows | None, calls: list[Call]) -> list[torch.Tensor]:
    """The block's output (first tensor) on each call: by the shortcut where `tail` holds every batch and
    the first batch's replay agrees with the full block, else by running the block."""
    full = first_tensor(call_model(block, calls[0]))
    if tail is None or not tail.complete or len(tail.inputs) != len(calls):
        return [full] + [first_tensor(call_model(block, c)) for c in calls[1:]]
    first = _shortcut(block, tail, 0)
    if first is None or first.shape != full.shape or not agrees_on_replay(first, full):
        return [full] + [first_tensor(call_model(block, c)) for c in calls[1:]]
    return [full] + [_shortcut(block, tail, i) for i in range(1, len(calls))]


def _shortcut(block: nn.Module, tail: TailRows, index: int) -> torch.Tensor | None:
    u, rest = tail.inputs[index], tail.rests[index]
    unit = block.get_submodule(tail.unit)
    rows = u.reshape(-1, u.shape[-1])
    out = unit(rows) if tail.holds_consumer else block.get_submodule(tail.consumer)(unit(rows))
    if out.numel() != rest.numel():
        return None
    z = rest + out.reshape(rest.shape)
    if tail.reader == OUTPUT:
        return z
    found = block.get_submodule(tail.reader)(z)
    return found if isinstance(found, torch.Tensor) else None

