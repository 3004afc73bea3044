"""structprune/compat.py: the torch version check (a torch older than 2.13 fails `import structprune` with
one clear line, not an AttributeError deep in a run), its wrappers of torch internals, and that it is the
only module of the package that reaches into private torch API (imports, dotted paths, module names)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import structprune
from structprune import compat

PACKAGE_DIR = Path(structprune.__file__).resolve().parent
TOO_OLD = "structprune needs torch >= 2.13 (found {}); install it with pip install torch==2.13.0"

# Private torch API still used outside compat.py, in files whose owners move them onto compat's names
# (compat.ConvNd, NormBase, refresh_rnn_flat_weights, forward_pre_hooks, child_module, mha_packed_qkv,
# TENSOR_PICKLE_MODULE). A new use anywhere else fails the test; an entry whose use is gone is harmless.
NOT_YET_MOVED: set[tuple[str, str]] = set()  # every private use goes through structprune.compat
# Private attributes of torch objects (modules, ops) that an AST cannot tie to torch by its dotted path.
PRIVATE_TORCH_ATTRS = {"_modules", "_parameters", "_buffers", "_forward_pre_hooks", "_forward_hooks",
                       "_backward_hooks", "_init_flat_weights", "_qkv_same_embed_dim", "_qualified_op_name",
                       "_schema", "_overloadpacket", "_opname", "_graph_module", "_non_persistent_buffers_set"}
TORCH_ROOTS = {"torch", "nn", "fx", "F"}  # names the package binds to torch modules


@pytest.mark.parametrize("version", ["2.13.0", "2.13.0+cpu", "2.13.1+cu126", "2.13.0a0+git1234", "2.14.0.dev20260101",
                                     "3.0.0", "nightly"])
def test_new_enough_or_unreadable_versions_pass(version: str) -> None:
    assert compat.torch_version_problem(version) is None
    compat.require_torch(version)


@pytest.mark.parametrize("version", ["2.12.1", "2.4.1+cu121", "1.13.1", "2.9.0a0+gitabc"])
def test_older_versions_are_refused_in_one_line(version: str) -> None:
    assert compat.torch_version_problem(version) == TOO_OLD.format(version)
    with pytest.raises(ImportError) as caught:
        compat.require_torch(version)
    assert str(caught.value) == TOO_OLD.format(version)


def test_importing_structprune_on_an_older_torch_fails_at_import_with_that_line() -> None:
    code = "import torch; torch.__version__ = '2.5.1'; import structprune"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "ImportError: " + TOO_OLD.format("2.5.1")
    assert "structprune/compat.py" in done.stderr  # raised before any other structprune module loads


def test_no_fx_stack_traces_restores_the_flag_even_on_error() -> None:
    before = torch.fx.config.do_not_emit_stack_traces
    with pytest.raises(KeyError), compat.no_fx_stack_traces():
        assert torch.fx.config.do_not_emit_stack_traces is True
        raise KeyError("x")
    assert torch.fx.config.do_not_emit_stack_traces == before


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_wrappers_reach_what_they_name() -> None:
    assert isinstance(torch.ops.aten.add, compat.OpOverloadPacket)
    assert not isinstance(torch.ops.aten.add.Tensor, compat.OpOverloadPacket)
    assert issubclass(nn.ConvTranspose2d, compat.ConvNd) and issubclass(nn.InstanceNorm1d, compat.NormBase)
    mha = nn.MultiheadAttention(8, 2)
    assert compat.mha_packed_qkv(mha) and not compat.mha_packed_qkv(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    assert compat.child_module(mha, "out_proj") is mha.out_proj and compat.child_module(mha, "in_proj_weight") is None
    assert compat.forward_pre_hooks(nn.utils.weight_norm(nn.Linear(3, 2))) != []
    lstm = nn.LSTM(4, 6)
    lstm.weight_hh_l0 = nn.Parameter(lstm.weight_hh_l0.detach()[:, :3].clone())
    compat.refresh_rnn_flat_weights(lstm)
    assert any(w is lstm.weight_hh_l0 for w in lstm._flat_weights)


def test_compat_imports_only_torch_and_the_standard_library() -> None:
    tree = ast.parse((PACKAGE_DIR / "compat.py").read_text(encoding="utf-8"))
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)]
    roots = {alias.name.split(".")[0] for node in imports for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots - {"torch"} <= set(sys.stdlib_module_names), sorted(roots)


def private_torch_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each reach into private torch API: an import of a `torch...._x` module, a dotted
    path from a torch module through `_x` (torch.ops op names excepted: `aten._softmax` is public), a
    known private attribute of torch objects, or a string naming a private torch module."""
    found, tree = [], ast.parse(source)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}  # torch._ops of torch._ops.X
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, m) for m in modules if m.split(".")[0] == "torch" and _private_part(m)]
        elif isinstance(node, ast.Attribute):
            path = [] if id(node) in inner else _dotted(node)
            if node.attr in PRIVATE_TORCH_ATTRS:
                found.append((node.lineno, node.attr))
            elif path and path[0] in TORCH_ROOTS and "ops" not in path and _private_part(".".join(path)):
                found.append((node.lineno, node.attr if node.attr.startswith("_") else ".".join(path)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("torch."):
            if " " not in node.value and _private_part(node.value):
                found.append((node.lineno, node.value))
    return sorted(found)


def _private_part(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _dotted(node: ast.Attribute) -> list[str]:
    parts = [node.attr]
    while isinstance(node.value, ast.Attribute):
        node = node.value
        parts.append(node.attr)
    return [node.value.id, *reversed(parts)] if isinstance(node.value, ast.Name) else []


def test_private_torch_api_is_reached_only_through_compat() -> None:
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative != "compat.py":
            found += [f"structprune/{relative}:{line} uses {what}" for line, what in
                      private_torch_uses(path.read_text(encoding="utf-8")) if (relative, what) not in NOT_YET_MOVED]
    assert not found, "use structprune.compat instead:\n" + "\n".join(found)


def test_the_check_finds_each_kind_of_private_use() -> None:
    source = ("from torch.fx._lazy_graph_module import _use_lazy_graph_module\n"
              "import torch._dynamo\n"
              "x = torch._ops.OpOverloadPacket\n"
              "y = packet._qualified_op_name\n"
              "z = nn.modules.conv._ConvNd\n"
              "w = ('torch._export.serde.serialize',)\n"
              "v = module._forward_pre_hooks.values()\n"
              "ok = (torch.ops.aten._softmax, torch.nn.functional.relu, module.__class__, 'torch.export')\n")
    assert [line for line, _ in private_torch_uses(source)] == [1, 2, 3, 4, 5, 6, 7]
