"""The exact de-duplication key of a candidate: the fingerprint of the applied Φ.

Two deltas that spell the same change differently (key order, a value equal to the default, a patch
that restates the baseline) apply to the same Φ and share the key, so they are trained once. The
training seed is normalised because seeds are replicas of one hypothesis, not different hypotheses.
"""

from __future__ import annotations

from typing import Any

from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import Delta, apply_delta, parse_delta


def normalised(config: ModelConfig) -> ModelConfig:
    data = config.model_dump(mode="json")
    data["training"]["seed"] = 0
    return ModelConfig.model_validate(data)


def applied(baseline: ModelConfig, delta: Delta) -> ModelConfig:
    return apply_delta(baseline, delta)


def fingerprint(baseline: ModelConfig, delta: Delta | None) -> str:
    cfg = baseline if delta is None else apply_delta(baseline, delta)
    return normalised(cfg).fingerprint()


def delta_from(data: Any, source: str = "delta") -> Delta:
    """Parse a proposal's delta (raises cambrian.errors.ConfigError naming the field)."""
    return parse_delta(data, source)


def with_seed(config: ModelConfig, seed: int) -> ModelConfig:
    data = config.model_dump(mode="json")
    data["training"]["seed"] = int(seed)
    return ModelConfig.model_validate(data)
