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

from cambrian.errors import ConfigError, one_line

COMPONENTS = ("optimizer", "architecture", "reward", "training")
Component = Literal["optimizer", "architecture", "reward", "training"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# torch.optim's optimizer classes (a test compares them with the installed torch): the gate's static stage
# refuses a misspelt name in the trusted process, before a sandbox and a torch import are paid for it.
OPTIMIZER_NAMES = ("ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon", "NAdam",
                   "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam")


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
    """Training labels as DuckDB SQL expressions over the columns of one joined interaction row of the data's
    declaration (trainer/data.py reward_columns; the world's: IMPRESSION_COLUMNS).

    `label` must yield a finite number per interaction (in [0, 1] for the bce loss); `weight` a finite
    non-negative sample weight. The default learns the declared label (the column `label`: the world's click).
    """

    label: str = "label"
    weight: str = "1.0"
    loss: Literal["bce", "mse"] = "bce"
    long_watch_seconds: float = Field(60.0, gt=0, description="threshold of the long-watch surrogate")


class TrainingConfig(_Strict):
    epochs: int = Field(4, ge=1, le=200)
    batch_size: int = Field(1024, ge=8, le=262144)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="torch and numpy seeds take 32 bits")
    max_train_examples: int | None = Field(500_000, ge=100, le=10**10, description="train on the most recent N impressions")
    grad_clip: float | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int = Field(1, ge=0, le=256, description="torch intra-op threads on CPU; 0 = torch's default. "
                             "One thread is fastest for small rankers and lets candidates train side by side")
    validation_days: int = Field(1, ge=1, le=3650, description="the last N logged days are held out (temporal split)")
    shuffle_row_groups: int = Field(32, ge=1, le=1_000_000, description=(
        "the training rows are read from Parquet row groups of 65,536 rows: a split (or a worker's shard) of more "
        "row groups than this streams, shuffled within a buffer of this many row groups per epoch, so memory stays "
        "bounded; one that fits is loaded whole and shuffled whole"))


# Settings that define the evaluation rather than the model: the seed a run trains (the operator picks one per run:
# a candidate's replicas, the champion's noise floor) and the held-out days every run is scored on. Only the
# baseline sets them; a delta that touches them is refused (trainer/delta.py), so a candidate can neither pick a
# lucky seed nor move its own test rows away from the champion's.
EVALUATION_SETTINGS = {"training": {"seed": "the operator sets the seed of each run",
                                     "validation_days": "every run is scored on the champion's held-out days"},
                       "reward": {"long_watch_seconds": "it is also the threshold of the long_watch_corr proxy every "
                                                        "run is scored by; a label can name its own threshold"}}


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


# A config or delta is a few KB; these bounds keep a hostile one from hanging or exhausting the reader
# (10 KB of nested brackets, or a 1 KB alias "billion laughs" that expands to gigabytes when walked).
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ALIASES = 64
MAX_NODES = 100_000


class _LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses deep nesting and many aliases while composing (before any expansion)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(data: Any, limit: int) -> int:
    """Nodes in the data as a tree (shared aliases counted every time they appear), stopping past limit."""
    count, todo = 0, [data]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return count


def parse_structured_text(text: str, source: str) -> Any:
    """YAML (a superset of JSON) with size, depth, alias and expansion limits; ConfigError on anything else."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_FILE_BYTES >> 10} KiB")
    try:
        data = yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: not accepted: {exc}") from None
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{source}: not valid YAML/JSON: {one_line(exc)}") from None
    if _expanded_size(data, MAX_NODES) > MAX_NODES:
        raise ConfigError(f"{source}: not accepted: expands to more than {MAX_NODES:,} values (YAML aliases?)")
    return data


def read_structured_file(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file", hint="check the path")
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_FILE_BYTES >> 10} KiB")
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:  # unreadable or not text (binary garbage)
        raise ConfigError(f"{p}: not a readable UTF-8 text file: {exc}") from None
    return parse_structured_text(text, str(p))


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(root)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)
