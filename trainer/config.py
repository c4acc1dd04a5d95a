"""The model configuration Φ: optimizer, architecture and reward, plus training settings.

Agents never write a whole Φ: they propose a `Delta` against it (trainer/delta.py). Every field has a
default, so the default `ModelConfig()` is the baseline ranking model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cambrian.errors import ConfigError

COMPONENTS = ("optimizer", "architecture", "reward", "training")
Component = Literal["optimizer", "architecture", "reward", "training"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(_Strict):
    """Any `torch.optim` class by name, or plugin code defining `build_optimizer(params, cfg)`."""

    name: str = "Adam"
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    params: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments (betas, momentum ...)")
    code: str | None = Field(None, description="plugin code; see trainer/plugins.py")


# The built-in architectures by name (trainer/models.py registers one class each); kept here so that
# code that only proposes or validates configs (the operator, the agents) never imports torch.
ARCHITECTURE_NAMES = ("mlp", "deepfm", "dcn")


class ArchitectureConfig(_Strict):
    """A registered architecture by name, or plugin code defining `class Model(nn.Module)`."""

    name: str = "mlp"
    embedding_dim: int = Field(16, ge=1, le=512)
    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    cross_layers: int = Field(2, ge=0, le=8, description="used by dcn")
    embedding_init_std: float = Field(0.01, gt=0, le=1)
    params: dict[str, Any] = Field(default_factory=dict)
    code: str | None = Field(None, description="plugin code; see trainer/plugins.py")

    @field_validator("hidden")
    @classmethod
    def _hidden_sizes(cls, v: list[int]) -> list[int]:
        if len(v) > 8 or any(h < 1 or h > 4096 for h in v):
            raise ValueError("hidden must be at most 8 layers of 1..4096 units")
        return v


class RewardConfig(_Strict):
    """Training labels as DuckDB SQL expressions over the columns of the `impressions` view.

    `label` must yield a finite number per impression (in [0, 1] for the bce loss); `weight` a finite
    non-negative sample weight. Columns: see trainer/data.py (IMPRESSION_COLUMNS).
    """

    label: str = "CAST(click AS DOUBLE)"
    weight: str = "1.0"
    loss: Literal["bce", "mse"] = "bce"
    long_watch_seconds: float = Field(60.0, gt=0, description="threshold of the long-watch surrogate")


class TrainingConfig(_Strict):
    epochs: int = Field(4, ge=1, le=200)
    batch_size: int = Field(1024, ge=8, le=262144)
    seed: int = 0
    max_train_examples: int | None = Field(500_000, ge=100, description="train on the most recent N impressions")
    grad_clip: float | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int = Field(1, ge=0, le=256, description="torch intra-op threads on CPU; 0 = torch's default. "
                             "One thread is fastest for small rankers and lets candidates train side by side")
    validation_days: int = Field(1, ge=1, description="the last N logged days are held out (temporal split)")


class ModelConfig(_Strict):
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    architecture: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """Stable content hash: two deltas that yield the same Φ share it (used for de-duplication)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def parse_config(data: Any, source: str = "config") -> ModelConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(exc)}") from None


def load_config(path: str | Path | None) -> ModelConfig:
    """Read Φ from a YAML or JSON file; None gives the baseline."""
    if path is None:
        return ModelConfig()
    return parse_config(read_structured_file(path), str(path))


def read_structured_file(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file", hint="check the path")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:  # unreadable or not text (binary garbage)
        raise ConfigError(f"{p}: not a readable UTF-8 text file: {exc}") from None
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML/JSON: {exc}") from None


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(root)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)
