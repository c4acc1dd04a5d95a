"""The static checks a candidate must pass (gate stages parse and static): AST only, nothing executed.

Its own module, without the plugin loader, so that processes that must never run candidate code (the
operator, before any Job starts) can check it; trainer/plugins.py documents the interface and loads it.
"""

from __future__ import annotations

import ast

from cambrian.errors import GateError
from cambrian.trainer.config import ARCHITECTURE_NAMES, OPTIMIZER_NAMES, ModelConfig

PLUGIN_API = "cambrian.trainer.plugin_api"
ALLOWED_MODULES = {
    "torch", "math", "typing", "dataclasses", "functools", "itertools", "collections", "numbers", PLUGIN_API,
}
# Calls that cannot work where plugin code runs (no files but scratch, no shell, no stdin) or that hide code
# from the reader: an honest candidate using them made a mistake.
FORBIDDEN_NAMES = {"eval", "exec", "compile", "open", "input", "breakpoint", "exit", "quit", "__import__"}


def module_allowed(name: str) -> bool:
    return name in ALLOWED_MODULES or name.startswith("torch.")


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
        if isinstance(node, ast.ImportFrom) and node.level:
            return "relative imports are not allowed"
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            if not module_allowed(name):
                return (f"import of {name!r} is not offered to plugins (allowed: torch and its sub-modules, "
                        f"{PLUGIN_API}, {', '.join(sorted(ALLOWED_MODULES - {'torch', PLUGIN_API}))})")
    elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
        return f"use of {node.id!r} is not allowed in plugin code (there are no files to open and nothing to evaluate)"
    return None


def static_checks(config: ModelConfig) -> None:
    """Stages parse and static: plugin code of every component that carries some; built-in names."""
    for component in ("optimizer", "architecture"):
        code = getattr(config, component).code
        if code:
            check_code(code, component)
    opt, arch = config.optimizer, config.architecture
    if not opt.code and opt.name not in OPTIMIZER_NAMES:
        near = [n for n in OPTIMIZER_NAMES if n.lower() == opt.name.lower()]
        raise GateError("static", f"unknown optimizer {opt.name!r}; "
                        + (f"did you mean {near[0]}?" if near else f"use a torch.optim class: {', '.join(OPTIMIZER_NAMES)}"))
    if not arch.code and arch.name not in ARCHITECTURE_NAMES:
        raise GateError("static", f"unknown architecture {arch.name!r}; registered: {', '.join(ARCHITECTURE_NAMES)}")
