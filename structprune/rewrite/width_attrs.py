"""Width attributes: plain integers (or tuples of them) that a module's `forward` reads, such as
torchvision ViT's `hidden_dim`, a layer scale's stored shape or `nn.Unflatten`'s `unflattened_size`,
refreshed after the rewrite by a general search rather than a list of names.

The captured graph says which sizes changed where: every node records the modules it ran in
(`nn_module_stack`), and the analysis gives each value's old and new shape. For a module M the
evidence comes in four tiers, strongest first: the literal sizes M's own nodes pass (a view's sizes,
an unflatten's: on a channel dim they change, on a data dim they stay), the channel dims of the values
M's own nodes compute, then the literal sizes and the channel dims of every node inside M (so a
partition size that a child reshapes by, equal to a head count by chance, is seen as both and left
alone, as in torchvision MaxViT's grid attention). An integer attribute of M equal
to a size the first tier that knows it maps one way only takes the new size; a tuple or list is
mapped element by element. A size that becomes two different things there is ambiguous and left
alone; so is a size that only the inner tiers change while it is also a data size (a kernel, a
sequence, a spatial extent) of a value inside M: torchvision vit_l_16's `patch_size` 16 is a head
count inside its attention and the patch kernel inside `conv_proj`, and stays 16. A list passed whole
as a split's piece sizes is mapped piece by piece instead (rewrite/size_lists.py). Verification
proves the result: a wrong or missing refresh fails re-capture in that module, and its groups are
then kept whole.

torch's own layers, and every class the shrink rules in use know (the defaults, or a user's
`shrink_rules=` with their own layers), are left to those rules (their attributes are known exactly),
except the few with a width attribute the table lacks (`BUILTIN_WIDTHS`). Attributes the shrink rules
or the attention refresh already changed are not touched again.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

import numpy as np
from torch import nn

from structprune.graph.channel_graph import ChannelGraph
from structprune.ir.abstract import Abstract
from structprune.ir.ops import op_base
from structprune.rewrite.keep import new_shape
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.rewrite.size_lists import by_module, mapped_size_list, size_list_changes

BUILTIN_WIDTHS = MappingProxyType({nn.Unflatten: ("unflattened_size",)})
AMBIGUOUS = -1
NODE_TIERS = 4  # the tiers of `scoped_size_changes` that nodes run in a module fill (the fifth: weights' data sizes)

SizeMap = dict[int, set[int]]  # old dim size -> the sizes it becomes


def scoped_size_changes(graph: ChannelGraph, keep: np.ndarray) -> list[dict[str, SizeMap]]:
    """Per module FQN, old -> new sizes by strength of evidence: the literal sizes its own nodes pass
    (view/reshape/expand/unflatten sizes and split_with_sizes pieces: on a channel dim they change, on a
    data dim they stay), the
    channel dims of the values its own nodes compute, the same two for every node inside it, and last
    the data (non-channel) dims of the values inside it (a veto on the inner tiers, see `_mapped_size`)."""
    tiers: list[dict[str, SizeMap]] = [defaultdict(lambda: defaultdict(set)) for _ in range(5)]
    literals, own, literals_within, within, data_within = tiers
    channel_axes = {(m.fqn, m.axis) for group in graph.groups for m in group.members}
    for node in graph.captured.graph.nodes:
        stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
        value = graph.values.get(node.name)
        if node.name in graph.captured.state_fqn:  # a weight: its data sizes count inside every owner
            fqn = graph.captured.state_fqn[node.name]
            for path in _owners(fqn):
                for size in _weight_data_sizes(node, value, fqn, channel_axes):
                    data_within[path][size].add(size)
        if not stack or value is None:
            continue
        for part in _abstracts(value):
            shape = new_shape(part, keep, graph.component)
            pairs = _literal_sizes(node, part, shape) if part is value else ()  # a single output lines up
            for old, new in (*pairs, *_split_sizes(node, value, part, shape)):
                literals[stack[-1]][old].add(new)
                for path in stack:
                    literals_within[path][old].add(new)
            for (old, new), chan in zip(zip(part.shape, shape), part.chan):
                if chan:
                    own[stack[-1]][old].add(new)
                for path in stack:
                    (within if chan else data_within)[path][old].add(new)
    return tiers


def evidence_scope(tiers: list[dict[str, SizeMap]], name: str) -> str:
    """The module whose nodes speak for `name`: itself, or, where none of the graph's nodes ran in it (its
    parent calls a method of it, as timm's attention calls `rel_pos.get_bias()`), its nearest ancestor that
    has some. Only the width search reads it (rewrite/width_search.py): refreshing by an ancestor's evidence
    would also change modules that hold a size by chance (a rotary embedding's cached length)."""
    return next((scope for scope in enclosing_paths(name) if any(scope in tier for tier in tiers[:NODE_TIERS])), "")


def enclosing_paths(path: str) -> Iterator[str]:
    """The module path `path`, then each enclosing module's, nearest first, ending with the root ("").

    >>> list(enclosing_paths("blocks.0.attn"))
    ['blocks.0.attn', 'blocks.0', 'blocks', '']
    """
    parts = path.split(".") if path else []
    for end in range(len(parts), -1, -1):
        yield ".".join(parts[:end])


def size_targets(tiers: list[dict[str, SizeMap]], name: str) -> SizeMap:
    """Every size that any tier of `scoped_size_changes` maps an old size to inside module `name` (or the
    module that speaks for it, `evidence_scope`)."""
    merged: SizeMap = defaultdict(set)
    scope = evidence_scope(tiers, name)
    for tier in tiers:
        for old, new in tier.get(scope, {}).items():
            merged[old] |= new
    return merged


def _weight_data_sizes(node, value, fqn: str, channel_axes: set) -> list[int]:
    """The sizes of a parameter's or buffer's non-channel dims (a conv kernel's): from its abstract value,
    else every axis no group lists as a member."""
    if value is not None:
        return [size for size, chan in zip(value.shape, value.chan) if not chan]
    shape = getattr(node.meta.get("val"), "shape", ())
    return [size for axis, size in enumerate(shape) if (fqn, axis) not in channel_axes]


def _owners(fqn: str) -> list[str]:
    """The module paths that hold parameter or buffer `fqn`: the root, then each enclosing module."""
    parts = fqn.split(".")[:-1]
    return [""] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


_SIZE_LIST_ARG = {"view": 1, "reshape": 1, "_unsafe_view": 1, "expand": 1, "new_zeros": 1, "new_ones": 1,
                  "new_empty": 1, "new_full": 1, "zeros": 0, "ones": 0, "empty": 0, "full": 0}


def _literal_sizes(node, value: Abstract, shape: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """(literal, its size after pruning) for each literal size argument that lines up with a dim of
    the node's output."""
    op = op_base(node.target)
    if op == "unflatten" and len(node.args) > 2:
        sizes = node.args[2]
        dim = node.args[1] % (value.ndim - len(sizes) + 1)  # a dim of the input, which has fewer
        dims = range(dim, dim + len(sizes))
    elif op in _SIZE_LIST_ARG and len(node.args) > _SIZE_LIST_ARG[op]:
        sizes, dims = node.args[_SIZE_LIST_ARG[op]], range(value.ndim)
    else:
        return
    if not isinstance(sizes, (list, tuple)) or len(sizes) != len(dims):
        return
    for literal, d in zip(sizes, dims):
        if _is_int(literal) and literal == value.shape[d]:
            yield literal, shape[d] if value.chan[d] else literal


def _split_sizes(node, value, part: Abstract, shape: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """(literal, its size after pruning) for piece `part` of a split_with_sizes: the piece's own size
    argument (EfficientViM's `split(h, [self.d_inner, self.d_inner])`, where d_inner equals the module's
    unpruned input width too)."""
    if op_base(node.target) != "split_with_sizes" or not isinstance(value, tuple) or part not in value:
        return
    sizes = node.args[1] if len(node.args) > 1 else None
    if not isinstance(sizes, (list, tuple)) or len(sizes) != len(value):
        return
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % part.ndim
    literal = sizes[value.index(part)]
    if _is_int(literal) and literal == part.shape[dim]:
        yield literal, shape[dim] if part.chan[dim] else literal


def _abstracts(value) -> Iterator[Abstract]:
    if isinstance(value, Abstract):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _abstracts(item)


AS_IS_KEY = "width_attributes_as_is"  # plan.meta: classes whose width attributes the rewrite leaves alone


def qualified_name(cls: type) -> str:
    """A class's importable name, as plans record classes."""
    return f"{cls.__module__}.{cls.__qualname__}"


def kept_as_is(plan) -> frozenset[str]:
    """The classes whose width attributes a plan's rewrite leaves as they were (verification rejected
    their refresh once: `x.split(self.expand_chs // 2)` holds half of a width, not a width)."""
    return frozenset(plan.meta.get(AS_IS_KEY, ()))


def refresh_width_attributes(pruned: nn.Module, originals: dict[str, dict], graph: ChannelGraph,
                             keep: np.ndarray, managed: dict[str, Iterable[str]],
                             as_is: frozenset[str] = frozenset()) -> None:
    """Set every width attribute of `pruned`'s modules that a pruned size determines. `originals`:
    each module's attributes before any refresh (`width_snapshot`); `managed`: per module, the
    attribute names another refresh owns (the attention heads); `as_is`: classes left alone."""
    tiers, lists = scoped_size_changes(graph, keep), by_module(pruned, size_list_changes(graph, keep))
    for name, module in pruned.named_modules():
        if qualified_name(type(module)) in as_is:
            continue
        skip = set(managed.get(name, ()))
        for attr, old in originals.get(name, {}).items():
            if attr in skip or getattr(module, attr, None) != old:  # another refresh set it already
                continue
            new = mapped_size_list(old, lists.get(id(module), {}))  # a split's piece sizes, piece by piece
            if new is None:
                new = _mapped(old, [tier.get(name, {}) for tier in tiers])
            if new is not None and new != old:
                setattr(module, attr, new)


def width_snapshot(model: nn.Module, shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> dict[str, dict]:
    """Per module FQN, its candidate width attributes and their values (ints, tuples/lists of ints);
    the classes `shrink_rules` knows have none beyond BUILTIN_WIDTHS (their rule refreshes them)."""
    return {name: attrs for name, module in model.named_modules() if (attrs := _candidates(module, shrink_rules))}


def _candidates(module: nn.Module, shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> dict:
    names = _builtin_widths(module, shrink_rules)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("__")]
    return {n: getattr(module, n) for n in names if _is_width(getattr(module, n, None))}


def _builtin_widths(module: nn.Module, shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> tuple[str, ...] | None:
    """The width attributes of a torch layer or of a class `shrink_rules` knows (none unless listed in
    BUILTIN_WIDTHS); None for other code, which is searched."""
    listed = next((names for cls, names in BUILTIN_WIDTHS.items() if isinstance(module, cls)), None)
    if listed is not None:
        return listed
    known = type(module).__module__.startswith("torch.") or isinstance(module, tuple(shrink_rules))
    return () if known else None


def _is_width(value) -> bool:
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_is_int(v) for v in value)
    return _is_int(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapped(value, scopes: list[SizeMap]):
    """The refreshed value, or None when a part of it is ambiguous."""
    if isinstance(value, (tuple, list)):
        parts = [_mapped_size(v, scopes) for v in value]
        return None if AMBIGUOUS in parts else type(value)(parts)
    size = _mapped_size(value, scopes)
    return None if size == AMBIGUOUS else size


def _mapped_size(size: int, scopes: list[SizeMap]) -> int:
    """`size` through the first of the four evidence tiers that knows it; the fifth (data sizes inside
    the module) vetoes a change that only the inner tiers (2 and 3) saw."""
    *tiers, data_within = scopes
    for strength, scope in enumerate(tiers):
        if size in scope:
            targets = scope[size]
            if len(targets) != 1:
                return AMBIGUOUS
            new = next(iter(targets))
            return AMBIGUOUS if strength >= 2 and new != size and size in data_within else new
    return size


def refreshed_in(model: nn.Module, pruned: nn.Module, module: str,
                 shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> bool:
    """Whether the rewrite changed a width attribute of `module` (searched ones, not the tables')."""
    try:
        before, after = model.get_submodule(module), pruned.get_submodule(module)
    except AttributeError:
        return False
    return any(getattr(after, attr, old) != old for attr, old in _candidates(before, shrink_rules).items())


def refreshed_attributes(model: nn.Module, pruned: nn.Module,
                         shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> tuple[str, ...]:
    """`module.attr: old -> new` for every width attribute the rewrite changed outside the layers that
    `shrink_rules` handles (those follow their weights by construction)."""
    changes = []
    modules = dict(pruned.named_modules())
    for name, attrs in width_snapshot(model, shrink_rules).items():
        module = modules.get(name)
        for attr, old in attrs.items():
            new = getattr(module, attr, old)
            if new != old:
                changes.append(f"{name or '<root>'}.{attr}: {_show(old)} -> {_show(new)}")
    return tuple(changes)


def _show(value) -> str:
    return str(tuple(value) if isinstance(value, (tuple, list)) else value)
