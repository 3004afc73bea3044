"""Capture a model with torch.export and map every parameter placeholder back to its module FQN."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export.graph_signature import InputKind

from structprune.compat import lazy_graph_modules, no_fx_stack_traces
from structprune.data.running import eval_mode, normalize_inputs  # the one place that runs a model
from structprune.errors import CaptureError


@dataclass(frozen=True)
class Captured:
    """An exported program plus the lookups the analysis needs.

    `state_fqn` maps a placeholder name to the FQN of the parameter or buffer it stands for;
    `user_inputs` and `constants` name the other placeholders.
    """

    program: torch.export.ExportedProgram
    args: tuple
    kwargs: dict
    state_fqn: dict[str, str]
    user_inputs: frozenset[str]
    constants: frozenset[str]

    @property
    def graph(self) -> torch.fx.Graph:
        return self.program.graph_module.graph


def capture(model: nn.Module, example_inputs: Any) -> Captured:
    """Export `model` (eval mode, strict=False) on `example_inputs`.

    >>> cap = capture(nn.Linear(4, 2), torch.randn(1, 4))
    >>> sorted(cap.state_fqn.values())
    ['bias', 'weight']
    """
    args, kwargs = normalize_inputs(example_inputs)
    with eval_mode(model), lean_export():
        try:
            program = torch.export.export(model, args, kwargs, strict=False)
        except Exception as exc:  # re-raised with context
            error = CaptureError(_explain_failure(model, exc))
            error.module = _failing_module(model, exc)
            raise error from exc
    return _index_program(program, args, kwargs)


@contextmanager
def lean_export() -> Iterator[None]:
    """torch.export without two costs whose results no stage reads (about a third of a ResNet-50
    capture): per-node Python stack traces (`node.meta["stack_trace"]`, one traceback walk per
    node) and the Python code of the intermediate graph modules (regenerated after each export
    pass; now generated only if something calls them). The traced graph, its shapes, the
    signature, and which models fail to export are unchanged: the returned program's graph module
    is still compiled eagerly. Both global flags are restored on exit.

    >>> with lean_export():
    ...     program = torch.export.export(nn.Linear(4, 2), (torch.randn(1, 4),), strict=False)
    >>> program.module()(torch.randn(1, 4)).shape
    torch.Size([1, 2])
    """
    with no_fx_stack_traces(), lazy_graph_modules():
        yield


def _index_program(program: torch.export.ExportedProgram, args: tuple, kwargs: dict) -> Captured:
    state_fqn, user_inputs, constants = {}, set(), set()
    for spec in program.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            state_fqn[name] = spec.target
        elif spec.kind == InputKind.USER_INPUT:
            user_inputs.add(name)
        elif name is not None:
            constants.add(name)
    return Captured(program, args, kwargs, state_fqn, frozenset(user_inputs), frozenset(constants))


def _explain_failure(model: nn.Module, exc: Exception) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    culprit = _failing_module(model, exc)
    where = f" in module '{culprit}'" if culprit else ""
    return (
        f"torch.export could not capture {type(model).__name__}{where}: {first_line}. "
        "Try: pass example inputs of the exact shapes and types forward() expects (dict for keyword "
        "inputs), remove data-dependent Python control flow from that module, or exclude it with "
        "ignore=['<module-fqn>*'] after wrapping it so it is not traced."
    )


def _failing_module(model: nn.Module, exc: Exception) -> str:
    """Best effort: the deepest module whose class name appears in the traceback."""
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module):
            for name, module in model.named_modules():
                if module is owner:
                    return name or type(model).__name__
    return ""
