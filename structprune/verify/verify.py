"""Verify a rewrite. Checks: the pruned model re-captures and runs with the original output shapes;
every pruned tensor has the size the plan implies; masking equivalence — the dense model with dropped
channels zeroed on the consumer side gives the pruned model's output — on every group where that is
exact (groups mixed by a normalisation are checked by shapes only).

The re-capture is a full torch.export of the pruned model, the costliest check (a third of a ResNet-50
compress). `recapture=False` skips it; every other check still runs, and the pruned model's MACs are
then counted on the forward the output check runs anyway.

Memory: the masking check's two reference forwards (the masked dense model, and the model pruned in
exact groups only when the plan also prunes inexact groups) read their masked or sliced tensors call
by call (`ReplacedOnRead`), so verification holds no copy of the model's weights beyond the pruned
model itself."""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from structprune.capture import capture
from structprune.data.running import eval_mode, eval_outputs, flat_outputs, normalize_inputs
from structprune.graph.channel_graph import ChannelGraph
from structprune.graph.cost import MacCounter, macs_of
from structprune.ir.roles import ROLE_IN
from structprune.rewrite import ReplacedOnRead, component_keep, kept_indices, rewrite_model, sliced_on_read
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.selection.plan import Plan, dropped_mask
from structprune.verify.locate import ModelRunError, run_locating

RTOL = 1e-4


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """All checks of one rewrite; `ok` only if every check passed."""

    checks: tuple[Check, ...]
    masking_error: float | None
    exact_groups: tuple[str, ...]
    inexact_groups: tuple[str, ...]
    pruned_capture: object = field(default=None, repr=False, compare=False)
    pruned_macs: int | None = None  # from the re-capture, or counted on the output check's forward
    failing_groups: tuple[tuple[str, str], ...] = ()  # (group id, what failed) where a failure was localised
    failing_module: str | None = None  # the module a failed run or re-capture names ("" the root); else None

    @property
    def recaptured(self) -> bool:
        return any(c.name == "recapture" for c in self.checks)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def to_json(self) -> dict:
        return {"ok": self.ok, "recapture": self.recaptured, "checks": [c.__dict__ for c in self.checks],
                "masking_error": self.masking_error if self.masking_error is None or
                math.isfinite(self.masking_error) else None,
                "exact_groups": list(self.exact_groups), "inexact_groups": list(self.inexact_groups)}


def verify_rewrite(model: nn.Module, pruned: nn.Module, example_inputs: Any, graph: ChannelGraph,
                   plan: Plan, *, recapture: bool = True, shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> Verdict:
    """Run every check; never raises for a failed check (the caller decides). `recapture=False` skips
    the torch.export re-capture (see the module docstring). `shrink_rules`: the ones `pruned` was
    rewritten with; the models pruned in some groups only, that the masking check builds, use them too."""
    pruned_groups = set(plan.pruned_groups())
    exact = tuple(g.id for g in graph.groups if g.id in pruned_groups and g.exact)
    inexact = tuple(sorted(pruned_groups - set(exact)))
    checks, recaptured = [], None
    failing: list[tuple[str, str]] = []
    module = None
    if recapture:
        capture_check, recaptured, module = _check_capture(pruned, example_inputs)
        module = None if capture_check.ok else _submodule_path(pruned, module)
        checks.append(capture_check)
        failing += [(g, f"re-capture failed in module '{module}' ({kind})")
                    for g, kind in _groups_in_module(model, graph, plan, module or "")]
    with nullcontext() if recapture else MacCounter() as counter:
        output_check, pruned_out, run_failed_in = _check_outputs(_output_shapes(graph), pruned, example_inputs)
    if not module and run_failed_in:  # re-capture named no module below the root; the forward does
        module = run_failed_in
        failing += [(g, f"fails to run in module '{module}' ({kind})")
                    for g, kind in _groups_in_module(model, graph, plan, module)]
    structural = [output_check, _check_sizes(model, pruned, graph, plan)]
    checks += structural
    error = None
    if exact and all(c.ok for c in structural):
        check, error, culprits, failed_in = _check_masking(model, pruned_out, example_inputs, graph, plan, exact,
                                                           shrink_rules)
        checks.append(check)
        failing += [(g, "masking equivalence") for g in culprits]
        failing += [(g, f"pruned alone, it fails in module '{failed_in}' ({kind})")
                    for g, kind in _groups_in_module(model, graph, plan, failed_in or "")]
        module = module if module is not None else failed_in
    if not failing and not all(c.ok for c in checks):
        failing = _groups_on_assumptions(graph, plan)
    return Verdict(tuple(checks), error, exact, inexact, recaptured, _pruned_macs(recaptured, counter, output_check),
                   tuple(failing), module)


def _groups_on_assumptions(graph: ChannelGraph, plan: Plan) -> list[tuple[str, str]]:
    """(group, why) for the pruned groups that rely on an assumption (a split size that must follow the
    width): the suspects when a failure names no module below the root."""
    pruned = set(plan.pruned_groups())
    return [(g.id, f"{g.assumptions[0]}: not so in the model's code") for g in graph.groups
            if g.id in pruned and g.assumptions]


def _groups_in_module(model: nn.Module, graph: ChannelGraph, plan: Plan, module: str) -> list[tuple[str, str]]:
    """(group, how) for the pruned groups with a member parameter inside `module` or inside another
    module of the same class (code that failed once fails in every copy of itself); for one of torch's
    own layers, the groups of its input axes in that module alone; empty for no module or the root."""
    try:
        culprit = model.get_submodule(module) if module else None
    except AttributeError:
        culprit = None
    if culprit is None or culprit is model:
        return []
    pruned = set(plan.pruned_groups())
    if type(culprit).__module__.startswith("torch."):  # torch's layers are right: what they were fed is not
        return [(g.id, "its input") for g in graph.groups if g.id in pruned
                and any(m.role == ROLE_IN and m.fqn.startswith(f"{module}.") for m in g.members)]
    kind = type(culprit).__name__
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if name and type(m) is type(culprit))
    return [(g.id, f"every {kind}") for g in graph.groups
            if g.id in pruned and any(f.startswith(prefixes) for f in g.member_fqns())]


def _pruned_macs(recaptured, counter: MacCounter | None, output_check: Check) -> int | None:
    if recaptured is not None:
        return macs_of(recaptured)
    return counter.total if counter is not None and output_check.ok else None


def _submodule_path(model: nn.Module, module: str) -> str:
    """A capture error's module as a path: "" for the root, which the error names by its class."""
    return "" if module == type(model).__name__ and not hasattr(model, module) else module


def _check_capture(pruned: nn.Module, example_inputs: Any):
    """Re-capture the pruned model with the analysis' own `capture`: a full torch.export (lean only in
    what it records, see `lean_export`), so the check fails exactly where exporting it would."""
    try:
        recaptured = capture(pruned, example_inputs)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        return Check("recapture", False, str(exc).splitlines()[0][:300]), None, getattr(exc, "module", "")
    return Check("recapture", True), recaptured, ""


def _output_shapes(graph: ChannelGraph) -> list[tuple[int, ...]]:
    """The dense model's output shapes, as recorded when it was captured (no forward pass needed)."""
    output = next(n for n in graph.captured.graph.nodes if n.op == "output")
    vals = [getattr(a, "meta", {}).get("val") for a in pytree.tree_leaves(output.args)]
    return [tuple(v.shape) for v in vals if isinstance(v, torch.Tensor)]


def _check_outputs(want: list[tuple[int, ...]], pruned: nn.Module, example_inputs: Any):
    """(check, the pruned outputs or None, the module a failed run failed in or None)."""
    try:
        pruned_out = run_locating(pruned, partial(eval_outputs, pruned, example_inputs))
    except ModelRunError as exc:
        return Check("runs", False, f"pruned model failed to run: {exc.message}"), None, exc.module
    got = [tuple(t.shape) for t in pruned_out]
    if want != got:
        return Check("output_shapes", False, f"expected {want}, got {got}"), None, None
    if not all(bool(torch.isfinite(t).all()) for t in pruned_out if t.is_floating_point()):
        return Check("output_shapes", False, "pruned model produced non-finite values"), None, None
    return Check("output_shapes", True, f"{got}"), pruned_out, None


def _check_sizes(model: nn.Module, pruned: nn.Module, graph: ChannelGraph, plan: Plan) -> Check:
    indices = kept_indices(graph, component_keep(graph, plan))
    dense_state, pruned_state = model.state_dict(keep_vars=True), pruned.state_dict()
    canonical = _canonical_names(dense_state, indices)
    for fqn, tensor in dense_state.items():
        expected = list(tensor.shape)
        for axis, idx in indices.get(canonical.get(fqn, fqn), {}).items():
            expected[axis] = len(idx)
        if fqn not in pruned_state or list(pruned_state[fqn].shape) != expected:
            got = list(pruned_state[fqn].shape) if fqn in pruned_state else "missing"
            return Check("sizes", False, f"'{fqn}': expected shape {expected}, got {got}")
    return Check("sizes", True, f"{len(indices)} tensors sliced")


def _canonical_names(state: dict, indices: dict) -> dict[str, str]:
    """Alias name -> the name the analysis used, for tensors shared under several names (tied weights)."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in state.items():
        by_tensor.setdefault(id(tensor), []).append(name)
    return {alias: known for names in by_tensor.values() for known in names if known in indices for alias in names}


def _check_masking(model, pruned_out, example_inputs, graph, plan, exact, shrink_rules: Mapping):
    """(check, error, culprit groups, the module the exact-only model failed in or None)."""
    try:
        error = _masking_error(model, pruned_out, example_inputs, graph, plan, exact, shrink_rules)
    except ModelRunError as failed:
        return Check("masking_equivalence", False, "the model pruned in its exact groups alone does not run "
                     f"{failed}"), math.inf, [], failed.module
    if error <= RTOL:
        passed = Check("masking_equivalence", True, f"relative error {error:.2e} over {len(exact)} groups")
        return passed, error, [], None
    culprits = [g for g in exact[:20] if _alone_error(model, example_inputs, graph, plan, g, shrink_rules) > RTOL]
    names = ", ".join(culprits) or "the combination of groups"
    return Check("masking_equivalence", False,
                 f"relative error {error:.2e} > {RTOL}; failing group(s): {names}"), error, culprits, None


def _alone_error(model, example_inputs, graph, plan, group: str, shrink_rules: Mapping) -> float:
    """The masking error with only `group` pruned; infinite when the model pruned in that group alone
    does not run (its widths only agree together with other groups')."""
    try:
        return _masking_error(model, None, example_inputs, graph, plan, (group,), shrink_rules)
    except Exception:  # noqa: BLE001 - a group that cannot be checked alone is a culprit
        return math.inf


def _masking_error(model, pruned_out, example_inputs, graph, plan, exact, shrink_rules: Mapping) -> float:
    """Relative error between the masked dense model and the model pruned in `exact` groups only
    (`pruned_out`, the full pruned model's outputs, is reused when the plan prunes nothing else).
    An error over RTOL is measured again against materialised masked copies before it counts: a
    forward that reads weights outside torch calls (TorchScript) sees them unmasked on read."""
    restricted = Plan({g: (plan.keep[g] if g in exact else tuple(range(plan.sizes[g]))) for g in plan.keep},
                      plan.sizes, plan.meta)
    if pruned_out is None or restricted != plan:
        pruned_out = _pruned_outputs(model, example_inputs, graph, restricted, shrink_rules)
    error = _relative_error(_masked_outputs(model, example_inputs, graph, restricted, exact), pruned_out)
    if error > RTOL:
        error = _relative_error(_masked_outputs(model, example_inputs, graph, restricted, exact, on_read=False),
                                pruned_out)
    return error


def _relative_error(ref_out: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    """Worst |reference - pruned| / (1 + max |reference|) over the outputs; infinite when any
    difference is not finite (a NaN must fail the check, not vanish inside max())."""
    worst = 0.0
    for r, o in zip(ref_out, out):
        if r.is_floating_point() and r.numel():
            difference = (r - o).abs()
            if not bool(torch.isfinite(difference).all()):
                return math.inf
            worst = max(worst, float(difference.max()) / (1.0 + float(r.abs().max())))
    return worst


def _pruned_outputs(model: nn.Module, example_inputs: Any, graph: ChannelGraph, plan: Plan,
                    shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> list[torch.Tensor]:
    """Outputs of `model` pruned by `plan` (rewritten with `shrink_rules`), without holding the pruned
    copy's sliced tensors (`sliced_on_read`). If that run fails or gives non-finite outputs (a read that
    bypassed torch calls met a NaN stand-in), a built copy runs instead, its unchanged tensors shared
    with `model`."""
    try:
        with sliced_on_read(model, graph, plan, shrink_rules=shrink_rules) as pruned:
            out = eval_outputs(pruned, example_inputs)
    except Exception:  # noqa: BLE001 - the built copy below fails the same way if the rewrite is at fault
        out = None
    if out is not None and all(bool(torch.isfinite(t).all()) for t in out if t.is_floating_point() or t.is_complex()):
        return out
    pruned = rewrite_model(model, graph, plan, share_unchanged=True, shrink_rules=shrink_rules)
    return run_locating(pruned, partial(eval_outputs, pruned, example_inputs))


def _masked_outputs(model: nn.Module, example_inputs: Any, graph: ChannelGraph, plan: Plan,
                    exact, *, on_read: bool = True) -> list[torch.Tensor]:
    """Eval-mode outputs of the dense model with the dropped channels zeroed on the consumer side.

    The caller's model runs as it is; each torch call that reads a masked tensor gets a zeroed copy
    made for that call only (`ReplacedOnRead`). So no masked copy of every consumer weight (a third of
    a ConvNeXt's bytes) is ever held, tied names share one mask, and the model is never written to.
    `on_read=False` swaps in all masked copies at once instead (`torch.func.functional_call`).
    """
    args, kwargs = normalize_inputs(example_inputs)
    with eval_mode(model), torch.no_grad():
        if on_read:
            masks = {key: (tensor, partial(_zeroed, tensor, axes))
                     for key, (tensor, axes) in _consumer_masks(model, graph, plan, exact).items()}
            with ReplacedOnRead(masks):
                out = model(*args, **kwargs)
        else:
            masked = _masked_state(model, graph, plan, exact)
            out = torch.func.functional_call(model, masked, args, kwargs, tie_weights=True, strict=False)
    return flat_outputs(out)


def _consumer_masks(model: nn.Module, graph: ChannelGraph, plan: Plan,
                    exact) -> dict[int, tuple[torch.Tensor, dict[int, np.ndarray]]]:
    """id(tensor) -> (tensor, keep mask per axis) for every parameter/buffer that loses a consumer-side
    (input) channel; a tensor shared under several names is one entry, with every group's zeros in it."""
    named = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    masks: dict[int, tuple[torch.Tensor, dict[int, np.ndarray]]] = {}
    for fqn, axis, dropped in _dropped_inputs(graph, plan, exact):
        if fqn in named:
            tensor = named[fqn]
            axes = masks.setdefault(id(tensor), (tensor, {}))[1]
            axes[axis] = axes.get(axis, np.ones(tensor.shape[axis], dtype=bool)) & ~dropped
    return masks


def _masked_state(model: nn.Module, graph: ChannelGraph, plan: Plan, exact) -> dict[str, torch.Tensor]:
    """Name -> zeroed copy of each masked tensor, all at once (every name of a shared tensor maps to the
    same copy, with every group's zeros in it)."""
    copies = {key: _zeroed(tensor, axes) for key, (tensor, axes) in _consumer_masks(model, graph, plan, exact).items()}
    named = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    return {name: copies[id(tensor)] for name, tensor in named.items() if id(tensor) in copies}


def _zeroed(tensor: torch.Tensor, keep_by_axis: dict[int, np.ndarray]) -> torch.Tensor:
    """A copy of `tensor` with zeros wherever an axis' keep mask is False (one `torch.where` per axis)."""
    out = tensor.detach()
    for axis, keep in keep_by_axis.items():
        shape = [1] * out.dim()
        shape[axis] = -1
        out = torch.where(torch.from_numpy(keep).view(shape), out, torch.zeros((), dtype=out.dtype))
    return out


def _dropped_inputs(graph: ChannelGraph, plan: Plan, exact) -> Iterator[tuple[str, int, np.ndarray]]:
    """(fqn, axis, dropped) for every consumer-side axis the `exact` groups drop positions of;
    `dropped[p]` says whether position p of the axis is dropped."""
    groups = {g.id: g for g in graph.groups}
    for group in (groups[g] for g in exact):
        dropped_channel = np.append(dropped_mask(group.size, plan.keep[group.id]), False)  # [-1]: other groups
        for member in (m for m in group.members if m.role == ROLE_IN):
            dropped = dropped_channel[member.positions]
            if dropped.any():
                yield member.fqn, member.axis, dropped
