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
(trainer/codecheck.py) are a fast first filter for honest mistakes, not the boundary: plugin code runs
only inside the bubblewrap sandbox (trainer/sandbox.py), which sees the training rows alone, or in the
cluster's locked-down Job.
"""

from __future__ import annotations

import builtins
import math
from typing import Any

from cambrian.errors import GateError
from cambrian.trainer.codecheck import ALLOWED_MODULES, ENTRY_POINTS, check_code  # noqa: F401  (the one checker)

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
