"""Checks of command-line paths, made before a command starts any work, so a bad path fails with one
line and exit code 2 and leaves nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

from cambrian.errors import ConfigError


def output_dir(path: Path, option: str = "--out") -> Path:
    """A directory the command may create or write into: refused when it is a file, sits under a file,
    or its nearest existing folder is not writable."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: exists and is not a directory")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {ancestor} is not writable")
    return path


def data_dir(path: Path) -> Path:
    """A world data directory (`cambrian world generate`, `cambrian movielens`)."""
    if not (Path(path) / "world.json").is_file():
        raise ConfigError(f"{path}: not a data directory (no world.json)",
                          hint="create one with `cambrian world generate --out DIR`")
    return path
