"""Where a refit consumer's output goes: the "stream" target of reconstruction.

In residual networks a consumer's output O is added to a stream R and a module (typically a
LayerNorm) reads Z = O + R. After pruning, R differs from the dense network's too (earlier layers
were pruned), so matching the dense O leaves that error in place; matching the dense stream does not:
the stream target is  O* = Z_dense - R_pruned = O_pruned + (Z_dense - Z_pruned). Where the consumer's
output is read directly (a BatchNorm, an activation) there is no such reader and the target is the
dense output, as before.

The reader is found by probing (`structprune.criteria.readers`). In a pre-norm transformer that
is the next block, not its norm: the stream itself goes on unnormalised, so its rows are not weighted
(measured on a random Llama: weighting by the next norm lowered the output cosine). A reader that
normalises each position (reader(2 Z) == reader(Z), as LayerNorm) makes the error of a position
count in units of that position's spread, so rows are weighted by 1 / var(Z_dense) over the channels.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from structprune.calibrate.layers import channel_last
from structprune.criteria.readers import Reader, find_reader
from structprune.data.running import StopForward, call_model, first_tensor, forward_hooks

__all__ = ["OUTPUT", "Reader", "find_reader", "output_rows", "reads_output_of", "run_to_reader", "stream_inputs"]

OUTPUT = ""  # a reader name: whatever reads the output of the module that is run (its first tensor)


def output_rows(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """(positions, channels) of a consumer's output-shaped tensor, in the order of its input rows."""
    if channel_last(module):
        return t.reshape(-1, t.shape[-1])
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def run_to_reader(model: nn.Module, name: str, reader: str, x: Any, also: str | None = None) -> tuple:
    """(consumer input, consumer output, reader input, input of module `also` or None) of one forward
    pass, stopped at the reader (`OUTPUT`: run to the end; the reader input is the output)."""
    seen: dict[str, torch.Tensor] = {}

    def take_input(module, args):
        seen.setdefault("x", args[0])

    def take_also(module, args):
        seen.setdefault("also", args[0])

    def take_output(module, args, out):
        seen.setdefault("out", out)

    def stop(module, args):
        if "out" in seen:
            seen["z"] = args[0]
            raise StopForward

    pre = {name: take_input, **({reader: stop} if reader != OUTPUT else {}), **({also: take_also} if also else {})}
    with forward_hooks(model, pre=pre, post={name: take_output}):
        try:
            result = call_model(model, x)
            if reader == OUTPUT and "out" in seen:
                seen["z"] = first_tensor(result)
        except StopForward:
            pass
    if not {"x", "out", "z"} <= set(seen) or (also and "also" not in seen):
        missing = f"'{name}', its reader '{reader or 'the output'}'" + (f" or '{also}'" if also else "")
        raise RuntimeError(f"reconstruction: {missing} was not called on a calibration batch")
    return seen["x"], seen["out"], seen["z"], seen.get("also")


def reads_output_of(model: nn.Module, block: str, reader: str, x: Any) -> bool:
    """True if, on input `x`, the first call of `reader` after `block` returned reads exactly the
    block's output (first tensor): the block's output is the stream the reader normalises."""
    seen: dict[str, torch.Tensor] = {}

    def take_output(module, args, out):
        if "out" not in seen:
            seen["out"] = first_tensor(out)

    def take_reader(module, args):
        if "out" in seen and "z" not in seen and args:
            seen["z"] = args[0]
            raise StopForward

    with forward_hooks(model, pre={reader: take_reader}, post={block: take_output}), torch.no_grad():
        try:
            call_model(model, x)
        except StopForward:
            pass
    out, z = seen.get("out"), seen.get("z")
    return isinstance(out, torch.Tensor) and isinstance(z, torch.Tensor) and out.shape == z.shape \
        and bool(torch.equal(out, z))


def stream_inputs(model: nn.Module, readers: dict[str, Reader], x: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Each reader's input on one forward pass of `model` (the dense network's streams), by consumer;
    and the pass's output."""
    seen: dict[str, torch.Tensor] = {}
    consumers_of: dict[str, list[str]] = {}
    for consumer, reader in readers.items():  # one reader may follow several consumers (parallel blocks)
        consumers_of.setdefault(reader.name, []).append(consumer)

    def take(consumers: list[str]):
        def hook(module, args):
            for consumer in consumers:
                seen.setdefault(consumer, args[0].detach())
        return hook

    pre = {name: take(consumers) for name, consumers in consumers_of.items()}
    with forward_hooks(model, pre=pre), torch.no_grad():
        out = call_model(model, x)
    return seen, out
