"""The static checks plugin code must pass (gate stages parse and static): AST only, nothing executed.

Its own module, without the plugin loader, so that processes that must never run candidate code (the
operator, before any Job starts) can check it; trainer/plugins.py documents the interface and loads it.
"""

from __future__ import annotations

import ast

from cambrian.errors import GateError

ALLOWED_MODULES = {
    "torch", "torch.nn", "torch.nn.functional", "torch.optim", "math", "typing", "dataclasses",
    "functools", "itertools", "collections",
}
FORBIDDEN_NAMES = {
    "eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars", "getattr", "setattr",
    "delattr", "input", "breakpoint", "exit", "quit", "help", "memoryview", "os", "sys", "subprocess",
    "socket", "importlib", "builtins", "__builtins__", "__loader__", "__spec__",
}
FORBIDDEN_ATTRIBUTES = {
    "load", "save", "hub", "from_file", "cpp_extension", "utils", "ops", "classes", "library", "package",
    "jit", "compile", "system", "popen", "spawn", "fork", "environ", "storage", "untyped_storage",
    "distributed", "multiprocessing", "cuda_path",
    # str.format reaches attributes without an ast.Attribute; numpy arrays (tensor.numpy()) write files
    "format", "format_map", "tofile", "dump", "mro",
}
# Frame, code and traceback objects lead to the trainer's own frames (and the validation labels in them):
# generator.gi_frame.f_back.f_locals needs no dunder at all.
FORBIDDEN_ATTRIBUTE_PREFIXES = ("gi_", "cr_", "ag_", "f_", "tb_", "co_")
ENTRY_POINTS = {"architecture": "Model", "optimizer": "build_optimizer"}


def check_code(code: str, component: str) -> ast.Module:
    """Parse and statically check plugin code; raise GateError(stage=parse|static) with the line."""
    try:
        tree = ast.parse(code, filename=f"<{component} plugin>")
    except SyntaxError as exc:
        raise GateError("parse", f"{component} code has a syntax error at line {exc.lineno}: {exc.msg}") from None
    for node in ast.walk(tree):
        problem = _problem(node)
        if problem:
            raise GateError("static", f"{component} code line {getattr(node, 'lineno', '?')}: {problem}",
                            hint="see the plugin interface in trainer/plugins.py")
    entry = ENTRY_POINTS.get(component)
    defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    if entry and entry not in defined:
        raise GateError("static", f"{component} code must define `{entry}` at the top level")
    return tree


def _problem(node: ast.AST) -> str | None:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            if name not in ALLOWED_MODULES:
                return f"import of {name!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_MODULES))})"
        if isinstance(node, ast.ImportFrom) and node.level:
            return "relative imports are not allowed"
    elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
        return f"use of {node.id!r} is not allowed"
    elif isinstance(node, ast.Attribute):
        if node.attr.startswith("_") and node.attr != "__init__":
            return f"access to private or dunder attribute {node.attr!r} is not allowed"
        if node.attr in FORBIDDEN_ATTRIBUTES or node.attr.startswith(FORBIDDEN_ATTRIBUTE_PREFIXES):
            return f"attribute {node.attr!r} is not allowed in candidate code"
    elif isinstance(node, (ast.Global, ast.Nonlocal)):
        return "global/nonlocal statements are not allowed"
    elif isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.Yield, ast.YieldFrom)):
        return "async code and generators are not allowed"
    return None
