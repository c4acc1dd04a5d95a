"""Plugin interfaces for candidate code, and the static checks that code must pass.

Architecture plugin: the code defines

    class Model(nn.Module):
        def __init__(self, spec, cfg):   # spec: FeatureSpec (n_users, n_items, n_topics, dense)
            ...                           # cfg: ArchitectureConfig (embedding_dim, hidden, dropout, params ...)
        def forward(self, batch):        # batch: dict of tensors, B rows:
            ...                           #   user, item, topic, home_topic: int64[B]; dense: float32[B, len(spec.dense)]
            return logits                 # float[B], one ranking logit per row

Optimizer plugin: the code defines

    def build_optimizer(params, cfg):    # params: iterable of parameters; cfg: OptimizerConfig
        return torch.optim.SomeOptimizer(params, lr=cfg.lr, ...)

The names `torch`, `nn`, `F` and `math` are pre-imported. Code may import only torch (and its
nn / nn.functional / optim sub-modules), math, typing, dataclasses, functools, itertools and
collections; it may not call eval/exec/open/getattr-style builtins, touch dunder or private
attributes, or use torch's file, hub, JIT-compilation or native-extension entry points. These checks
are a fast first filter for honest mistakes, not the boundary: plugin code runs only inside the bubblewrap
sandbox (trainer/sandbox.py), which sees the training rows alone, or in the cluster's locked-down Job.
"""

from __future__ import annotations

import ast
import builtins
import math
from typing import Any

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
SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "dict", "enumerate", "float", "int", "isinstance", "issubclass", "len",
        "list", "max", "min", "range", "reversed", "round", "set", "slice", "sorted", "str", "sum", "tuple",
        "zip", "super", "object", "property", "staticmethod", "classmethod", "map", "filter", "pow", "divmod",
        "ValueError", "TypeError", "RuntimeError", "NotImplementedError", "AssertionError", "KeyError",
        "IndexError", "Exception", "print", "hasattr", "frozenset", "type", "callable", "iter", "next",
    )
}

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


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level or name not in ALLOWED_MODULES:
        raise ImportError(f"import of {name!r} is not allowed in candidate code")
    return __import__(name, globals, locals, fromlist, level)


def load_plugin(code: str, component: str) -> Any:
    """Check, then execute plugin code in a namespace with safe builtins; return its entry point."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    tree = check_code(code, component)
    namespace: dict[str, Any] = {
        "__builtins__": {**SAFE_BUILTINS, "__import__": _guarded_import, "__build_class__": builtins.__build_class__},
        "__name__": f"cambrian_plugin_{component}",
        "torch": torch, "nn": nn, "F": F, "math": math,
    }
    try:
        exec(compile(tree, f"<{component} plugin>", "exec"), namespace)  # noqa: S102 - checked above
    except Exception as exc:  # the code's own top level failed
        raise GateError("static", f"{component} code failed while loading: {type(exc).__name__}: {exc}") from None
    return namespace[ENTRY_POINTS[component]]
