"""Settings of `cambrian evolve`: a YAML file, overridden by CAMBRIAN_EVOLVE_* environment variables.

    CAMBRIAN_EVOLVE_GENERATIONS=5
    CAMBRIAN_EVOLVE_BUDGETS__MAX_EVALUATIONS=30      (double underscore = nested field)
    CAMBRIAN_EVOLVE_PROVIDER__KIND=gemini
Values are parsed as YAML scalars/lists (`3`, `true`, `[a, b]`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cambrian.errors import ConfigError, one_line
from cambrian.agents.budgets import Budgets
from cambrian.agents.noise import NoiseSettings
from cambrian.agents.personas import PERSONAS
from cambrian.trainer.config import _format_errors

ENV_PREFIX = "CAMBRIAN_EVOLVE_"


class RunLimits(BaseModel):
    """Limits of one candidate training run (agents/runner.py applies them). A settings model here, not in
    the runner, so the operator reads settings without importing the machinery that runs candidates."""

    model_config = ConfigDict(extra="forbid")
    wall_seconds: float = Field(900.0, gt=0)
    address_space_mb: int | None = Field(None, ge=256, description="RLIMIT_AS; leave unset on CUDA machines")
    rss_mb: int | None = Field(6144, ge=64, description="resident memory of the whole process tree")
    cpu_seconds: int | None = Field(None, ge=1, description="RLIMIT_CPU; default wall_seconds x threads + 60")
    file_size_mb: int | None = Field(2048, ge=1)
    threads: int | None = Field(None, ge=1, description="OMP/MKL threads per candidate")
    network: str = Field("auto", pattern="^(auto|off|allow)$", description="off: fail if isolation is impossible")
    workers: int = Field(1, ge=1, le=256, description="data-parallel worker processes (`cambrian train --workers`)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderSettings(_Strict):
    kind: Literal["builtin", "gemini", "openai"] = "builtin"
    model: str | None = Field(None, description="default: gemini-2.5-pro for gemini; required for openai")
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="name of the variable holding the key (never the key)")
    temperature: float = Field(0.9, ge=0, le=2)
    max_output_tokens: int = Field(8192, ge=256)
    structured: bool = True
    retries: int = Field(1, ge=0, le=5, description="re-asks after an unusable answer")
    timeout_s: float = Field(300.0, gt=0)
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict, description="USD per 1M tokens (in, out)")


class Quotas(_Strict):
    explore: int = Field(1, ge=0)
    exploit: int = Field(1, ge=0)
    innovate: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _some(self) -> "Quotas":
        if self.explore + self.exploit + self.innovate == 0:
            raise ValueError("at least one proposal per wake-up is needed")
        return self

    def as_dict(self) -> dict[str, int]:
        return {"explore": self.explore, "exploit": self.exploit, "innovate": self.innovate}


class WarmStart(_Strict):
    journal: Path | None = Field(None, description="a previous run directory (or its journal.jsonl)")
    k: int = Field(3, ge=1, description="best K per persona re-evaluated on the current data")


class SqlSettings(_Strict):
    enabled: bool = True
    max_rows: int = Field(30, ge=1, le=1000)
    timeout_s: float = Field(10.0, gt=0)
    max_queries: int = Field(3, ge=0, le=10, description="queries per wake-up")


class EvolveConfig(_Strict):
    data_dir: Path
    run_dir: Path = Path("runs/evolve")
    baseline: Path | None = Field(None, description="Φ file; default: the baseline ModelConfig()")
    baseline_overrides: dict[str, Any] = Field(default_factory=dict, description="merged into Φ (e.g. training)")
    generations: int = Field(3, ge=1, le=1000)
    workers: int = Field(2, ge=1, le=64)
    personas: list[str] = Field(default_factory=lambda: list(PERSONAS))
    quotas: Quotas = Field(default_factory=Quotas)
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    budgets: Budgets = Field(default_factory=Budgets)
    limits: RunLimits = Field(default_factory=RunLimits)
    noise: NoiseSettings = Field(default_factory=NoiseSettings)
    warm_start: WarmStart = Field(default_factory=WarmStart)
    sql: SqlSettings = Field(default_factory=SqlSettings)
    journal_tokens: int = Field(8000, ge=200, description="context budget of the journal section (chars/4)")
    online_metrics: list[str] = Field(default_factory=lambda: ["next_day_return_rate", "watch_minutes_per_user"])
    steering: str | None = None
    repair: bool = True
    seed: int = 0
    train_command: list[str] | None = Field(None, description="default: this Python's `cambrian train`")

    @field_validator("personas")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p not in PERSONAS]
        if bad or not v:
            raise ValueError(f"unknown persona(s) {bad}; choose from {sorted(PERSONAS)}")
        return v


def _set_path(data: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = data.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            data[part] = nxt
        data = nxt
    data[path[-1]] = value


def apply_env(data: dict, env: dict[str, str] | None = None) -> dict:
    env = dict(os.environ if env is None else env)
    out = dict(data)
    for key in sorted(env):
        if key.startswith(ENV_PREFIX):
            path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
            if path:
                try:
                    value = yaml.safe_load(env[key]) if env[key] != "" else None
                except yaml.YAMLError as exc:
                    raise ConfigError(f"{key}: not a valid YAML value: {exc}".replace("\n", " ")) from None
                _set_path(out, path, value)
    return out


def parse_evolve_config(data: Any, source: str = "evolve config", env: dict[str, str] | None = None) -> EvolveConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    data = apply_env(data, env)
    try:
        return EvolveConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(exc)}") from None


def load_evolve_config(path: str | Path, env: dict[str, str] | None = None) -> EvolveConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file", hint="write a YAML file with at least `data_dir:`")
    try:
        data = yaml.safe_load(p.read_text())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {one_line(exc)}") from None
    cfg = parse_evolve_config(data, str(p), env)
    # relative paths in the file are relative to the file, not to the caller's directory
    base = p.resolve().parent
    updates: dict[str, Any] = {}
    for name in ("data_dir", "run_dir", "baseline"):
        v = getattr(cfg, name)
        if v is not None and not Path(v).is_absolute():
            updates[name] = base / v
    if cfg.warm_start.journal is not None and not cfg.warm_start.journal.is_absolute():
        updates["warm_start"] = cfg.warm_start.model_copy(update={"journal": base / cfg.warm_start.journal})
    return cfg.model_copy(update=updates)
