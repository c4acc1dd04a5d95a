"""The exact de-duplication key of a candidate: the fingerprint of the applied Φ.

Two deltas that spell the same change differently (key order, a value equal to the default, a patch
that restates the baseline, a reward expression in other case, parentheses or a cast to DOUBLE, or the data's
declared label written out: trainer/expressions.canonical_sql) apply to the same Φ and share the key, so they
are trained once; a delta whose key is the baseline's own changes nothing and is never trained
(`changes_nothing`). The training seed is normalised because seeds are replicas of one hypothesis, not
different hypotheses.
"""

from __future__ import annotations

from typing import Any

from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import Delta, apply_delta, parse_delta


def declared_label(schema: Any) -> str | None:
    """The label a data declaration (trainer/schema.py DataSchema) gives the row's `label` column: its expression,
    else its column; None without a declaration or a label."""
    label = getattr(schema, "label", None)
    return None if label is None else (label.expr or label.column)


def normalised(config: ModelConfig, label: str | None = None) -> ModelConfig:
    """`config` with the seed at 0 and its reward's SQL in one spelling (`label`: declared_label of the data)."""
    from cambrian.trainer.expressions import canonical_sql

    data = config.model_dump(mode="json")
    data["training"]["seed"] = 0
    for field in ("label", "weight"):
        data["reward"][field] = canonical_sql(data["reward"][field], label)
    return ModelConfig.model_validate(data)


def applied(baseline: ModelConfig, delta: Delta) -> ModelConfig:
    return apply_delta(baseline, delta)


def fingerprint(baseline: ModelConfig, delta: Delta | None, label: str | None = None) -> str:
    """The key of `delta` applied to `baseline` (None: the baseline's own); `label`: declared_label of the data."""
    cfg = baseline if delta is None else apply_delta(baseline, delta)
    return normalised(cfg, label).fingerprint()


def changes_nothing(baseline: ModelConfig, delta: Delta, label: str | None = None) -> bool:
    """Applied to `baseline`, the delta gives the baseline's own Φ (up to the seed and the spelling of its reward):
    training it would compare the champion with a replica of itself."""
    return fingerprint(baseline, delta, label) == fingerprint(baseline, None, label)


def delta_from(data: Any, source: str = "delta") -> Delta:
    """Parse a proposal's delta (raises cambrian.errors.ConfigError naming the field)."""
    return parse_delta(data, source)


def with_seed(config: ModelConfig, seed: int) -> ModelConfig:
    data = config.model_dump(mode="json")
    data["training"]["seed"] = int(seed)
    return ModelConfig.model_validate(data)
