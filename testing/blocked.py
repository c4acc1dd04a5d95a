"""Run the real `cambrian` CLI (or any code) in a Python process where some modules cannot be imported,
as in an image built without them: the operator image has no torch, the serving image no kopf.

The child refuses an import of a blocked module (or any of its submodules) with ModuleNotFoundError,
hides the blocked distributions from importlib.metadata too (as a real `pip install` without them would),
and reports every refused import on stderr with the marker BLOCKED, so code that catches ImportError
and carries on is still caught pulling the module in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterable

MARKER = "BLOCKED"

_PRELUDE = r'''
import importlib.abc, importlib.machinery, sys
BLOCKED = {blocked!r}
HIDDEN_DISTS = {dists!r}

def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            sys.stderr.write("{marker} " + name + "\n")
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
        return None

sys.meta_path.insert(0, _Refuse())
_find = importlib.machinery.PathFinder.find_distributions

def _without(*args, **kwargs):
    import re
    for dist in _find(*args, **kwargs):
        if re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() not in HIDDEN_DISTS:
            yield dist

importlib.machinery.PathFinder.find_distributions = staticmethod(_without)
'''


def prelude(modules: Iterable[str], dists: Iterable[str] = ()) -> str:
    """Python source that blocks `modules` (dotted names, submodules included) and hides `dists`."""
    return _PRELUDE.format(blocked=tuple(sorted(modules)), dists=frozenset(dists), marker=MARKER)


def argv(args: list[str], modules: Iterable[str], dists: Iterable[str] = ()) -> list[str]:
    """The command line of `cambrian ARGS` with the modules blocked (the console script's entry point)."""
    code = prelude(modules, dists) + "\nfrom cambrian.cli import main\nsys.argv = ['cambrian'] + sys.argv[1:]\nmain()\n"
    return [sys.executable, "-c", code, *args]


def run_cli(args: list[str], modules: Iterable[str], dists: Iterable[str] = (), timeout: float = 300,
            env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv(args, modules, dists), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kwargs)


def blocked_imports(stderr: str) -> list[str]:
    """The refused imports a child reported."""
    return sorted({line.split(" ", 1)[1] for line in stderr.splitlines() if line.startswith(MARKER + " ")})
