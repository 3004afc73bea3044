"""The layer stack of DESIGN.md ("Layout"): a module of structprune imports only modules of its own layer or
of a layer below it, never above. Every `import` and `from ... import` counts, at module level or inside a
function (an import inside a function is still a dependency; it only hides it), relative ones included.

The stack, bottom to top (each layer may import the layers listed before it):

    leaves   compat < errors < data < io < report    anyone may import them; they import only leaves before them
    stages   capture < ir < graph < rules < criteria < selection < rewrite < verify < onnx < calibrate < recover
    top      api < pipeline < cli

The leaves sit below the stages (DESIGN.md: "leaves that any layer may use; they import nothing above
them"), so a leaf never imports a stage: io/ does not export models (capture.deploy.save_pt2 does) and
report/ does not count MACs on a graph (graph.cost does). They are ordered among themselves so that
they cannot import each other in a cycle. Top-level modules have these places:

    api        structprune/__init__.py (the public surface re-exports the API), api.py, verified.py (the
               verify-and-replan loop api.py runs), compress_config.py (the options api.py takes),
               iterative.py (prune -> recover cycles, each a compress call), limit/ (the pruning-limit estimate:
               analyze, then the loss Hessian in channel coordinates)
               planning.py (scores -> plan for each kind of budget), latency_target.py (the latency budget
               search: it measures candidate models with onnxruntime, so it sits above onnx), sensitivity.py
               (per-group sensitivity: rewrites and runs candidate models), group_lasso.py (sparsity training,
               then threshold pruning through compress)
    pipeline   pipeline.py (jobs behind the CLI), artifacts.py (read-back checks of what a job writes),
               quality.py (the accuracy gate of a job), demo.py (a job on built-in data), inspection.py
               (`structprune inspect`), sensitivity_job.py (`structprune sensitivity`), sweep/ (`structprune
               sweep`: criteria x budgets x seeds, accuracy curves beside Torch-Pruning's, limit vs knee),
               arguments.py (argument types and help formatting of every sub-command)
    cli        cli.py, __main__.py
    compat     compat.py (the bottom: every private torch API and the torch version check; it imports
               only torch and the standard library, see tests/unit/test_compat.py)
    errors     errors.py (a leaf: every stage raises its errors)

Importing any submodule runs structprune/__init__.py, which imports the API; that is Python's package
import, not a dependency of the module, and is not counted.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import structprune

PACKAGE_DIR = Path(structprune.__file__).resolve().parent

# bottom to top; the first name after "structprune." decides the layer ("" is structprune/__init__.py)
LAYERS: tuple[tuple[str, frozenset[str]], ...] = tuple((layer, frozenset(names)) for layer, names in (
    ("compat", {"compat"}),
    ("errors", {"errors"}),
    ("data", {"data"}),
    ("io", {"io"}),
    ("report", {"report"}),
    ("capture", {"capture"}),
    ("ir", {"ir"}),
    ("graph", {"graph"}),
    ("rules", {"rules"}),
    ("criteria", {"criteria"}),
    ("selection", {"selection"}),
    ("rewrite", {"rewrite"}),
    ("verify", {"verify"}),
    ("onnx", {"onnx"}),
    ("calibrate", {"calibrate"}),
    ("recover", {"recover"}),
    ("hf", {"hf"}),  # Hugging Face in and out: config after the rewrite, reload; api and the CLI job call it
    ("api", {"", "api", "verified", "compress_config", "iterative", "limit", "planning", "latency_target",
             "sensitivity", "group_lasso"}),
    ("pipeline", {"pipeline", "artifacts", "quality", "demo", "inspection", "sensitivity_job", "sweep", "arguments"}),
    ("cli", {"cli", "__main__"}),
))
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
LAYER_NAME = {name: layer for layer, names in LAYERS for name in names}

# Imports inside functions that stay there: each guards a heavy optional dependency (module -> what it loads).
LAZY_IMPORTS = {
    ("api.py", "structprune.onnx"): "onnx, onnxruntime",
    ("report/writers.py", "structprune.report.plots"): "matplotlib",
    ("report/sensitivity_files.py", "structprune.report.plots"): "matplotlib",
    ("latency_target.py", "structprune.onnx"): "onnx, onnxruntime",
}
HEAVY = ("onnx", "onnxruntime", "matplotlib", "transformers", "safetensors", "torch_pruning",
         "sklearn")  # scikit-learn: 2 s of every CLI start when imported at module level


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the imported module (`from structprune import api` -> structprune.api)
    in_function: bool


def module_name(path: Path) -> str:
    """structprune/graph/cost.py -> structprune.graph.cost; a package's __init__.py -> the package."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Is `structprune.a.b` a module or package of the source tree (not a name defined in one)?"""
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (PACKAGE_DIR / relative).with_suffix(".py").is_file() or (PACKAGE_DIR / relative / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import in `source` (the module `module`), absolute and relative, at any depth."""
    tree = ast.parse(source)
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = _from_targets(node, module, is_package)
        else:
            continue
        found += [Import(node.lineno, target, id(node) in in_function) for target in targets]
    return sorted(found, key=lambda imp: imp.line)


def _from_targets(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base != "structprune":  # the layer is decided by the first name after "structprune."
        return [base]
    return sorted({f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names})


def layer_key(dotted: str) -> str:
    """The table key of a structprune module: the first name after 'structprune.' ('' for the root)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(path: Path, source: str) -> list[str]:
    """`file:line imports <module> (layer X) from layer Y` for each import of a higher layer."""
    module = module_name(path)
    here = layer_key(module)
    problems = []
    for imp in imports_of(source, module, path.name == "__init__.py"):
        if imp.target != "structprune" and not imp.target.startswith("structprune."):
            continue
        there = layer_key(imp.target)
        if there not in RANK:
            problems.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{imp.line} imports {imp.target}, "
                            "which has no layer")
        elif RANK[there] > RANK.get(here, len(LAYERS)):
            problems.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{imp.line} imports {imp.target} "
                            f"(layer {LAYER_NAME[there]}) from layer {LAYER_NAME[here]}")
    return problems


def source_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    missing = {layer_key(module_name(path)) for path in source_files()} - set(RANK)
    assert not missing, f"add these to LAYERS in {Path(__file__).name}: {sorted(missing)}"


def test_no_layer_imports_a_layer_above_it() -> None:
    problems = [p for path in source_files() for p in upward_imports(path, path.read_text(encoding="utf-8"))]
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_imports_inside_functions_only_guard_heavy_dependencies() -> None:
    """A function-level import hides a dependency; it is allowed only where it keeps a heavy optional
    library from loading with its importer (LAZY_IMPORTS lists the structprune ones)."""
    hidden = []
    for path in source_files():
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        for imp in imports_of(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"):
            if imp.in_function and imp.target.split(".")[0] not in HEAVY and (relative, imp.target) not in LAZY_IMPORTS:
                hidden.append(f"structprune/{relative}:{imp.line} imports {imp.target} inside a function")
    assert not hidden, "\n".join(hidden)


def test_the_check_finds_an_upward_import_at_any_depth() -> None:
    """The checker itself: a graph module importing the API (in a function, absolutely or relatively)
    and a leaf importing a stage are reported with file, line and both layers; a downward import is not."""
    graph_module = PACKAGE_DIR / "graph" / "example.py"
    source = ("from structprune.ir.abstract import Abstract\n"
              "def f():\n    from structprune.api import compress\n"
              "from .. import rules\n"
              "from ..rules import build\n")
    assert upward_imports(graph_module, source) == [
        "structprune/graph/example.py:3 imports structprune.api (layer api) from layer graph",
        "structprune/graph/example.py:4 imports structprune.rules (layer rules) from layer graph",
        "structprune/graph/example.py:5 imports structprune.rules (layer rules) from layer graph",
    ]
    leaf = PACKAGE_DIR / "report" / "example.py"
    assert upward_imports(leaf, "import structprune.capture\nfrom structprune import errors, __version__\n") == [
        "structprune/report/example.py:1 imports structprune.capture (layer capture) from layer report",
        "structprune/report/example.py:2 imports structprune (layer api) from layer report",
    ]
