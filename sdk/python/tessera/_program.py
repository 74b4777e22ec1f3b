"""Turning a Python function into a DCP-style program the sandbox runs (`dcp.set_slice_handler`)."""
from __future__ import annotations

import ast
import inspect
import os
import sys
import textwrap
import types
from typing import Any, Callable

from ._wire import DECODER_SOURCE

PROGRAM_NAME = "tessera_work.py"


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_used(constant)
    return names


def _function_source(fn: Callable[..., Any]) -> tuple[str, str]:
    """(source defining a name, that name) for a def function or a lambda."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as error:
        raise TypeError(f"the source of work function {fn!r} cannot be read ({error}); define it in a file") from error
    if fn.__name__ != "<lambda>":
        tree = ast.parse(source)
        node = tree.body[0]
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            raise TypeError(f"work function {fn.__qualname__}: its source is not a def")
        if isinstance(node, ast.AsyncFunctionDef):
            raise TypeError(f"work function {fn.__qualname__} is async; slice handlers are plain functions")
        lines = source.splitlines()[node.lineno - 1 :]  # without decorators
        return "\n".join(lines) + "\n", node.name
    # A lambda: the one in its source lines whose parameters match.
    wanted = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
    candidates = []
    for text in (source, "(" + source.strip().rstrip(",") + ")"):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Lambda) and [a.arg for a in node.args.args] == wanted:
                candidates.append(ast.get_source_segment(text, node))
        break
    if len(candidates) != 1:
        raise TypeError(
            "the lambda's source cannot be told apart from its line; use a def function as the work function"
        )
    return f"_tessera_lambda = {candidates[0]}\n", "_tessera_lambda"


def _dependencies(fn: Callable[..., Any], seen: set[int], imports: list[str], definitions: list[str]) -> None:
    """Imports, constants and same-module functions/classes that `fn` refers to as globals."""
    module_globals = getattr(fn, "__globals__", {})
    for name in sorted(_names_used(fn.__code__)):
        if name not in module_globals:
            continue
        value = module_globals[name]
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, types.ModuleType):
            imports.append(f"import {value.__name__}" if value.__name__ == name else f"import {value.__name__} as {name}")
        elif isinstance(value, (bool, int, float, str, bytes, type(None))) or (
            isinstance(value, tuple) and all(isinstance(v, (bool, int, float, str, type(None))) for v in value)
        ):
            definitions.append(f"{name} = {value!r}\n")
        elif isinstance(value, (types.FunctionType, type)):
            owner = getattr(value, "__module__", None)
            importable = owner not in (None, "__main__", getattr(fn, "__module__", None)) and getattr(
                sys.modules.get(owner or ""), getattr(value, "__name__", ""), None
            ) is value
            if importable:
                imports.append(f"from {owner} import {value.__name__} as {name}")
            elif isinstance(value, types.FunctionType):
                _dependencies(value, seen, imports, definitions)
                source, defined = _function_source(value)
                definitions.append(source + (f"{name} = {defined}\n" if defined != name else ""))
            else:
                definitions.append(textwrap.dedent(inspect.getsource(value)))
        elif callable(value) and getattr(value, "__module__", None) and getattr(
            sys.modules.get(value.__module__), getattr(value, "__name__", ""), None
        ) is value:
            imports.append(f"from {value.__module__} import {value.__name__} as {name}")


def function_program(fn: Callable[..., Any]) -> str:
    """A program that registers `work(datum, *args, **kwargs)` (or `work(*datum, …)` when the
    call spec in `sys.argv[1]` says `star`) as the slice handler."""
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"work must be a Python function, a program path or program source; got {type(fn).__name__}")
    if fn.__closure__:
        names = ", ".join(fn.__code__.co_freevars)
        raise TypeError(
            f"work function {fn.__qualname__} uses variables of an enclosing function ({names}); pass them in args"
        )
    imports: list[str] = []
    definitions: list[str] = []
    _dependencies(fn, {id(fn)}, imports, definitions)
    source, name = _function_source(fn)
    where = f"{os.path.basename(fn.__code__.co_filename)}:{fn.__code__.co_firstlineno}"
    return "\n".join(
        [
            f"# Generated by the tessera SDK for the work function {fn.__qualname__} ({where}).",
            "import json as _tessera_json",
            "import sys as _tessera_sys",
            "import dcp",
            *sorted(set(imports)),
            DECODER_SOURCE,
            *definitions,
            source,
            "_tessera_call = _tessera_from_wire(_tessera_json.loads(_tessera_sys.argv[1]))",
            f"_tessera_work = {name}",
            "if _tessera_call['star']:",
            "    dcp.set_slice_handler(lambda datum: _tessera_work(*datum, *_tessera_call['args'], **_tessera_call['kwargs']))",
            "else:",
            "    dcp.set_slice_handler(lambda datum: _tessera_work(datum, *_tessera_call['args'], **_tessera_call['kwargs']))",
            "",
        ]
    )
