"""Splits into unequal pieces along a channel dim: an offset map whose pieces are pruned each on its own.

`torch.split(v, self.channel_splits, dim=1)` (timm CoaT's ConvRelPosEnc: a value tensor cut into head
groups of 2, 3 and 3 heads, each with its own depthwise conv) passes literal sizes in the captured graph.
After pruning, piece i must be cut at its kept size, so the sizes must follow the pruned widths. They do
when the rewrite can set them: a list attribute of the module that runs the split, or of a module around
it, that equals the sizes (the width-attribute refresh maps it piece by piece, rewrite/size_lists.py), int
attributes of one such module, one per piece size (timm FasterNet: `[self.dim_conv3, self.dim_untouched]`;
the width refresh maps each), or a GraphModule's literal argument (rewrite/graph_module.py). A slice of
the only channel dim is such a split too when its inner bounds are int attributes of one such module
(timm DPN's `x[:, :self.num_1x1_c]` and `x[:, self.num_1x1_c:]`). Sizes
written in the code (`x.split([3, 5], 1)`) have none of these: the pieces are blocked as FIXED_SIZE.
Verification confirms the rest (re-capture fails in the module if the sizes went stale).

The split rule only records each such split (`RuleContext.sized_splits`); `check_sized_splits` decides
once the modules are known, after the rule pass.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import fx, nn

from structprune.ir.ops import op_base
from structprune.ir.reasons import ReasonKind


@dataclass(frozen=True, eq=False)
class SizedSplit:
    """One split of the only channel dim of a value into pieces of unequal literal sizes."""

    node: fx.Node
    ids: np.ndarray  # the split value's ids
    sizes: tuple[int, ...]
    boundaries: tuple[int, ...] = ()  # a slice's inner bounds (DPN's `x[:, :self.num_1x1_c]`); none for a split

    @property
    def op(self) -> str:
        return op_base(self.node.target)


def check_sized_splits(ctx, modules: Mapping[str, nn.Module] | None) -> None:
    """Assume (verification checks) each recorded split's sizes follow the pruned widths where the rewrite
    sets them; block its channels as FIXED_SIZE where nothing does. `modules`: None for a GraphModule."""
    for split in ctx.sized_splits:
        ctx.node = split.node
        what = "indices" if split.boundaries else "sizes"
        if modules is None or _held_as_attribute(split, modules):
            ctx.assume(split.ids, f"{split.op} into {list(split.sizes)} channels follows the pruned widths")
        else:
            ctx.block(split.ids, ReasonKind.FIXED_SIZE, f"{split.op} along a channel dim uses {what} fixed in the code")
    ctx.node = None


def _held_as_attribute(split: SizedSplit, modules: Mapping[str, nn.Module]) -> bool:
    """Whether the module running the split, or one around it, holds the sizes as a list/tuple attribute."""
    paths = [path for path, _ in (split.node.meta.get("nn_module_stack") or {}).values()]
    for path in ["", *paths]:
        module = _module_at(modules, path)
        if module is None:
            continue
        as_list = not split.boundaries and any(_same_sizes(v, split.sizes) for v in vars(module).values())
        if as_list or _int_attributes(module, split.boundaries or split.sizes):
            return True
    return False


def _int_attributes(module: nn.Module, sizes: tuple[int, ...]) -> bool:
    """Whether every value (piece sizes, a slice's bounds) is an int attribute of the module (FasterNet's
    partial convolution splits by `[self.dim_conv3, self.dim_untouched]`), which the width refresh maps."""
    ints = {v for v in vars(module).values() if isinstance(v, int) and not isinstance(v, bool)}
    return all(size in ints for size in sizes)


def _module_at(modules: Mapping[str, nn.Module], path: str) -> nn.Module | None:
    """The module the graph calls `path`; a module shared by several parents (timm CoaT's ConvRelPosEnc)
    is listed by `named_modules` under its first name only, so it is looked up from the root."""
    if path in modules or "" not in modules:
        return modules.get(path)
    try:
        return modules[""].get_submodule(path)
    except AttributeError:
        return None


def _same_sizes(value, sizes: tuple[int, ...]) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == len(sizes)
            and all(isinstance(v, int) and not isinstance(v, bool) and v == s for v, s in zip(value, sizes)))
