"""A cheaper training of the same Φ: the reconcile core's first look (operator/reconcile/fidelity.py).

The operator sends {"epochFraction": f_e, "sampleFraction": f_s} beside the config and the delta; it applies
after the delta (a training delta's epochs are scaled too), so a first look is the candidate itself, trained
for fewer epochs on fewer of the most recent examples:
    epochs             -> max(1, round(epochs * f_e))
    max_train_examples -> max(100, round(max_train_examples * f_s))   (the trainer keeps the most recent N)
A Φ without an example cap (max_train_examples null) keeps every example: its size is only known once the data
is read, and a cap is what the trainer already understands.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from cambrian.errors import ConfigError
from cambrian.trainer.config import ModelConfig

MIN_EXAMPLES = 100  # TrainingConfig.max_train_examples' lower bound


def parse_fidelity(data: Any, source: str = "fidelity") -> tuple[float, float]:
    """(epoch fraction, sample fraction), each in (0, 1]; anything else is a clear error."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with epochFraction and sampleFraction")
    unknown = set(data) - {"epochFraction", "sampleFraction"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (epochFraction, sampleFraction)")
    out = []
    for key in ("epochFraction", "sampleFraction"):
        v = data.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            raise ConfigError(f"{source}: {key} must be a number in (0, 1], got {v!r}")
        out.append(float(v))
    return out[0], out[1]


def at_fidelity(config: ModelConfig, fidelity: Mapping[str, Any] | None) -> ModelConfig:
    """`config` trained at the given fidelity (None: unchanged)."""
    if fidelity is None:
        return config
    fe, fs = parse_fidelity(fidelity)
    t = config.training
    cap = t.max_train_examples
    update = {"epochs": max(1, round(t.epochs * fe)),
              "max_train_examples": cap if cap is None else max(MIN_EXAMPLES, min(cap, round(cap * fs)))}
    return config.model_copy(update={"training": t.model_copy(update=update)})


def load_fidelity(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    from cambrian.trainer.config import read_structured_file

    data = read_structured_file(path)
    parse_fidelity(data, str(path))
    return dict(data)
