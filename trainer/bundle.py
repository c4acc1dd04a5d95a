"""Model bundles: a versioned directory a server can serve without running any candidate code in its process.

Layout: bundle.json (format, version, Φ, feature spec, metrics), model.pt2 (a torch.export program with
a dynamic batch dimension, one positional input per name of spec.inputs), features.npz (the declared features'
model inputs per user and item id with their vocabularies and statistics, trainer/features.py, so serving needs
no access to the training logs). The candidate's process wrote model.pt2, and torch.export.load unpickles parts of it, so only a
contained process loads it (trainer/host.py); the caller's process reads bundle.json and features.npz only
(JSON and pickle-free arrays).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from cambrian.errors import ConfigError
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.features import Catalogue, FeatureSpec, model_batch, save_catalogue
from cambrian.trainer.host import Containment, ProgramHost

if TYPE_CHECKING:  # torch is imported where a program is made or run, never by a server's own process
    from torch import nn

FORMAT = "cambrian-bundle"
VERSION = 2  # 2: declared features (features.npz carries the feature spec)


def export_model(model: nn.Module, spec: FeatureSpec, catalogue: Catalogue, path: str | Path) -> None:
    """Trace the model into a torch.export program (runs the candidate's forward, in eval mode: inside the sandbox)."""
    import torch

    class _Positional(torch.nn.Module):
        """Adapts the dict-batch model to positional tensors (spec.inputs) so it can be exported."""

        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(model_batch(spec, list(inputs)))

    model = model.to("cpu").eval()
    n = 4
    example = catalogue.features(np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64) % spec.n_items)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[k])) for k in spec.inputs)
    rows = torch.export.Dim("rows", min=1, max=1 << 30)
    # forward(*inputs) takes one argument, the tuple of inputs: its shapes are one tuple too
    program = torch.export.export(_Positional(model), args, dynamic_shapes=(tuple({0: rows} for _ in args),))
    torch.export.save(program, str(path))


def load_program(path: str | Path) -> nn.Module:
    """The exported program as a callable module. Only ever called inside the sandbox: torch.export.load may
    unpickle payloads of the archive, which the candidate's process wrote."""
    import torch

    return torch.export.load(str(path)).module()


def write_bundle(path: str | Path, program_file: Path, config: ModelConfig, spec: FeatureSpec, catalogue: Catalogue,
                 metrics: dict) -> Path:
    """The bundle from an exported program and the trusted side's own features, Φ and metrics."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(program_file, out / "model.pt2")
    save_catalogue(out / "features.npz", catalogue)
    manifest = {"format": FORMAT, "version": VERSION, "config": config.model_dump(mode="json"),
                "config_fingerprint": config.fingerprint(), "feature_spec": spec.to_dict(), "metrics": metrics}
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


class Bundle:
    """A loaded model: `score(user_ids[n], candidates[n, C]) -> float32[n, C]` (higher ranks first). The ids are
    checked here; the program runs in the bundle's contained host process (`close()` ends it)."""

    def __init__(self, path: Path, manifest: dict, host: ProgramHost):
        self.path = path
        self.manifest = manifest
        self.host = host
        self.spec = FeatureSpec.from_dict(manifest["feature_spec"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["config_fingerprint"]

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.manifest["config"])

    def score(self, user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        user_ids = np.asarray(user_ids, dtype=np.int64)
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.ndim != 2 or candidates.shape[0] != user_ids.shape[0]:
            raise ValueError(f"candidates must be [n_users, C]; got {candidates.shape} for {user_ids.shape[0]} users")
        if user_ids.size and (user_ids.min() < 0 or user_ids.max() >= self.spec.n_users):
            raise ValueError(f"user ids must be in [0, {self.spec.n_users})")
        if candidates.size and (candidates.min() < 0 or candidates.max() >= self.spec.n_items):
            raise ValueError(f"item ids must be in [0, {self.spec.n_items})")
        users = np.repeat(user_ids, candidates.shape[1])
        return self.host.score(users, candidates.reshape(-1)).reshape(candidates.shape)

    def close(self) -> None:
        self.host.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_bundle(path: str | Path, sandbox: Containment = "auto") -> Bundle:
    """Read the manifest and start the contained host of the bundle's program (a program that does not load
    fails with stage export)."""
    p = Path(path)
    try:
        manifest = json.loads((p / "bundle.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: not a model bundle ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        got = manifest if not isinstance(manifest, dict) else f"{manifest.get('format')} v{manifest.get('version')}"
        raise ConfigError(f"{p}: bundle format {got} is not supported (expected {FORMAT} v{VERSION})")
    for name in ("model.pt2", "features.npz"):
        if not (p / name).is_file():
            raise ConfigError(f"{p}: not a model bundle (no {name})")
    host = ProgramHost(p, sandbox)
    try:
        host.start()
    except BaseException:
        host.close()
        raise
    return Bundle(p, manifest, host)
