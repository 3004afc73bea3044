"""Dynamic dead-neuron rate (Liu et al., arXiv 2212.06145): the fraction of post-ReLU units that are
exactly zero over the data.

Notation: a *unit* is one element of a ReLU output for one sample — every spatial position of a conv
channel counts (the paper's neurons are units of the activation map). A layer's rate is
zeros / elements over every forward pass seen; the total pools all layers' counts (so a layer weighs
by its number of units). A ReLU module called twice (ResNet blocks reuse `relu`) pools both calls.

Where the activations are modules (nn.ReLU, nn.ReLU6) their outputs are hooked. A model with none
(activations called as functions) is measured at the inputs of its Conv/Linear consumers instead,
keeping only consumers whose input was never negative and is not the model's own input — a
non-negative input is what a ReLU (or a pooling of one) produces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from structprune.data.running import forward_inputs
from structprune.recover.distributed import all_reduce_sum

RELU_FAMILY = (nn.ReLU, nn.ReLU6)
CONSUMER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class DeadRate:
    """per_layer: module FQN -> dead fraction; total: pooled fraction; source: 'relu-modules',
    'consumer-inputs' or 'none' (nothing measurable)."""

    per_layer: Mapping[str, float]
    total: float
    source: str = "relu-modules"

    def to_json(self) -> dict:
        return {"per_layer": dict(self.per_layer), "total": self.total, "source": self.source}


@dataclass
class _Count:
    zeros: int = 0
    elements: int = 0
    saw_negative: bool = False


@dataclass
class DeadNeuronMeter:
    """Counts zero activations on every forward pass while open; the hooks are removed on exit, also
    when the body raises.

    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
    >>> with DeadNeuronMeter(net) as meter:
    ...     _ = net(torch.randn(8, 2))
    >>> 0.0 <= meter.result().total <= 1.0
    True
    """

    model: nn.Module
    counts: dict[str, _Count] = field(default_factory=dict, init=False)
    source: str = field(default="none", init=False)
    _handles: list = field(default_factory=list, init=False, repr=False)
    _model_inputs: set = field(default_factory=set, init=False, repr=False)

    def __enter__(self) -> "DeadNeuronMeter":
        model = getattr(self.model, "module", self.model)  # unwrap DistributedDataParallel
        relus = [(n, m) for n, m in model.named_modules() if isinstance(m, RELU_FAMILY)]
        if relus:
            self.source = "relu-modules"
            self._handles += [m.register_forward_hook(self._output_hook(n)) for n, m in relus]
        else:
            self._hook_consumers(model)
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_consumers(self, model: nn.Module) -> None:
        consumers = [(n, m) for n, m in model.named_modules() if isinstance(m, CONSUMER_TYPES)]
        self.source = "consumer-inputs" if consumers else "none"
        self._handles.append(model.register_forward_pre_hook(self._remember_model_inputs))
        self._handles += [m.register_forward_pre_hook(self._input_hook(n)) for n, m in consumers]

    def _remember_model_inputs(self, module: nn.Module, args: tuple) -> None:
        self._model_inputs = {id(a) for a in args if isinstance(a, torch.Tensor)}

    def _output_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._add(name, output)
        return hook

    def _input_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and id(args[0]) not in self._model_inputs:
                self._add(name, args[0], track_negative=True)
        return hook

    def _add(self, name: str, tensor: torch.Tensor, track_negative: bool = False) -> None:
        with torch.no_grad():
            count = self.counts.setdefault(name, _Count())
            count.zeros += int((tensor == 0).sum())
            count.elements += tensor.numel()
            if track_negative and not count.saw_negative:
                count.saw_negative = bool((tensor < 0).any())

    def reset(self) -> None:
        self.counts.clear()

    def result(self, sum_across_ranks: bool = False) -> DeadRate:
        """Rates from the counts so far; with `sum_across_ranks`, counts are summed over DDP ranks."""
        names = sorted(n for n, c in self.counts.items() if not c.saw_negative and c.elements)
        zeros = torch.tensor([float(self.counts[n].zeros) for n in names], dtype=torch.float64)
        elements = torch.tensor([float(self.counts[n].elements) for n in names], dtype=torch.float64)
        if sum_across_ranks:
            zeros, elements = all_reduce_sum(zeros), all_reduce_sum(elements)
        per_layer = {n: float(z / e) for n, z, e in zip(names, zeros, elements)}
        total = float(zeros.sum() / elements.sum()) if names else 0.0
        return DeadRate(per_layer, total, self.source if names else "none")


def dead_neuron_rate(model: nn.Module, loader: Iterable, *, max_batches: int | None = None) -> DeadRate:
    """Dead-neuron rate of `model` in eval mode over `loader` (or its first `max_batches` batches).

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = net[0].bias.fill_(-100.0)   # every unit negative before the ReLU
    >>> dead_neuron_rate(net, [(torch.randn(4, 2), torch.zeros(4))]).total
    1.0
    """
    with DeadNeuronMeter(model) as meter:
        forward_inputs(model, loader, max_batches)
    return meter.result()
