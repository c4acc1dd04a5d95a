"""Plugin interfaces for candidate code, and the static checks that code must pass.

Architecture plugin: the code defines

    class Model(nn.Module):
        def __init__(self, spec, cfg):   # spec: FeatureSpec, the declared features (fields, dense, size(name) ...)
            ...                           # cfg: ArchitectureConfig (embedding_dim, hidden, dropout, params ...)
        def forward(self, batch):        # batch: dict of tensors, B rows, the declared features by name:
            ...                           #   int64[B] per name in spec.fields (user, item, each categorical),
            ...                           #   float32[B] per name in spec.dense; dense: float32[B, len(spec.dense)]
            return logits                 # float[B], one ranking logit per row

Which features exist is the data set's declaration (trainer/schema.py): the world's are user, item, topic,
home_topic and the numeric length_min, thumb_intensity; trainer/plugin_api.py documents FeatureSpec.

Optimizer plugin: the code defines

    def build_optimizer(params, cfg):    # params: iterable of parameters; cfg: OptimizerConfig
        return torch.optim.SomeOptimizer(params, lr=cfg.lr, ...)

The names `torch`, `nn`, `F` and `math` are pre-imported. Code may use torch fully (any torch sub-module,
e.g. torch.nn.utils.clip_grad_norm_ or torch.nn.utils.parametrizations) and the trainer's own building blocks
through the plugin API, `cambrian.trainer.plugin_api` (the field embeddings, the MLP builder and the built-in
models), besides math, typing, dataclasses, functools, itertools, collections and numbers.

The static checks here are a fast first filter for honest mistakes (a syntax error, a missing entry point,
an import of a module the trainer does not offer, eval/exec/open and friends, which cannot work in the sandbox
or in an exported model), not a boundary: plugin code runs only inside the bubblewrap sandbox
(trainer/sandbox.py), which sees the training rows alone, or in the cluster's locked-down training container,
and its verdict comes from a scorer that never runs it.
"""

from __future__ import annotations

import builtins
import math
from typing import Any

from cambrian.errors import GateError
from cambrian.trainer.codecheck import (ALLOWED_MODULES, ENTRY_POINTS, FORBIDDEN_NAMES,  # noqa: F401
                                       PLUGIN_API, check_code, module_allowed)


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level or not module_allowed(name):
        raise ImportError(f"import of {name!r} is not offered to plugin code")
    return __import__(name, globals, locals, fromlist, level)


def load_plugin(code: str, component: str) -> Any:
    """Check, then execute plugin code (in the sandbox) with the offered imports; return its entry point."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    tree = check_code(code, component)
    namespace: dict[str, Any] = {
        "__builtins__": {**vars(builtins), "__import__": _guarded_import},
        "__name__": f"cambrian_plugin_{component}",
        "torch": torch, "nn": nn, "F": F, "math": math,
    }
    try:
        exec(compile(tree, f"<{component} plugin>", "exec"), namespace)  # noqa: S102 - checked above
    except Exception as exc:  # the code's own top level failed
        raise GateError("static", f"{component} code failed while loading: {type(exc).__name__}: {exc}") from None
    return namespace[ENTRY_POINTS[component]]
