"""The program JSON inside a `.pt2` archive: find the strings torch would evaluate as code.

`torch.export.load` passes symbolic shape expressions (`expr_str`) to `sympy.sympify`, which calls
`eval`; `ExportedProgram.module()` `exec`s the program's guards (`guards_code`, plus guards it
builds from string inputs) and pastes `forward_arg_names` into generated Python source. A crafted
archive can therefore run code without any pickle. Here every such field must be plain: arithmetic,
comparisons and calls of sympy/shape functions on numbers, symbols (`s0`) and the inputs (`L['x']`).
"""
from __future__ import annotations

import ast
import json
import keyword
import re
from collections.abc import Callable, Iterator
from typing import Any

# Names a plain expression may use: sympy constructors as torch prints them (srepr), torch's
# sympy functions, the guards' inputs `L` and `math`. Shape symbols (`s0`, `u12`) match _SYMBOL.
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair",
    "floor", "ceiling", "sqrt", "true", "false", "oo", "zoo", "nan", "IntInfinity",
    "NegativeIntInfinity", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv",
    "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
    "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
})
_NAMES = _SYMPY_NAMES | {"L", "math"}
_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "isnan", "isinf", "inf", "floor", "ceil",
                         "trunc", "sqrt"})
_SYMBOL = re.compile(r"[a-z]+\d+")
_PLAIN_TEXT = re.compile(r"[\w.]*")  # string constants: symbol names, input keys, float literals
_MAX_EXPRESSION = 10_000
_STRUCTURE = (ast.Expression, ast.Call, ast.keyword, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
              ast.Subscript, ast.Tuple, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)
_FILE_OPS = ("aten.from_file",)  # ops that open paths on this machine when the graph runs


def is_plain_expression(text: Any) -> bool:
    """True if `text` uses only arithmetic, comparisons, indexing and the allowed names and calls.

    >>> is_plain_expression("Mul(Integer(2), Symbol('s0', positive=True))")
    True
    >>> is_plain_expression("L['x'].size()[0] <= 16")
    True
    >>> is_plain_expression("__import__('os').system('id')")
    False
    """
    if not isinstance(text, str) or len(text) > _MAX_EXPRESSION:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return all(_is_plain_node(node) for node in ast.walk(tree))


def code_in_program(data: bytes, where: str) -> list[str]:
    """Descriptions of the fields of one program JSON that would run code; [] if none (or unreadable,
    which torch.export.load then reports as damage)."""
    try:
        program = json.loads(data)
    except (ValueError, RecursionError):
        return []
    return [f"{key} {_shorten(value)} in {where}" for key, value in _fields(program)
            if key in PLAIN_FIELDS and not PLAIN_FIELDS[key](value)]


def _is_plain_node(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _NAMES or bool(_SYMBOL.fullmatch(node.id))
    if isinstance(node, ast.Attribute):
        return node.attr in _ATTRIBUTES
    if isinstance(node, ast.Constant):
        value = node.value
        return isinstance(value, (bool, int, float)) or (isinstance(value, str) and bool(_PLAIN_TEXT.fullmatch(value)))
    return isinstance(node, _STRUCTURE)


def _plain_guards(value: Any) -> bool:
    return isinstance(value, list) and all(is_plain_expression(guard) for guard in value)


def _identifiers(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(
        isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name) for name in value))


def _inert_string(value: Any) -> bool:
    """String arguments become guard literals (`L['x'] == 'TEXT'`): no quotes, backslashes, line breaks."""
    return not isinstance(value, str) or not any(c in value for c in "'\"\\\n\r")


def _no_file_ops(value: Any) -> bool:
    return not isinstance(value, str) or not any(op in value for op in _FILE_OPS)


# Program JSON key -> check its value must pass. Keys are schema field names of torch._export.serde.
PLAIN_FIELDS: dict[str, Callable[[Any], bool]] = {
    "expr_str": is_plain_expression,
    "guards_code": _plain_guards,
    "forward_arg_names": _identifiers,
    "as_string": _inert_string,
    "as_strings": lambda value: not isinstance(value, list) or all(_inert_string(v) for v in value),
    "target": _no_file_ops,
}


def _fields(tree: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every JSON object in `tree`, without recursion (crafted nesting is deep)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield from node.items()
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
