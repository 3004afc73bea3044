"""Legacy `torch.nn.utils.weight_norm` in the rewrite: its module keeps the computed `weight` as a
plain non-leaf tensor attribute, which `copy.deepcopy` refuses. The copy gets a detached stand-in, and
the attribute is then recomputed from the copied (sliced) `weight_g` and `weight_v`.

>>> import copy
>>> conv = torch.nn.utils.weight_norm(nn.Conv1d(2, 4, 3))
>>> copied = copy.deepcopy(conv, memo=computed_attribute_memo(conv, {}))
>>> recompute_weight_norms(copied)
>>> torch.equal(copied.weight, conv.weight.detach()), copied.weight.is_leaf
(True, True)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

from structprune.compat import forward_pre_hooks


def computed_attribute_memo(model: nn.Module, memo: dict) -> dict[int, torch.Tensor]:
    """A deepcopy memo entry for each non-leaf tensor a module keeps as a plain attribute: a detached copy."""
    return {id(t): t.detach().clone() for m in model.modules() for t in vars(m).values()
            if isinstance(t, torch.Tensor) and not t.is_leaf and id(t) not in memo}


def recompute_weight_norms(model: nn.Module) -> None:
    """Give each legacy weight-norm module the `weight` its hook makes from `_g` and `_v`, made under
    no_grad (a leaf, as after an inference forward): the shape the next forward gives, and the model
    stays copyable. The hook recomputes it, with gradients, on every forward."""
    for module in model.modules():
        for hook in forward_pre_hooks(module):
            if isinstance(hook, WeightNorm):
                with torch.no_grad():
                    setattr(module, hook.name, hook.compute_weight(module))
