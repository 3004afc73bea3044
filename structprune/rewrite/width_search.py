"""Width attributes the evidence gets wrong: find the values a module's forward accepts, by running it.

`refresh_width_attributes` maps each integer attribute through the sizes the captured graph says changed.
Two cases defeat it: attributes that share a value by chance (timm cpubone's ConvAttention has
`num_keys = num_heads = 3`; pruning heads 3 -> 1 must not touch `num_keys`), and a value that becomes two
sizes in one module (its `o_proj_inpdim` 96 is both the per-head q|k|v block, unchanged, and the value
width, 96 -> 32), which is left alone as ambiguous. Both fail re-capture inside that module.

`search_widths` then runs the pruned model on the example inputs with every module of the failing class
trying assignments of its width attributes: each attribute (each element of a tuple) may keep its refreshed
value, go back to its old one, or take any size the graph maps the old one to; assignments with the fewest
departures from the refresh come first, at most MAX_TRIALS per module, and the first under which the
module's forward runs on its real inputs is kept. The choices go into the plan (`plan.meta[CHOICES_KEY]`,
module -> attribute -> value), so the rewrite, and `structprune apply` later, set them after the refresh;
verification then judges the whole model as always.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from itertools import combinations, islice, product
from typing import Any

import torch
from torch import nn

from structprune.data.running import call_model, eval_mode, forward_hooks
from structprune.rewrite.keep import component_keep
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.rewrite.width_attrs import (
    evidence_scope,
    qualified_name,
    scoped_size_changes,
    size_targets,
    width_snapshot,
)

CHOICES_KEY = "width_attribute_choices"  # plan.meta: module -> attribute -> value, set after the refresh
MAX_TRIALS = 256  # assignments tried per module

Slot = tuple[str, str, int | None, tuple]  # (module, attribute, element of a tuple or None, values: refreshed first)


def chosen_widths(plan) -> dict[str, dict[str, Any]]:
    """The width attribute choices a plan carries (see module docstring)."""
    return {name: dict(attrs) for name, attrs in (plan.meta.get(CHOICES_KEY) or {}).items()}


def apply_width_choices(pruned: nn.Module, choices: Mapping[str, Mapping[str, Any]]) -> None:
    """Set each chosen attribute (a list from JSON becomes the attribute's own sequence type)."""
    for name, attrs in choices.items():
        module = pruned.get_submodule(name)
        for attr, value in attrs.items():
            current = getattr(module, attr, None)
            setattr(module, attr, type(current)(value) if isinstance(current, (tuple, list)) else value)


def width_slots(module: str, old: Mapping[str, Any], current: Mapping[str, Any],
                targets: Mapping[int, set[int]]) -> list[Slot]:
    """The attributes (and tuple elements) of `module` with more than one value to try: the refreshed
    value first, then the old one, then every size `targets` maps the old one to.

    >>> width_slots("attn", {"heads": 3, "keys": 3, "width": 96}, {"heads": 1, "keys": 1, "width": 96},
    ...             {3: {1}, 96: {96, 32}})
    [('attn', 'heads', None, (1, 3)), ('attn', 'keys', None, (1, 3)), ('attn', 'width', None, (96, 32))]
    """
    slots: list[Slot] = []
    for attr, was in old.items():
        now = current.get(attr, was)
        sequence = isinstance(was, (tuple, list)) and isinstance(now, (tuple, list)) and len(was) == len(now)
        for index, (before, after) in enumerate(zip(was, now) if sequence else [(was, now)]):
            values = tuple(dict.fromkeys((after, before, *sorted(targets.get(before, ())))))
            if len(values) > 1:
                slots.append((module, attr, index if sequence else None, values))
    return slots


def assignments(slots: list[Slot]) -> Iterator[dict[int, Any]]:
    """Slot index -> value, fewest departures from the refreshed values first (the refresh itself first).

    >>> list(assignments([("m", "a", None, (1, 3)), ("m", "b", None, (96, 32))]))
    [{}, {0: 3}, {1: 32}, {0: 3, 1: 32}]
    """
    for departures in range(len(slots) + 1):
        for chosen in combinations(range(len(slots)), departures):
            for values in product(*(slots[i][3][1:] for i in chosen)):
                yield dict(zip(chosen, values))


def choices_for_class(model: nn.Module, pruned: nn.Module, example_inputs: Any, graph, plan, class_name: str,
                      shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> dict[str, dict[str, Any]]:
    """`search_widths` over every module of class `class_name` (a qualified name) that has width
    attributes: their values in `model` (old), in `pruned` (refreshed), the sizes `graph` maps them to under
    `plan`, and the sizes the reading module's inputs have in `model` and in `pruned` (timm's SelectiveKernel
    splits its input by `self.in_channels // self.num_paths`: its input's width, 64 -> 32). Each is tried
    while the module whose forward reads them runs (itself, or the ancestor that calls a method of it:
    `evidence_scope`)."""
    tiers = scoped_size_changes(graph, component_keep(graph, plan))
    modules = dict(pruned.named_modules())
    entries: dict[str, list[tuple]] = {}
    for name, old in width_snapshot(model, shrink_rules).items():
        if name not in modules or qualified_name(type(modules[name])) != class_name:
            continue
        current = {attr: getattr(modules[name], attr, value) for attr, value in old.items()}
        entries.setdefault(evidence_scope(tiers, name), []).append((name, old, current, size_targets(tiers, name)))
    dense_inputs = _input_shapes(model, example_inputs, list(entries))
    builders = {runner: partial(_slots_at_call, found, dense_inputs.get(runner, ()))
                for runner, found in entries.items()}
    return search_widths(pruned, example_inputs, builders)


def _slots_at_call(entries: list[tuple], dense_inputs: tuple, args: tuple) -> list[Slot]:
    """The slots of a runner's modules, with the sizes its tensor inputs had dense (`dense_inputs`) and
    have now (`args`) as further targets."""
    now = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    read: dict[int, set[int]] = {}
    for before, after in zip(dense_inputs, now):
        for old, new in zip(before, after) if len(before) == len(after) else ():
            read.setdefault(old, set()).add(new)
    return [slot for name, old, current, targets in entries
            for slot in width_slots(name, old, current, {size: targets.get(size, set()) | read.get(size, set())
                                                         for size in {*targets, *read}})]


def _input_shapes(model: nn.Module, example_inputs: Any, names: list[str]) -> dict[str, tuple]:
    """Per module in `names`, the shapes of the tensors its first call reads, on `model` run on the inputs."""
    seen: dict[str, tuple] = {}

    def take(name: str):
        def hook(module, args):
            seen.setdefault(name, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        return hook

    with forward_hooks(model, pre={name: take(name) for name in names}), eval_mode(model), torch.no_grad():
        call_model(model, example_inputs)
    return seen


def search_widths(pruned: nn.Module, example_inputs: Any,
                  slots_by_runner: Mapping[str, Callable[[tuple], list[Slot]]]) -> dict[str, dict[str, Any]]:
    """Per module, the attributes whose value must change for the forward of the module that reads them
    (`slots_by_runner`: runner module -> the slots it reads, given its call's arguments) to run on its real
    inputs (the pruned model run on `example_inputs`); modules whose refresh already runs, or that no
    assignment makes run, are absent. The model is left as it was."""
    found: dict[tuple[str, str], Any] = {}
    starts: list[dict] = []
    runners = {name: pruned.get_submodule(name) for name in slots_by_runner}
    for name, runner in runners.items():
        runner.forward = _trying(pruned, runner, slots_by_runner[name], found, starts)
    try:
        with eval_mode(pruned), torch.no_grad():
            call_model(pruned, example_inputs)
    except Exception:  # noqa: BLE001 — a module no assignment fixes, or a failure elsewhere: keep what was found
        pass
    finally:
        for runner in runners.values():
            del runner.forward
        for start in starts:
            _assign(pruned, start)
    changed: dict[str, dict[str, Any]] = {}
    for (module, attr), value in found.items():
        changed.setdefault(module, {})[attr] = value
    return changed


def _trying(pruned: nn.Module, runner: nn.Module, build: Callable[[tuple], list[Slot]], found: dict,
            starts: list):
    """The runner's forward that, on its first call, tries the assignments until one runs, and records
    in `found` the (module, attribute) values that changed (`starts`: the values to restore after)."""
    forward = type(runner).forward.__get__(runner)
    state = {"done": False}

    def trying(*args, **kwargs):
        if state["done"]:
            return forward(*args, **kwargs)
        state["done"] = True
        slots = build(args)
        start = _values(pruned, slots)
        starts.append(start)
        for assignment in islice(assignments(slots), MAX_TRIALS):
            values = _with(start, slots, assignment)
            _assign(pruned, values)
            try:
                out = forward(*args, **kwargs)
            except Exception:  # noqa: BLE001 — this assignment does not run; try the next
                continue
            found.update({key: value for key, value in values.items() if value != start[key]})
            return out
        _assign(pruned, start)
        return forward(*args, **kwargs)  # raises as the refresh did
    return trying


def _values(pruned: nn.Module, slots: list[Slot]) -> dict[tuple[str, str], Any]:
    return {(module, attr): getattr(pruned.get_submodule(module), attr) for module, attr, _, _ in slots}


def _with(start: dict, slots: list[Slot], assignment: dict[int, Any]) -> dict[tuple[str, str], Any]:
    values = {key: list(v) if isinstance(v, (tuple, list)) else v for key, v in start.items()}
    for i, value in assignment.items():
        module, attr, index, _ = slots[i]
        if index is None:
            values[(module, attr)] = value
        else:
            values[(module, attr)][index] = value
    return {key: type(start[key])(v) if isinstance(start[key], (tuple, list)) else v for key, v in values.items()}


def _assign(pruned: nn.Module, values: Mapping[tuple[str, str], Any]) -> None:
    for (module, attr), value in values.items():
        setattr(pruned.get_submodule(module), attr, value)
