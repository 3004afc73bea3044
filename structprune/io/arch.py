"""Build an architecture from an `--arch` spec, and example inputs to go with it.

An arch spec is `zoo:NAME` / `models_zoo:NAME` (a models_zoo model) or `package.module:factory`
(any importable callable that returns an nn.Module); `arch_kwargs` go to the factory either way.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import models_zoo
from structprune.errors import UsageError
from structprune.io.probe import first_line

ZOO_ARCH_PREFIXES = ("zoo:", "models_zoo:")
_FACTORY_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_EXAMPLE_SEED = 0
_USER_CODE_ERRORS = (Exception, SystemExit)  # a factory that calls sys.exit() (or argparse) must not end the run


@dataclass(frozen=True)
class BuiltArch:
    """A freshly built model (eval mode) and, when the arch knows them, its example inputs."""

    model: nn.Module
    example_inputs: Any | None


def build_arch(arch: str, arch_kwargs: Mapping[str, Any]) -> BuiltArch:
    """Build the model an arch spec names.

    >>> build_arch("zoo:mlp", {}).example_inputs.shape
    torch.Size([1, 64])
    """
    for prefix in ZOO_ARCH_PREFIXES:
        if arch.startswith(prefix):
            return build_zoo_model(arch[len(prefix):], arch_kwargs)
    return _build_from_factory(arch, arch_kwargs)


def build_zoo_model(name: str, arch_kwargs: Mapping[str, Any]) -> BuiltArch:
    """`models_zoo.create(name, **arch_kwargs)` in eval mode, with batch-1 example inputs."""
    available = models_zoo.list_models()
    if name not in available:
        raise UsageError(f"unknown zoo model {name!r}; available: {', '.join(available)}")
    try:
        model = models_zoo.create(name, **arch_kwargs).eval()
        inputs = models_zoo.example_inputs(name, batch=1, seed=_EXAMPLE_SEED, **arch_kwargs)
    except Exception as exc:  # noqa: BLE001 - bad kwargs fail anywhere: TypeError, negative sizes, no memory
        raise UsageError(f"cannot build zoo model {name!r}: {first_line(exc)}; fix --arch-kwargs") from exc
    return BuiltArch(model, inputs)


def random_inputs(input_shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded batch-1 float tensor of shape (1, *input_shape).

    >>> random_inputs((3, 8, 8)).shape
    torch.Size([1, 3, 8, 8])
    """
    generator = torch.Generator().manual_seed(_EXAMPLE_SEED)
    return torch.randn((1, *input_shape), generator=generator)


def check_input_shape(input_shape: Any) -> tuple[int, ...] | None:
    """Validate an input shape (without the batch dimension): positive integers, or None."""
    if input_shape is None:
        return None
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise UsageError(
            f"input_shape={input_shape!r} is not valid; give positive sizes without the batch, e.g. (3, 32, 32) "
            "(on the command line, --input-shape takes the batch first: 1,3,32,32)"
        )
    return shape


def _build_from_factory(arch: str, arch_kwargs: Mapping[str, Any]) -> BuiltArch:
    if not _FACTORY_SPEC.match(arch):
        raise UsageError(
            f"--arch {arch!r} is not understood; use zoo:NAME or package.module:factory"
        )
    module_name, factory_name = arch.split(":", 1)
    factory = _import_factory(module_name, factory_name)
    try:
        model = factory(**arch_kwargs)
    except _USER_CODE_ERRORS as exc:  # noqa: BLE001 - user code; report it on one line
        raise UsageError(
            f"calling {arch}(**arch_kwargs) failed ({type(exc).__name__}: {first_line(exc)}); "
            "check --arch-kwargs"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"{arch} returned {type(model).__name__}, not a torch.nn.Module; fix --arch")
    return BuiltArch(model.eval(), None)


def _import_factory(module_name: str, factory_name: str) -> Callable[..., Any]:
    try:
        target: Any = importlib.import_module(module_name)
    except _USER_CODE_ERRORS as exc:  # noqa: BLE001 - ImportError or an error inside the user's module
        raise UsageError(
            f"cannot import module {module_name!r} for --arch ({type(exc).__name__}: {first_line(exc)}); "
            "check the name and that it is importable (e.g. PYTHONPATH=.)"
        ) from exc
    for attribute in factory_name.split("."):
        if not hasattr(target, attribute):
            raise UsageError(f"module {module_name!r} has no {factory_name!r}; fix --arch")
        target = getattr(target, attribute)
    if not callable(target):
        raise UsageError(f"{module_name}:{factory_name} is not callable; --arch needs a factory")
    return target
