"""The store of finished baseline runs: the noise floor's seeds are trained once per (data, baseline Φ with its
seed, training settings, trainer), and a second Evolution on the same data and configuration reuses them instead of
training them again. Locally the store is `DIR/runstore/` (operator/platform/local.py); in the cluster it is
`runstore/` on the Evolution's storage claim, read by the training pod's trusted steps (trainer/train.py
`prepare_pod`, `score_pod`): the pod computes the data's identity, which the operator cannot see.

Only baseline runs are kept: a candidate is deduplicated by its fingerprint within its Evolution already,
and the baseline is what every Evolution on the same data starts with. The key covers everything a run's
result depends on: Φ (parsed, so equivalent spellings match), spec.training, the data (every file's relative path
and size, and its modification time where the folder persists, or its content where each pod writes it afresh),
the trainer command and the trainer's source. A stored run is its metrics (from the scorer, never from candidate
code) and its bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

STORE = "runstore"
MARKER = "world.json"  # a data folder's description: the world generator's, or a fetched snapshot's (trainer/fetch.py)
DIGEST = "content_sha256"  # in a fetched snapshot's marker: its content's digest
REUSE = "reuse.json"  # in a pod's step inputs: prepare found this run stored, the candidate steps have nothing to do


def data_fingerprint(data: Path, content: bool = False, skip: tuple[str, ...] = ()) -> str:
    """What identifies the data a run read: every file's relative path and size, with its modification time, or
    (`content`) the hash of its bytes: a pod's world or fetched snapshot is written afresh every time, so only its
    content can tell it is the same. A fetched snapshot (trainer/fetch.py) carries the digest of its content, taken
    by the trusted fetch when it wrote it: that is its identity (the same rows fetched again by another Evolution
    are the same data, and a large snapshot is not read again for it)."""
    digest = _snapshot_digest(data) if not skip else None
    if digest is not None:
        return hashlib.sha256(f"snapshot\0{digest}".encode()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(data.rglob("*")):
        if p.is_file() and str(p.relative_to(data)) not in skip:
            st = p.stat()
            h.update(f"{p.relative_to(data)}\0{st.st_size}\0".encode())
            h.update(_file_hash(p) if content else str(st.st_mtime_ns).encode())
            h.update(b"\n")
    return h.hexdigest()


def _snapshot_digest(data: Path) -> str | None:
    try:
        meta = json.loads((data / MARKER).read_text())
        digest = meta.get(DIGEST)
    except (OSError, ValueError, AttributeError):
        return None
    # the declaration it is read through is part of what the rows mean (a built-in one is named, not copied)
    return f"{meta.get('declaration')}\0{digest}" if isinstance(digest, str) and len(digest) == 64 else None


def _file_hash(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def trainer_fingerprint() -> str:
    """The trainer's source (a changed trainer is a different run, whatever the version says)."""
    import cambrian.trainer as trainer

    h = hashlib.sha256()
    folder = Path(trainer.__file__).parent
    for p in sorted(folder.rglob("*.py")):
        h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def run_key(request: Mapping[str, Any], data: Path, command: list[str] | None, content: bool = False) -> str:
    from cambrian.trainer.config import parse_config

    config = parse_config(request["baseline"], "baseline").model_dump(mode="json")
    body = {"config": config, "delta": request.get("delta"), "training": request.get("training") or {},
            "data": data_fingerprint(data, content), "command": command or ["cambrian", "train"],
            "trainer": trainer_fingerprint()}
    if request.get("fidelity") is not None:  # a first look is another run than the full one (absent: keys as before)
        body["fidelity"] = request["fidelity"]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def reusable(request: Mapping[str, Any]) -> bool:
    return request.get("hypothesis") is None and request.get("delta") is None


def lookup(root: Path, key: str) -> dict[str, Any] | None:
    """The stored run's metrics and bundle folder, or None."""
    entry = root / STORE / key
    try:
        metrics = json.loads((entry / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return {"metrics": metrics, "bundle": entry / "bundle"} if (entry / "bundle").is_dir() else None


def keep(root: Path, key: str, metrics: Mapping[str, Any], bundle: Path) -> None:
    """Store a finished run (all or nothing: a kill midway leaves no entry)."""
    entry = root / STORE / key
    if entry.exists() or not bundle.is_dir():
        return
    tmp = entry.with_name(entry.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle, tmp / "bundle")
    (tmp / "metrics.json").write_text(json.dumps(dict(metrics), sort_keys=True, default=float))
    os.replace(tmp, entry)


def restore(stored: Mapping[str, Any], bundle: Path) -> None:
    """A stored run's bundle copied to where this run's bundle belongs."""
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(stored["bundle"], bundle)
