"""Which optional dependencies ("extras" in pyproject.toml) a command needs, and the one-line error when
they are missing. The images install one extra each (the operator image has no torch, the serving image
no kopf), so a command run in the wrong image, or after a bare `pip install cambrian`, must say what to
install instead of failing deep inside with a traceback.

The extras' contents are read from the installed distribution's metadata: pyproject.toml stays the one
list of dependencies.
"""

from __future__ import annotations

import importlib.metadata as md
import re

from cambrian.errors import MissingExtra

DIST = "cambrian"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extra: str) -> set[str]:
    """Canonical distribution names the extra brings, with the extras it names (`cambrian[a,b]`) expanded.
    Empty when cambrian is not installed as a distribution (run from a bare source tree)."""
    try:
        lines = md.requires(DIST) or []
    except md.PackageNotFoundError:
        return set()
    by_extra: dict[str, list[tuple[str, list[str]]]] = {}
    for line in lines:
        spec, _, marker = line.partition(";")
        m, e = _NAME.match(spec), _EXTRA.search(marker)
        if m and e:
            nested = [x.strip() for x in (m.group(2) or "").split(",") if x.strip()]
            by_extra.setdefault(e.group(1), []).append((_canonical(m.group(1)), nested))
    out: set[str] = set()
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dist, nested in by_extra.get(name, []):
            if dist == DIST:
                todo.extend(nested)
            else:
                out.add(dist)
    return out


def missing(extra: str) -> list[str]:
    """The extra's distributions that are not installed."""
    out = []
    for dist in sorted(requirements(extra)):
        try:
            md.distribution(dist)
        except md.PackageNotFoundError:
            out.append(dist)
    return out


def error(command: str, extra: str, what: list[str]) -> MissingExtra:
    return MissingExtra(f"cambrian {command} needs the '{extra}' extra ({', '.join(what)} not installed); "
                        f"install it with: pip install 'cambrian[{extra}]'")


def require(command: str, extra: str | None) -> None:
    """Raise MissingExtra before the command starts when its extra is not fully installed."""
    if extra is None:
        return
    lacking = missing(extra)
    if lacking:
        raise error(command, extra, lacking)


def from_import_error(command: str, extra: str | None, exc: ModuleNotFoundError) -> MissingExtra | None:
    """A third-party module missing while the command ran: the same error, naming the module. None for
    a module of the project itself (a bug, not an installation problem) or a command without an extra."""
    top = (exc.name or "").split(".")[0]
    if extra is None or not top or top == DIST:
        return None
    return error(command, extra, [exc.name])
