"""Guardrails: non-inferiority on the confidence sequence, and hard limits on observed values.

Non-inferiority (reference §4.2 item 8): with a margin m, a higher-is-better metric passes when the
whole always-valid interval lies above −m, fails when it lies wholly below −m (the arm is surely
worse than tolerated), and is pending otherwise. Lower-is-better mirrors this around +m.
Hard limits are absolute bounds on an arm's value (latency p99, error rate): any breach fails."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Literal, Mapping

Status = Literal["pass", "fail", "pending"]


@dataclass(frozen=True)
class Guardrail:
    """Tolerate at most ``margin`` of harm (a fraction of control if ``relative``, else metric units)."""

    metric: str
    margin: float = 0.0
    relative: bool = True
    higher_is_better: bool = True
    cuped: bool = True

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("Guardrail.metric must be a non-empty name")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"Guardrail.margin must be a finite number >= 0, got {self.margin!r}")


@dataclass(frozen=True)
class GuardrailResult:
    arm: str
    metric: str
    status: Status
    estimate: float | None     # None when the metric had too little data to estimate
    lower: float | None
    upper: float | None
    bound: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def non_inferiority(arm: str, guardrail: Guardrail, estimate: float, lower: float,
                    upper: float) -> GuardrailResult:
    """Judge one arm's guardrail from its effect and always-valid interval [lower, upper]."""
    g = guardrail
    unit = "relative" if g.relative else "absolute"
    if g.higher_is_better:
        bound = -g.margin
        status: Status = "pass" if lower > bound else "fail" if upper < bound else "pending"
        how = {"pass": "lower bound above", "fail": "upper bound below", "pending": "interval straddles"}
    else:
        bound = g.margin
        status = "pass" if upper < bound else "fail" if lower > bound else "pending"
        how = {"pass": "upper bound below", "fail": "lower bound above", "pending": "interval straddles"}
    reason = (f"guardrail {g.metric} on {arm}: {status} ({how[status]} the {unit} non-inferiority "
              f"bound {bound:+.4g}; effect {estimate:+.4g}, interval [{lower:+.4g}, {upper:+.4g}])")
    return GuardrailResult(arm, g.metric, status, estimate, lower, upper, bound, reason)


@dataclass(frozen=True)
class HardLimit:
    """An absolute bound on an arm's value, e.g. HardLimit("latency_p99_ms", max=250)."""

    metric: str
    max: float | None = None
    min: float | None = None

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("HardLimit.metric must be a non-empty name")
        if self.max is None and self.min is None:
            raise ValueError(f"HardLimit {self.metric!r}: set max, min or both")
        for name in ("max", "min"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"HardLimit {self.metric!r}.{name} must be finite, got {v!r}")


@dataclass(frozen=True)
class Breach:
    arm: str
    metric: str
    value: float
    bound: float
    kind: Literal["max", "min"]

    @property
    def reason(self) -> str:
        word = "above" if self.kind == "max" else "below"
        return f"hard limit: {self.metric} on {self.arm} is {self.value:.4g}, {word} the {self.kind} {self.bound:.4g}"

    def to_dict(self) -> dict:
        return {**asdict(self), "reason": self.reason}


def hard_limit_breaches(limits: Iterable[HardLimit], values: Mapping[str, Mapping[str, float]],
                        arms: Iterable[str]) -> tuple[list[Breach], list[str]]:
    """Check every limit for every arm. Returns (breaches, missing) where missing names
    "arm/metric" pairs without a finite value (cannot be verified, so never promote)."""
    breaches: list[Breach] = []
    missing: list[str] = []
    for arm in arms:
        for lim in limits:
            v = values.get(arm, {}).get(lim.metric)
            if v is None or not math.isfinite(float(v)):
                missing.append(f"{arm}/{lim.metric}")
                continue
            v = float(v)
            if lim.max is not None and v > lim.max:
                breaches.append(Breach(arm, lim.metric, v, lim.max, "max"))
            if lim.min is not None and v < lim.min:
                breaches.append(Breach(arm, lim.metric, v, lim.min, "min"))
    return breaches, missing
