"""Vetting of ``torch.export`` archives (``.pt2``) before ``torch.export.load`` sees them.

``torch.export.load(...).module()`` is not a data reader. In torch 2.13 it

* ``exec``\\ s the strings of ``models/<name>.json``'s ``guards_code`` (``torch.export._unlift``), with ``torch``
  in the namespace;
* ``sympy.sympify``\\ s every ``expr_str`` of the program (which ``eval``\\ s, with Python's builtins);
* resolves each node's ``target`` by ``getattr`` on the ``torch`` / ``math`` / ``operator`` modules and calls
  it when the model runs (``torch.os.system`` resolves);
* unpickles members with ``weights_only=False`` (pickled weights and constants, and every artifact whose
  ``weights_only=True`` load fails for *any* reason), ``pickle.loads`` ``opaque_obj_*`` constants, and
  ``dlopen``\\ s AOTInductor shared libraries under ``data/aotinductor/``.

:func:`vet_export_archive` therefore accepts an archive only when everything that reaches one of those paths
has a form ``torch.export.save`` itself writes:

* guard code: a Python expression over ``L['name']…size()[i]`` / ``.stride()[i]`` / ``.storage_offset()``,
  integer and float constants, arithmetic, comparisons, ``and``/``or``/``not``, calls of ``math.<fn>``,
  ``torch.sym_*`` and the sympy helpers torch puts in the guard namespace — checked node by node with
  :mod:`ast`; one line, no quotes other than the ``L['…']`` keys;
* ``expr_str``: sympy ``srepr`` text — calls of the sympy / ``torch.utils._sympy`` classes by name, with
  number, symbol-name string and boolean-keyword arguments;
* node targets and operator arguments: ``torch.ops.<ns>.<op>[.<overload>]`` resolving to a registered operator,
  or one of the symbolic-shape operators torch serialises (``operator.add``, ``torch.sym_max``, …);
* pickled members: each must load with ``torch.load(weights_only=True)`` — any exception is a refusal;
* no ``opaque_obj_*`` constants, no AOTInductor libraries, no duplicate member names, no decompression bomb.

Without ``--trust`` a failed check raises :class:`~calibscope.errors.UntrustedFileError`; duplicate names and
bombs are refused even with ``--trust`` (:class:`~calibscope.errors.InputError`).
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from calibscope.errors import InputError, UntrustedFileError
from calibscope.loading import limits

__all__ = ["check_archive_structure", "vet_export_archive"]

_MAX_JSON_BYTES = 512 << 20
_MAX_EXPR_CHARS = 20_000
_SYMBOL_NAME = re.compile(r"^[a-z]{1,8}[0-9]{1,7}$")  # s0, u12, zuf3 … (torch's SymT prefixes)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
# sympy srepr names torch writes, plus torch.utils._sympy.functions (the deserializer's sympy_functions)
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "And", "Or", "Not", "Xor", "Piecewise", "ExprCondPair", "sqrt",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity",
})
_SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "true", "false", "S", "pi", "E", "int_oo"})
_SYMPY_ATTRS = frozenset({"true", "false", "Infinity", "NegativeInfinity", "Zero", "One", "NegativeOne", "Half",
                          "IntInfinity", "NegativeIntInfinity", "NaN"})
_SYMBOL_KEYWORDS = frozenset({"positive", "integer", "real", "nonnegative", "finite", "negative", "nonzero",
                              "nonpositive", "evaluate"})
# the guard namespace (torch.fx.experimental.symbolic_shapes.SYMPY_INTERP + math + inf) and what torch's
# printers emit in it
_GUARD_FUNCTIONS = frozenset({"IsNonOverlappingAndDenseIndicator", "cast_symbool_to_symint_guardless"})
_GUARD_MATH = frozenset({"floor", "ceil", "trunc", "isnan", "inf", "nan", "sqrt", "log2", "cos", "cosh", "acos",
                         "sin", "sinh", "asin", "tan", "tanh", "atan", "exp", "log", "pow"})
_GUARD_TORCH = frozenset({"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt",
                          "_sym_sqrt", "sym_sum"})
_TENSOR_METHODS = frozenset({"size", "stride", "storage_offset"})
_ALLOWED_CONFIG_PREFIXES = ("weight_", "tensor_", "custom_obj_")  # custom_obj_: torchbind, jit unpickler


def check_archive_structure(p: Path, zf: zipfile.ZipFile) -> None:
    """What holds even with ``--trust``: one member per name, no decompression bomb."""
    limits.check_zip(p, zf)


def vet_export_archive(p: Path) -> None:
    """Refuse ``p`` unless every member ``torch.export.load`` would execute, unpickle or ``eval`` has the form
    ``torch.export.save`` writes (see the module docstring)."""
    try:
        with zipfile.ZipFile(p) as zf:
            check_archive_structure(p, zf)
            names = zf.namelist()
            for name in names:
                if "/data/aotinductor/" in f"/{name}":
                    raise _untrusted(p, name, "AOTInductor-compiled native code, which torch.export.load would "
                                              "load and run")
            pickled = [n for n in names if n.endswith(".pt")]  # sample inputs, legacy weights/constants
            for name in names:
                if name.endswith(("_weights_config.json", "_constants_config.json")):
                    pickled += _pickled_from_config(p, zf, name)
            for name in names:
                if _is_program_json(name):
                    _vet_program(p, name, _read_json(p, zf, name))
            for name in pickled:
                if name in names:
                    _vet_pickle(p, name, zf.read(name))
    except zipfile.BadZipFile as exc:
        raise InputError(f"'{p}' is a corrupt or truncated .pt2 archive ({exc})") from None


def _is_program_json(name: str) -> bool:
    return bool(re.search(r"(^|/)models/[^/]+\.json$", name)) or name.endswith("serialized_exported_program.json")


def _untrusted(p: Path, member: str, what: str) -> UntrustedFileError:
    return UntrustedFileError(
        f"'{p}' is a .pt2 archive whose member '{member}' holds {what}; loading it would run code from the file. "
        "Re-export it with torch.export.save from plain tensors, or pass --trust if you trust its author")


def _read_json(p: Path, zf: zipfile.ZipFile, name: str) -> Any:
    if zf.getinfo(name).file_size > _MAX_JSON_BYTES:
        raise InputError(f"'{p}': member {name!r} is {zf.getinfo(name).file_size} bytes, too large for a program")
    try:
        return json.loads(zf.read(name))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise InputError(f"'{p}': member {name!r} is not valid JSON ({str(exc)[:200]})") from None


def _pickled_from_config(p: Path, zf: zipfile.ZipFile, name: str) -> list[str]:
    folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
    entries = _read_json(p, zf, name)
    entries = entries.get("config", {}) if isinstance(entries, dict) else None
    if not isinstance(entries, dict):
        raise _untrusted(p, name, "a payload config that is not what torch.export.save writes")
    out = []
    for entry in entries.values():
        if not isinstance(entry, dict) or not isinstance(entry.get("path_name"), str):
            raise _untrusted(p, name, "a payload config that is not what torch.export.save writes")
        path_name = entry["path_name"]
        if not path_name.startswith(_ALLOWED_CONFIG_PREFIXES):
            raise _untrusted(p, folder + path_name, "a pickled Python object")
        if entry.get("use_pickle") and not path_name.startswith("custom_obj_"):
            out.append(folder + path_name)
    return out


def _vet_pickle(p: Path, name: str, data: bytes) -> None:
    """torch falls back to ``weights_only=False`` on *any* failure of the restricted load: so must we refuse."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is a refusal (see the docstring)
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = "pickled Python code" + (f" (it references {found.group(1)})" if found else
                                        f" or data the restricted loader rejects ({type(exc).__name__})")
        raise _untrusted(p, name, what) from None


# ---------------------------------------------------------------------------------------------- the program


def _vet_program(p: Path, member: str, program: Any) -> None:
    if not isinstance(program, dict):
        raise _untrusted(p, member, "a program that is not a JSON object")
    guards = program.get("guards_code", [])
    if not isinstance(guards, list):
        raise _untrusted(p, member, "guard code that is not a list of strings")
    for guard in guards:
        reason = _guard_problem(guard)
        if reason:
            raise _untrusted(p, member, f"guard code torch.export does not write ({reason}: {str(guard)[:80]!r})")
    ranges = program.get("range_constraints", {})
    for key in ranges if isinstance(ranges, dict) else ():
        reason = _sympy_str_problem(key)
        if reason:
            raise _untrusted(p, member, f"a range constraint torch.export does not write ({reason}: {key[:80]!r})")
    _walk(p, member, program)


def _walk(p: Path, member: str, node: Any) -> None:
    stack = [node]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "expr_str":
                    reason = _srepr_problem(value)
                    if reason:
                        raise _untrusted(p, member, f"a symbolic expression torch.export does not write ({reason}: "
                                                    f"{str(value)[:80]!r})")
                elif key in ("target", "as_operator") and isinstance(value, str):
                    if not _allowed_target(value):
                        raise _untrusted(p, member, f"a call of {value[:80]!r}, which is not a torch operator")
                stack.append(value)
        elif isinstance(obj, list):
            stack.extend(obj)


def _allowed_target(target: str) -> bool:
    """A registered ``torch.ops`` operator or one of the symbolic-shape operators torch serialises."""
    import math
    import operator

    import torch

    parts = target.split(".")
    if any(not _KEY.match(part) or part.startswith("__") for part in parts):
        return False
    if parts[0] == "torch" and len(parts) >= 2 and parts[1] == "ops":
        if len(parts) not in (4, 5):
            return False
        obj: Any = torch.ops
        try:
            for part in parts[2:]:
                obj = getattr(obj, part)
        except (AttributeError, RuntimeError):
            return False
        return isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator))
    roots = {"_operator": operator, "operator": operator, "math": math, "torch": torch}
    if parts[0] not in roots or len(parts) != 2:
        return False
    from torch._export.serde.serialize import _SYM_OPS

    obj = getattr(roots[parts[0]], parts[1], None)
    return obj is operator.getitem or any(obj is op for op in _SYM_OPS)


def _parsed(text: Any, limit: int = _MAX_EXPR_CHARS) -> ast.AST | str:
    """The expression's tree, or why it is not one torch prints (one short, printable ASCII line, no quotes
    but single ones, no backslashes or comments)."""
    if not isinstance(text, str):
        return "not a string"
    if len(text) > limit or not text.isascii() or not text.isprintable() or any(c in text for c in '"\\#'):
        return "characters torch does not print"
    try:
        return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not an expression"


def _guard_problem(text: Any) -> str | None:
    tree = _parsed(text)
    return tree if isinstance(tree, str) else _check_guard_node(tree)


def _check_guard_node(node: ast.AST) -> str | None:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Constant):
            if isinstance(n.value, str):
                if not _KEY.match(n.value):
                    return "a string constant"
            elif not isinstance(n.value, (int, float, bool)):
                return "a constant of another type"
        elif isinstance(n, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
            stack.extend(ast.iter_child_nodes(n))
        elif isinstance(n, (ast.operator, ast.unaryop, ast.boolop, ast.cmpop)):
            if isinstance(n, (ast.Is, ast.IsNot, ast.In, ast.NotIn, ast.MatMult)):
                return f"the operator {type(n).__name__}"
        elif isinstance(n, ast.Subscript):
            if not (isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, (int, str))
                    and not isinstance(n.slice.value, bool)):
                return "a subscript that is not a constant index"
            if isinstance(n.slice.value, str) and not _KEY.match(n.slice.value):
                return "a key that is not a name"
            if not (isinstance(n.value, ast.Name) and n.value.id == "L"):
                stack.append(n.value)
        elif isinstance(n, ast.Call):
            if n.keywords:
                return "a keyword argument"
            func = n.func
            if isinstance(func, ast.Name):
                if func.id not in _GUARD_FUNCTIONS:
                    return f"a call of {func.id}"
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in (
                    "math", "torch"):
                allowed = _GUARD_MATH if func.value.id == "math" else _GUARD_TORCH
                if func.attr not in allowed:
                    return f"a call of {func.value.id}.{func.attr}"
            elif isinstance(func, ast.Attribute) and func.attr in _TENSOR_METHODS and _is_input(func.value):
                if n.args:
                    return f"arguments to .{func.attr}()"
            else:
                return "a call torch does not write"
            stack.extend(n.args)
        elif isinstance(n, ast.Attribute):
            if not (isinstance(n.value, ast.Name) and n.value.id == "math" and n.attr in ("inf", "nan")):
                return f"the attribute .{n.attr}"
        elif isinstance(n, ast.Name):
            if n.id not in ("inf",):
                return f"the name {n.id}"
        else:
            return f"a {type(n).__name__} expression"
    return None


def _is_input(node: ast.AST) -> bool:
    """``L['x']``, ``L['x'][0]``, ``L['z']['k']`` — a placeholder path, which torch replaces by ``args[i]``."""
    while isinstance(node, ast.Subscript):
        key = node.slice.value if isinstance(node.slice, ast.Constant) else None
        if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and _KEY.match(key))):
            return False
        node = node.value
    return isinstance(node, ast.Name) and node.id == "L"


def _srepr_problem(text: Any) -> str | None:
    """sympy ``srepr`` text: ``Mul(Integer(2), Symbol('s44', positive=True, integer=True))``."""
    tree = _parsed(text)
    if isinstance(tree, str):
        return tree
    stack: list[ast.AST] = [tree]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Call):
            if not (isinstance(n.func, ast.Name) and n.func.id in _SYMPY_CALLS) and not _sympy_singleton(n.func):
                return "a call of something other than a sympy class"
            for kw in n.keywords:
                if kw.arg not in _SYMBOL_KEYWORDS or not (isinstance(kw.value, ast.Constant)
                                                          and isinstance(kw.value.value, bool)):
                    return "a keyword argument"
            for arg in n.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if not _SYMBOL_NAME.match(arg.value):
                        return "a symbol name torch does not write"
                else:
                    stack.append(arg)
        elif isinstance(n, ast.Constant):
            if isinstance(n.value, str) or not isinstance(n.value, (int, float, bool)):
                return "a constant of another type"
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            stack.append(n.operand)
        elif isinstance(n, ast.Name):
            if n.id not in _SYMPY_NAMES:
                return f"the name {n.id}"
        elif _sympy_singleton(n):
            continue
        else:
            return f"a {type(n).__name__} expression"
    return None


def _sympy_singleton(n: ast.AST) -> bool:
    """``S.true``, ``S.Infinity`` …"""
    return isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "S" and \
        n.attr in _SYMPY_ATTRS


def _sympy_str_problem(text: Any) -> str | None:
    """Range-constraint keys: ``str`` of a sympy expression over symbols (``s44``, ``2*s44``, ``s0 + 1``)."""
    tree = _parsed(text, limit=1000)
    if isinstance(tree, str):
        return tree
    stack: list[ast.AST] = [tree]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Name):
            if not (_SYMBOL_NAME.match(n.id) or n.id in _SYMPY_NAMES):
                return f"the name {n.id}"
        elif isinstance(n, ast.Constant):
            if not isinstance(n.value, (int, float)) or isinstance(n.value, bool):
                return "a constant of another type"
        elif isinstance(n, (ast.BinOp, ast.UnaryOp)):
            stack.extend(c for c in ast.iter_child_nodes(n) if not isinstance(c, (ast.operator, ast.unaryop)))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _SYMPY_CALLS \
                and not n.keywords:
            stack.extend(n.args)
        else:
            return f"a {type(n).__name__} expression"
    return None
