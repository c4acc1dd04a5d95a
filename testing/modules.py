"""A test helper file (another suite's conftest, a script) loaded as a module by its path: conftest modules
are not importable by name, and several suites share the agents' tiny world and fake trainer."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from cambrian.testing.cluster import REPO_ROOT


def load_file(relative: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, Path(REPO_ROOT) / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
