"""Model prices (USD per token) and the settings-file budgets of the previous evolve.yaml format (converted to
spec.agent.budgets by operator/legacy.py). Whether a budget is spent is the reconcile core's rule
(operator/reconcile/evolution.py exhausted_budget), on both platforms."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# USD per million tokens (input, output). Unknown models are charged at the most expensive known
# rate so that a budget is never under-counted.
PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-3-pro-preview": (2.0, 12.0),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "builtin": (0.0, 0.0),
}
_FALLBACK = max(PRICES.values(), key=lambda p: p[0] + p[1])


def price_of(model: str, extra: dict[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    table = {**PRICES, **(extra or {})}
    if model in table:
        return table[model]
    for name in sorted(table, key=len, reverse=True):  # versioned names: gemini-2.5-pro-002
        if model.startswith(name):
            return table[name]
    return _FALLBACK


def cost_usd(model: str, input_tokens: int, output_tokens: int, extra: dict | None = None) -> float:
    pin, pout = price_of(model, extra)
    return (input_tokens * pin + output_tokens * pout) / 1e6


class Budgets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(None, ge=0, description="LLM input+output tokens")
    max_dollars: float | None = Field(None, ge=0)
    max_train_seconds: float | None = Field(None, ge=0, description="sum of candidate training wall time")
    max_evaluations: int | None = Field(None, ge=1, description="training runs, each seed counts")
