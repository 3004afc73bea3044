"""Helpers and small models shared by the test files in every folder under tests/ (no tests here).

Imported as `from helpers import ...`: pyproject's `[tool.pytest.ini_options] pythonpath` puts tests/
on sys.path, so no sys.path hacks are needed.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from structprune.graph.channel_graph import ChannelGraph, ChannelGroup, Member


def outputs(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Eval-mode, no-grad forward on a tensor, a tuple of tensors or a dict of keyword inputs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(inputs, dict):
                return model(**inputs)
            if isinstance(inputs, (tuple, list)):
                return model(*inputs)
            return model(inputs)
    finally:
        model.train(was_training)


def group_with(graph: ChannelGraph, ref: str) -> ChannelGroup:
    """The only group that has member `ref` ('fqn:axis'); fails if zero or several groups do."""
    found = [g for g in graph.groups if any(m.ref == ref for m in g.members)]
    assert len(found) == 1, f"{ref} is in {len(found)} groups: {[g.id for g in found]}"
    return found[0]


def member(group: ChannelGroup, ref: str) -> Member:
    found = [m for m in group.members if m.ref == ref]
    assert len(found) == 1, f"{ref} not a member of {group.id}: {[m.ref for m in group.members]}"
    return found[0]


def refs(group: ChannelGroup) -> set[str]:
    return {m.ref for m in group.members}


def positions(group: ChannelGroup, ref: str) -> list[int]:
    return member(group, ref).positions.tolist()


def reason_kinds(group: ChannelGroup) -> set:
    return {r.kind for r in group.reasons}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert value.shape == b[key].shape, key
        assert torch.equal(value, b[key]), key


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial affine params and running stats (eval mode is not identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def dropped(group: ChannelGroup, kept) -> np.ndarray:
    return np.setdiff1d(np.arange(group.size), np.asarray(kept, dtype=np.int64))


class MHABlock(nn.Module):
    """Linear(4 -> 12) -> nn.MultiheadAttention(12, 3 heads) -> Linear(12 -> 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mha, self.fc = nn.Linear(4, 12), nn.MultiheadAttention(12, 3, batch_first=True), nn.Linear(12, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.fc(self.mha(h, h, h, need_weights=False)[0])


class BakedWidth(nn.Module):
    """Reshapes with the *input* width: pruning the projection makes the view invalid."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.o = nn.Linear(12, 12), nn.Linear(12, 2)

    def forward(self, x):
        b, n, d = x.shape
        h = self.q(x).view(b, n, 3, d // 3)
        return self.o(torch.relu(h).reshape(b, n, -1))


class TiedEmbedding(nn.Module):
    """Embedding table shared with the output projection (weight tying, as in GPT-2/T5)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.hidden, self.out = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(torch.relu(self.hidden(self.embed(ids))))


TVSHIM = Path(__file__).resolve().parents[2] / "shared" / "tools" / "tvshim.py"  # beside the checkout, if present


def load_tvshim() -> None:
    """Load ../shared/tools/tvshim.py where it exists (this workplace: torchvision built for another torch),
    so torchvision, and transformers which imports it, import on the CPU torch. A no-op where the shim is
    absent or torchvision is not installed (a CI virtual environment: nothing to patch)."""
    if TVSHIM.exists() and "tvshim" not in sys.modules and importlib.util.find_spec("torchvision") is not None:
        spec = importlib.util.spec_from_file_location("tvshim", TVSHIM)
        module = importlib.util.module_from_spec(spec)
        sys.modules["tvshim"] = module
        spec.loader.exec_module(module)


def import_transformers():
    """`transformers` (a test dependency: pip install -e '.[test]'), with tvshim loaded first."""
    load_tvshim()
    import transformers

    return transformers


class LiteralFlattenLeNet(nn.Module):
    """LeNet-5 on 1x32x32 whose flatten is a literal (`view(-1, 400)`): pruning conv2 fails verification,
    so it stays whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.view(-1, 16 * 5 * 5))))))


def digits_mlp(seed: int) -> nn.Module:
    """The zoo MLP (64 -> 128 -> 64 -> 10) for the 64-feature digits data, initialised from `seed`."""
    import models_zoo

    torch.manual_seed(seed)
    return models_zoo.create("mlp", in_features=64).eval()
