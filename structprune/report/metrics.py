"""Model size and cost: parameter count and multiply-accumulates (MACs) for one forward pass."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.capture import normalize_inputs


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass on the example inputs (FLOPs / 2, torch's flop counter)."""
    args, kwargs = normalize_inputs(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)
