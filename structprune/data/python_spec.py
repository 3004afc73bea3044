"""`module:function`: the user's own code builds the loaders (called with no arguments)."""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

from structprune.data.batches import split_batch
from structprune.data.bundle import DataBundle, DataOptions
from structprune.data.messages import one_line
from structprune.errors import UsageError

_CALLABLE_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def is_callable_spec(spec: str) -> bool:
    """True for `package.module:function`.

    >>> is_callable_spec("mydata.loaders:train_val"), is_callable_spec("data.npz")
    (True, False)
    """
    return bool(_CALLABLE_SPEC.match(spec))


def load_callable_bundle(spec: str, options: DataOptions) -> DataBundle:
    """Call `function()`; it returns a DataLoader (train only) or a (train, val) pair.

    The input shape comes from options, else from the first training batch; classes are unknown.
    """
    returned = _call(spec)
    train, val = _as_loaders(returned, spec)
    input_shape = options.input_shape or _first_input_shape(train, spec)
    return DataBundle(spec.rsplit(":", 1)[1], train, val, None, tuple(input_shape))


def _call(spec: str) -> Any:
    module_name, function_name = spec.split(":", 1)
    function = _import_function(module_name, function_name, spec)
    try:
        return function()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code (even sys.exit); report it on one line
        raise UsageError(f"data function {spec} failed ({one_line(exc)})") from exc


def _import_function(module_name: str, function_name: str, spec: str) -> Callable[[], Any]:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError or an error inside the user's module
        raise UsageError(
            f"cannot import module {module_name!r} for data spec {spec} ({one_line(exc)}); "
            "check the name and that it is importable (e.g. PYTHONPATH=.)"
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(
            f"module {module_name!r} has no function {function_name!r}; fix the data spec {spec}"
        )
    return function


def _as_loaders(returned: Any, spec: str) -> tuple[DataLoader, DataLoader | None]:
    if isinstance(returned, DataLoader):
        return returned, None
    pair_ok = (
        isinstance(returned, (tuple, list))
        and len(returned) == 2
        and isinstance(returned[0], DataLoader)
        and (returned[1] is None or isinstance(returned[1], DataLoader))
    )
    if not pair_ok:
        raise UsageError(
            f"data function {spec} returned {type(returned).__name__}; "
            "it must return a DataLoader or a (train, val) pair of DataLoaders"
        )
    return returned[0], returned[1]


def _first_input_shape(train: DataLoader, spec: str) -> tuple[int, ...]:
    batch = next(iter(train), None)
    if batch is None:
        raise UsageError(f"the train loader from {spec} yields no batches; check the function")
    inputs, _ = split_batch(batch)
    first = inputs if not isinstance(inputs, (dict, tuple, list)) else _first_tensor(inputs)
    return tuple(first.shape[1:])


def _first_tensor(inputs: Any) -> Any:
    values = inputs.values() if isinstance(inputs, dict) else inputs
    return next(iter(values))
