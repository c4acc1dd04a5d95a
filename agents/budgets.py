"""Budgets: LLM tokens and dollars, training seconds, number of evaluations. Pure logic over the
journal's running totals, so a resumed run continues from what it already spent."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Spend:
    tokens: int
    dollars: float
    train_seconds: float
    evaluations: int


def llm_exhausted(b: Budgets, s: Spend) -> str | None:
    """The name of the LLM budget that is spent, or None."""
    if b.max_tokens is not None and s.tokens >= b.max_tokens:
        return f"tokens budget reached ({s.tokens} >= {b.max_tokens})"
    if b.max_dollars is not None and s.dollars >= b.max_dollars:
        return f"dollars budget reached (${s.dollars:.4f} >= ${b.max_dollars:g})"
    return None


def training_exhausted(b: Budgets, s: Spend, reserved: int = 0) -> str | None:
    """The name of the training budget that is spent (counting `reserved` runs already scheduled)."""
    if b.max_evaluations is not None and s.evaluations + reserved >= b.max_evaluations:
        return f"evaluations budget reached ({s.evaluations + reserved} >= {b.max_evaluations})"
    if b.max_train_seconds is not None and s.train_seconds >= b.max_train_seconds:
        return f"training-seconds budget reached ({s.train_seconds:.0f}s >= {b.max_train_seconds:g}s)"
    return None
