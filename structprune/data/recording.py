"""What one stage saw a model compute on calibration batches, kept for a later stage of the same job.

`compress` runs the dense model on its calibration data twice: obs measures its Hessians on a forward
pass over the first batches, and the least-squares refit after the rewrite needs the dense network's
residual stream (the input of each stream reader) on the same batches. Calibration data wrapped in
`RecordedData` carries a `Recording`: the first pass keeps the inputs of the modules it is asked to,
batch by batch, and the refit reads them instead of running the dense network again on those batches.

A recording is only read back for the model it was made on, unchanged (the same parameter and buffer
tensors at the same versions), and for a batch equal to the one recorded, tensor for tensor; it holds
at most `max_bytes` (a batch that does not fit is not kept, and nothing after it).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from structprune.data.batches import same_values

MAX_RECORD_BYTES = 1 << 30  # what a recording may hold, at most


def model_state(model: nn.Module) -> tuple:
    """What changes when any parameter or buffer of `model` is replaced or changed in place."""
    return tuple((id(t), t._version, t.data_ptr()) for t in (*model.parameters(), *model.buffers()))


@dataclass(eq=False)
class Recording:
    """Inputs of named modules on whole batches: `batches` holds (batch inputs, {module: its input}).

    >>> net, x = nn.Sequential(nn.Linear(2, 3), nn.ReLU()), torch.randn(4, 2)
    >>> recording = Recording()
    >>> recording.start(net, x)
    True
    >>> recording.keep("1", torch.ones(4, 3))
    >>> recording.finish()
    >>> recording.inputs_of(net, x.clone(), ["1"])["1"].shape, recording.inputs_of(net, x + 1, ["1"])
    (torch.Size([4, 3]), None)
    """

    max_bytes: int = MAX_RECORD_BYTES
    batches: list = field(default_factory=list)
    size: int = 0
    _state: tuple | None = None
    _pending: tuple | None = None  # (inputs, {module: its input}) of the batch being recorded
    _full: bool = False

    def start(self, model: nn.Module, x: Any) -> bool:
        """Begin recording the pass of `model` on inputs `x`; False when nothing of it will be kept."""
        self._discard_pending()
        state = model_state(model)
        if self._state is not None and state != self._state:
            self.clear()
        self._state = state
        if not self._full and self._find(x) is None:
            self._pending = (x, {})
        return self._pending is not None

    def keep(self, name: str, tensor: torch.Tensor) -> None:
        """Keep (a copy of) module `name`'s input on the batch being recorded (its first call only)."""
        if self._pending is None or name in self._pending[1]:
            return
        size = tensor.numel() * tensor.element_size()
        if self.size + size > self.max_bytes:
            self._discard_pending()
            self._full = True
            return
        self._pending[1][name] = tensor.detach().clone()
        self.size += size

    def finish(self) -> None:
        """The batch being recorded was run whole (a batch never finished is never read back)."""
        if self._pending is not None:
            self.batches.append(self._pending)
        self._pending = None

    def inputs_of(self, model: nn.Module, x: Any, names: Iterable[str]) -> dict[str, torch.Tensor] | None:
        """The recorded inputs of the modules `names` on inputs equal to `x` of `model` as recorded, or None
        unless every one of them was recorded."""
        if self._state is None or model_state(model) != self._state:
            return None
        found, names = self._find(x), list(names)
        if found is None or not all(name in found for name in names):
            return None
        return {name: found[name] for name in names}

    def clear(self) -> None:
        """Forget everything recorded."""
        self.batches, self.size, self._state, self._pending, self._full = [], 0, None, None, False

    def _find(self, x: Any) -> dict[str, torch.Tensor] | None:
        return next((found for seen, found in self.batches if same_values(seen, x)), None)

    def _discard_pending(self) -> None:
        if self._pending is not None:
            self.size -= sum(t.numel() * t.element_size() for t in self._pending[1].values())
        self._pending = None


@dataclass(frozen=True, eq=False)
class RecordedData:
    """Calibration data (any iterable of batches) that carries a `Recording` for the stages of one job."""

    data: Iterable
    recording: Recording = field(default_factory=Recording)

    def __iter__(self) -> Iterator:
        return iter(self.data)


def recording_of(data: Any) -> Recording | None:
    """The recording that calibration `data` carries (None: plain data)."""
    return data.recording if isinstance(data, RecordedData) else None
