"""Run the real `cambrian` CLI (or any code) in a Python process where some modules cannot be imported,
as in an image built without them: the operator image has no torch, the serving image no kopf.

The child refuses an import of a blocked module (or any of its submodules) with ModuleNotFoundError,
hides the blocked distributions from importlib.metadata too (as a real `pip install` without them would),
and reports every refused import on stderr (`BLOCKED name <- importer`), so code that catches ImportError
and carries on is still caught pulling the module in. Third-party libraries probe optional modules that
way too (pandas, torch): blocked_imports() keeps the attempts made by the project's own code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterable

MARKER = "BLOCKED"

_PRELUDE = r'''
import importlib.abc, re, sys
BLOCKED = {blocked!r}
HIDDEN_DISTS = {dists!r}

def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

def _importer():
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename.startswith("<frozen") or "importlib" in f.f_code.co_filename):
        f = f.f_back
    return f.f_globals.get("__name__", "?") if f is not None else "?"

class _Without(importlib.abc.MetaPathFinder):
    # Wraps the whole meta path: a blocked module is found by no finder (import raises
    # ModuleNotFoundError, importlib.util.find_spec returns None), a hidden distribution by none either.
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            sys.stderr.write("{marker} " + name + " <- " + _importer() + "\n")
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, *args, **kwargs):
        for finder in self.finders:
            for dist in getattr(finder, "find_distributions", lambda *a, **k: ())(*args, **kwargs):
                if re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() not in HIDDEN_DISTS:
                    yield dist

    def invalidate_caches(self):
        for finder in self.finders:
            getattr(finder, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [_Without(list(sys.meta_path))]
'''


def prelude(modules: Iterable[str], dists: Iterable[str] = ()) -> str:
    """Python source that blocks `modules` (dotted names, submodules included) and hides `dists`."""
    return _PRELUDE.format(blocked=tuple(sorted(modules)), dists=frozenset(dists), marker=MARKER)


def argv(args: list[str], modules: Iterable[str], dists: Iterable[str] = ()) -> list[str]:
    """The command line of `cambrian ARGS` with the modules blocked (the console script's entry point)."""
    code = prelude(modules, dists) + "\nfrom cambrian.cli import main\nsys.argv = ['cambrian'] + sys.argv[1:]\nmain()\n"
    return [sys.executable, "-P", "-c", code, *args]  # -P: no working directory on sys.path, as the console script


def run_cli(args: list[str], modules: Iterable[str], dists: Iterable[str] = (), timeout: float = 300,
            env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv(args, modules, dists), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kwargs)


def blocked_imports(stderr: str, everyone: bool = False) -> list[str]:
    """The refused imports a child reported (`name <- importer`): those of the project's code (cambrian.*
    and the probe itself, __main__), or with everyone=True those of third-party libraries too."""
    out = set()
    for line in stderr.splitlines():
        if line.startswith(MARKER + " "):
            name, _, importer = line[len(MARKER) + 1:].partition(" <- ")
            if everyone or importer.split(".")[0] in ("cambrian", "__main__"):
                out.add(f"{name} <- {importer}")
    return sorted(out)


# Installed with any venv, not by an extra.
_TOOLING = {"pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel"}


def outside_extra(extra: str) -> set[str]:
    """Top-level modules of the installed distributions that `pip install 'cambrian[EXTRA]'` would not
    bring (the extra's transitive closure, from images/constraints.py): what that image lacks."""
    import importlib.metadata as md
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "image_constraints", Path(__file__).resolve().parents[1] / "images" / "constraints.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    allowed = set(gen.closure(extras=frozenset({extra}) if extra else frozenset(), skip=frozenset())) | {"cambrian"}
    out = set()
    for top, dists in md.packages_distributions().items():
        if top in _TOOLING or top in sys.stdlib_module_names or not top.isidentifier():
            continue
        if not any(re.sub(r"[-_.]+", "-", d).lower() in allowed for d in dists):
            out.add(top)
    return out
