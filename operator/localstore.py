"""Local mode's object store: Evolution, Hypothesis and Rollout objects with their status on disk.

One YAML file per object, `DIR/objects/<plural>/<name>.yaml`, in the API server's shape (apiVersion,
kind, metadata, spec, status), written atomically (temp file, fsync, rename): a kill at any moment
leaves either the old or the new object, never half of one. The same objects can be `kubectl apply`-ed
to a cluster. uids are derived from (kind, name), so names of children (which hash the owner's uid)
are the same in every run of the same manifest.
"""

from __future__ import annotations

import os
import pickle
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from cambrian.errors import ConfigError, one_line
from cambrian.operator import api
from cambrian.operator.loop import PLURALS

# libyaml when present: the driver reads every object at every pass
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
NAMESPACE = "default"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _version(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ParsedFiles:
    """Files parsed once per version, each caller getting its own copy of the result (None: no such file).
    Every writer of these files replaces one by a rename (write_atomic; another process's `cambrian apply` too),
    so a new version is a new inode: device, inode, size, mtime and ctime name the version that was read."""

    def __init__(self, parse: Callable[[str], Any]):
        self._parse = parse
        self._known: dict[Path, tuple[tuple[int, ...], bytes]] = {}

    def read(self, path: Path) -> Any:
        try:
            known = self._known.get(path)
            if known is not None and known[0] == _version(os.stat(path)):
                return pickle.loads(known[1])
            with open(path, "rb") as fh:  # the version of the bytes read: a rename after the stat above is seen
                version = _version(os.fstat(fh.fileno()))
                text = fh.read().decode("utf-8")
        except FileNotFoundError:
            self._known.pop(path, None)
            return None
        parsed = self._parse(text)
        self._known[path] = (version, pickle.dumps(parsed, protocol=pickle.HIGHEST_PROTOCOL))
        return parsed

    def forget(self, path: Path) -> None:
        self._known.pop(path, None)

    def forget_others(self, folder: Path, present: Iterable[Path]) -> None:
        """Drop what is kept for the files of `folder` not among `present` (deleted ones)."""
        keep = set(present)
        for gone in [p for p in self._known if p.parent == folder and p not in keep]:
            del self._known[gone]


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """Every cambrian.dev object of a YAML file (multi-document), validated like the API server would."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read ({one_line(exc)})") from None
    out = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("apiVersion") != api.API_VERSION:
            raise ConfigError(f"{path}: document {i + 1} is not a {api.API_VERSION} object",
                              hint=_old_format_hint(doc))
        api.parse_resource(doc)  # every field named in the error
        out.append(doc)
    if not out:
        raise ConfigError(f"{path}: no objects found")
    return out


def _old_format_hint(doc: Any) -> str | None:
    if isinstance(doc, dict) and ("data_dir" in doc or "generations" in doc):
        return ("this is the old `cambrian evolve --config` format: `cambrian evolve --config FILE` converts it to "
                "an Evolution object; or write one (see manifests/examples/evolution.yaml and README 'Local mode')")
    if isinstance(doc, dict) and ("treatments" in doc and isinstance(doc.get("treatments"), dict) or "ramp" in doc):
        return ("this is the old local rollout format; write a Rollout object instead "
                "(see manifests/examples/rollout.yaml and README 'Local mode')")
    return "see manifests/examples/ for Evolution and Rollout objects"


class LocalStore:
    """loop.Objects over files, plus the writes the local driver and platform make."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dir = self.root / "objects"
        # the driver reads every object at every pass: parsing YAML was most of its CPU (taken from the trainers)
        self._files = ParsedFiles(lambda text: yaml.load(text, Loader=_LOADER))

    def _path(self, plural: str, name: str) -> Path:
        if not _NAME.match(name):
            raise ConfigError(f"metadata.name {name!r}: must be a DNS-1123 subdomain (lower case, digits, '-', '.')")
        return self.dir / plural / f"{name}.yaml"

    # --- loop.Objects ----------------------------------------------------------------------
    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._files.read(self._path(plural, name))

    def list(self, plural: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        folder = self.dir / plural
        if not folder.is_dir():
            return []
        paths = sorted(folder.glob("*.yaml"))
        self._files.forget_others(folder, paths)
        return [obj for obj in map(self._files.read, paths) if obj is not None]

    # --- writes ----------------------------------------------------------------------------
    def put(self, obj: dict[str, Any]) -> None:
        write_atomic(self._path(PLURALS[obj["kind"]], obj["metadata"]["name"]),
                     yaml.dump(obj, Dumper=_DUMPER, sort_keys=False, allow_unicode=True))

    def create(self, obj: dict[str, Any], now: datetime, owner: Any = None) -> bool:
        """Create if absent ("already exists" is success: names are deterministic). True if created."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        if self.get(PLURALS[kind], NAMESPACE, name) is not None:
            return False
        meta = dict(obj["metadata"])
        meta.update(namespace=NAMESPACE, uid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cambrian-local/{kind}/{name}")),
                    generation=1, creationTimestamp=now.isoformat())
        if owner is not None:
            meta["ownerReferences"] = [{"apiVersion": api.API_VERSION, "kind": owner.kind, "name": owner.name,
                                        "uid": owner.uid, "controller": True}]
        self.put({"apiVersion": api.API_VERSION, "kind": kind, "metadata": meta, "spec": obj.get("spec") or {},
                  "status": {}})
        return True

    def apply(self, obj: dict[str, Any], now: datetime) -> str:
        """kubectl apply: create, or replace the spec (and bump the generation) if it changed."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        old = self.get(PLURALS[kind], NAMESPACE, name)
        if old is None:
            self.create(obj, now)
            return "created"
        if old.get("spec") == obj.get("spec"):
            return "unchanged"
        old["spec"] = obj.get("spec") or {}
        old["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        self.put(old)
        return "configured"

    def write_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        obj = self.get(PLURALS[kind], NAMESPACE, name)
        if obj is not None and obj.get("status") != status:
            obj["status"] = status
            self.put(obj)

    def annotate(self, kind: str, name: str, annotations: dict[str, str | None]) -> bool:
        """Merge `annotations` in; a None value removes that annotation (as null in a merge patch does)."""
        obj = self.get(PLURALS[kind], NAMESPACE, name)
        if obj is None:
            return False
        if annotations:
            merged = {**(obj["metadata"].get("annotations") or {}), **annotations}
            obj["metadata"]["annotations"] = {k: v for k, v in merged.items() if v is not None}
            self.put(obj)
        return True

    def all(self, kinds: Iterable[str] = ("Evolution", "Hypothesis", "Rollout")) -> list[dict[str, Any]]:
        return [o for k in kinds for o in self.list(PLURALS[k])]
