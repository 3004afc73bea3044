"""Every private or internal torch API structprune uses, each under one name here, and the torch version
check. A torch release that moves one of them breaks this file only, and the break names what moved.

The lowest layer: it imports only torch and the standard library. Importing it checks the torch version
first (structprune reads torch.export's graph and the internals below, which older releases lack), so
`import structprune` on an older torch fails at once with one line saying what to install.

>>> torch_version_problem("2.4.1+cu121")
'structprune needs torch >= 2.13 (found 2.4.1+cu121); install it with pip install torch==2.13.0'
>>> torch_version_problem("2.13.0+cpu") is None
True
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

MIN_TORCH = (2, 13)
PINNED_TORCH = "2.13.0"  # what `make setup` installs and the tests run on


def torch_version_problem(version: str) -> str | None:
    """Why torch `version` (e.g. "2.13.0+cpu", "2.14.0.dev20260101") is too old, or None when it is new
    enough. Only major.minor count, so pre-releases and source builds of 2.13 pass; a version string
    without that form is not judged (None)."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if match is None or (int(match[1]), int(match[2])) >= MIN_TORCH:
        return None
    wanted = ".".join(map(str, MIN_TORCH))
    return f"structprune needs torch >= {wanted} (found {version}); install it with pip install torch=={PINNED_TORCH}"


def require_torch(version: str | None = None) -> None:
    """Raise ImportError with one clear line when torch `version` (default: the installed one) is too old."""
    problem = torch_version_problem(torch.__version__ if version is None else version)
    if problem is not None:
        raise ImportError(problem)


require_torch()  # before the private imports below, which an older torch may not have

from torch import nn  # noqa: E402
from torch._ops import OpOverloadPacket  # noqa: E402
from torch.fx import config as _fx_config  # noqa: E402
from torch.fx._lazy_graph_module import _use_lazy_graph_module  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

__all__ = ["MIN_TORCH", "ConvNd", "NormBase", "OpOverloadPacket", "TENSOR_PICKLE_MODULE", "TORCH_EXPORT_LOGGERS",
           "TorchDispatchMode", "child_module", "forward_pre_hooks", "lazy_graph_modules", "mha_packed_qkv",
           "no_fx_stack_traces", "refresh_rnn_flat_weights", "require_torch", "torch_version_problem"]

# OpOverloadPacket (torch._ops): the class of `torch.ops.aten.add`, the packet that groups an op's
# overloads; no public alias exists, and telling a packet from a namespace's other attributes needs it.
# TorchDispatchMode (torch.utils._python_dispatch): the hook that sees every aten op a forward runs;
# torch.utils.flop_counter is built on it, but it has no public home.
# ConvNd (nn.modules.conv._ConvNd): the base of Conv1d/2d/3d and ConvTranspose1d/2d/3d, so one shrink
# rule covers all six; torch has no public base class for them.
# NormBase (nn.modules.batchnorm._NormBase): the base of BatchNorm*d, SyncBatchNorm and InstanceNorm*d
# (num_features, running stats), likewise without a public base.
ConvNd = nn.modules.conv._ConvNd
NormBase = nn.modules.batchnorm._NormBase

# The module torch.save's pickles name to rebuild a tensor from its storage (`torch._utils._rebuild_tensor_v2`):
# plumbing a weights-only reader allows.
TENSOR_PICKLE_MODULE = "torch._utils"

# Loggers of torch.export.load (the second is torch's internal deserializer module): they print their own
# tracebacks, which io/pt2.py routes into its error instead.
TORCH_EXPORT_LOGGERS = ("torch.export", "torch._export.serde.serialize")


@contextmanager
def no_fx_stack_traces() -> Iterator[None]:
    """Wraps the internal flag torch.fx.config.do_not_emit_stack_traces: skip recording a Python stack
    trace per traced node (costly; no stage reads them). The previous value is restored on exit."""
    previous = _fx_config.do_not_emit_stack_traces
    _fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        _fx_config.do_not_emit_stack_traces = previous


@contextmanager
def lazy_graph_modules() -> Iterator[None]:
    """Wraps torch.fx._lazy_graph_module._use_lazy_graph_module(True): graph modules made inside
    generate their Python code only when first called, not after every export pass."""
    with _use_lazy_graph_module(True):
        yield


def refresh_rnn_flat_weights(rnn: nn.RNNBase) -> None:
    """Wraps nn.RNNBase._init_flat_weights(): rebuild the flat weight list an LSTM/GRU/RNN runs on after
    its weight tensors were replaced (no public method does it)."""
    rnn._init_flat_weights()


def forward_pre_hooks(module: nn.Module) -> list:
    """Wraps nn.Module._forward_pre_hooks: the forward pre-hooks registered on `module` (the legacy
    weight-norm hook is one); torch offers no public way to list them."""
    return list(module._forward_pre_hooks.values())


def mha_packed_qkv(module: nn.MultiheadAttention) -> bool:
    """Wraps nn.MultiheadAttention._qkv_same_embed_dim: are q, k and v projected by one packed
    `in_proj_weight` (True) or by separate q/k/v weights (False)?"""
    return bool(module._qkv_same_embed_dim)


def child_module(module: nn.Module, name: str) -> nn.Module | None:
    """Wraps nn.Module._modules.get(name): the registered child `name`, or None, without going through
    nn.Module.__getattr__ (which raises on a miss and also finds parameters and buffers)."""
    return module._modules.get(name)
