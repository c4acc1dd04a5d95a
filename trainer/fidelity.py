"""A cheaper training of the same Φ: the reconcile core's first look (operator/reconcile/fidelity.py).

The operator sends {"epochFraction": f_e, "sampleFraction": f_s} beside the config and the delta; it applies
after the delta (a training delta's epochs are scaled too), so a first look is the candidate itself, trained
for fewer epochs on fewer of the most recent examples:
    epochs             -> max(1, round(epochs * f_e))
    max_train_examples -> max(100, round(n * f_s)), n = the training examples Φ would use: min(its cap, the
                          training rows of the data) (the trainer keeps the most recent N)
so the sample is a fraction of what the full run trains on, whether the cap or the data is the smaller.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

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


def at_fidelity(config: ModelConfig, fidelity: Mapping[str, Any] | None,
                available: Callable[[], int] | None = None) -> ModelConfig:
    """`config` trained at the given fidelity (None: unchanged). `available()`: the data's training rows (asked
    only when a sample is taken); without it the fraction applies to the cap alone."""
    if fidelity is None:
        return config
    fe, fs = parse_fidelity(fidelity)
    t = config.training
    n = t.max_train_examples
    if fs < 1 and available is not None:
        rows = available()
        n = rows if n is None else min(n, rows)
    update = {"epochs": max(1, round(t.epochs * fe)),
              "max_train_examples": n if n is None or fs == 1 else max(MIN_EXAMPLES, round(n * fs))}
    return config.model_copy(update={"training": t.model_copy(update=update)})


def training_rows(data: str | Path, validation_days: int) -> int:
    """The rows load_dataset would train on before any cap: impressions before the held-out days, counted by the
    data check's streaming pass through the source's declaration (as prepare counts them, so any source and table
    layout counts the same, and memory holds one batch)."""
    from cambrian.trainer.data import source_schema
    from cambrian.trainer.datacheck import require_valid
    from cambrian.trainer.sources import close, open_source

    schema = source_schema(data)
    source = open_source(str(data))
    try:
        per_day = require_valid(schema, source, str(data)).tables[schema.interactions].rows_per_day
    finally:
        close(source)
    held = sorted(per_day)[-validation_days:]
    return sum(n for day, n in per_day.items() if day < min(held)) if held else 0


def load_fidelity(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    from cambrian.trainer.config import read_structured_file

    data = read_structured_file(path)
    parse_fidelity(data, str(path))
    return dict(data)
