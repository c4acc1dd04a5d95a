"""Model bundles: a versioned directory a server can load without running any candidate code.

Layout: bundle.json (format, version, Φ, feature spec, metrics), model.pt2 (a torch.export program with
a dynamic batch dimension: loading it runs no Python from the candidate), features.npz (observable item and
user features, so serving needs no access to the training logs).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cambrian.errors import ConfigError
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.data import Catalogue, FeatureSpec

FORMAT = "cambrian-bundle"
VERSION = 1


class _Positional(nn.Module):
    """Adapts the dict-batch model to positional tensors so it can be exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, user, item, topic, home_topic, dense):
        return self.model({"user": user, "item": item, "topic": topic, "home_topic": home_topic, "dense": dense})


ARG_NAMES = ("user", "item", "topic", "home_topic", "dense")


def export_model(model: nn.Module, spec: FeatureSpec, catalogue: Catalogue, path: str | Path) -> None:
    """Trace the model into a torch.export program (runs the candidate's forward, in eval mode: inside the sandbox)."""
    model = model.to("cpu").eval()
    n = 4
    example = catalogue.features(np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64) % spec.n_items)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[k])) for k in ARG_NAMES)
    rows = torch.export.Dim("rows", min=1, max=1 << 30)
    program = torch.export.export(_Positional(model), args, dynamic_shapes=tuple({0: rows} for _ in args))
    torch.export.save(program, str(path))


def load_program(path: str | Path) -> nn.Module:
    """The exported program as a callable module; no Python of the candidate runs (its custom operators,
    if it registered any, do not exist here, so such a program fails to load)."""
    return torch.export.load(str(path)).module()


def write_bundle(path: str | Path, program_file: Path, config: ModelConfig, spec: FeatureSpec, catalogue: Catalogue,
                 metrics: dict) -> Path:
    """The bundle from an exported program and the trusted side's own features, Φ and metrics."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(program_file, out / "model.pt2")
    np.savez(out / "features.npz", item_topic=catalogue.item_topic, item_dense=catalogue.item_dense,
             user_home_topic=catalogue.user_home_topic)
    manifest = {"format": FORMAT, "version": VERSION, "config": config.model_dump(mode="json"),
                "config_fingerprint": config.fingerprint(), "feature_spec": spec.to_dict(), "metrics": metrics}
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


class Bundle:
    """A loaded model: `score(user_ids[n], candidates[n, C]) -> float32[n, C]` (higher ranks first)."""

    def __init__(self, path: Path, manifest: dict, module: torch.nn.Module, catalogue: Catalogue):
        self.path = path
        self.manifest = manifest
        self.module = module
        self.catalogue = catalogue
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
        feats = self.catalogue.features(users, candidates.reshape(-1))
        args = [torch.from_numpy(np.ascontiguousarray(feats[k])) for k in ARG_NAMES]
        with torch.inference_mode():
            out = self.module(*args)
        return out.float().numpy().reshape(candidates.shape)


def load_bundle(path: str | Path) -> Bundle:
    p = Path(path)
    try:
        manifest = json.loads((p / "bundle.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: not a model bundle ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(f"{p}: bundle format {manifest.get('format')} v{manifest.get('version')} is not supported "
                          f"(expected {FORMAT} v{VERSION})")
    module = load_program(p / "model.pt2")
    with np.load(p / "features.npz") as f:
        catalogue = Catalogue(f["item_topic"], f["item_dense"], f["user_home_topic"])
    return Bundle(p, manifest, module, catalogue)
