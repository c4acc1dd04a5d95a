"""Always-valid inference for continuously monitored experiments (reference §4.2 items 5-6).

* mSPRT with a normal mixture N(0, τ²) over the effect (Johari, Pekelis & Walsh):
  Λ = √(V/(V+τ²)) · exp(τ²Δ²/(2V(V+τ²))), always-valid p_n = min(p_{n−1}, 1/Λ_n).
* The two-sided normal-mixture confidence sequence of Howard et al. (2021), information I = 1/V:
  Δ ± √((I+ρ)·ln((I+ρ)/(ρα²)))/I, with ρ tuned to the planned information.
The two are the same test: the sequence excludes 0 exactly when Λ ≥ 1/α with τ² = 1/ρ.
Both take whatever estimate and variance they are given (CUPED-adjusted or not, absolute or relative).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np


def msprt_log_lr(estimate, variance, tau):
    """log Λ of the normal-mixture mSPRT; arrays broadcast."""
    estimate, variance = np.asarray(estimate, float), np.asarray(variance, float)
    t2 = float(tau) ** 2
    return 0.5 * np.log(variance / (variance + t2)) + t2 * estimate**2 / (2 * variance * (variance + t2))


def msprt_p_value(estimate, variance, tau):
    """1/Λ clipped to [0, 1] at a single look (combine looks with ``update`` or a running min)."""
    return np.minimum(1.0, np.exp(-msprt_log_lr(estimate, variance, tau)))


def rho_for_information(planned_information: float, alpha: float = 0.05) -> float:
    """ρ that makes the confidence sequence tightest at the planned information I* (= 1/V*)."""
    _check_alpha(alpha)
    if not (planned_information > 0 and math.isfinite(planned_information)):
        raise ValueError(f"planned_information must be a positive number, got {planned_information!r}")
    la = math.log(1 / alpha)
    return planned_information / (2 * la + math.log(1 + 2 * la))


def cs_half_width(variance, alpha: float, rho: float):
    """Half-width of the normal-mixture confidence sequence at information 1/variance; arrays broadcast."""
    info = 1.0 / np.asarray(variance, float)
    return np.sqrt((info + rho) * np.log((info + rho) / (rho * alpha**2))) / info


def confidence_sequence(estimate: float, variance: float, alpha: float = 0.05, *,
                        rho: float) -> tuple[float, float]:
    """Always-valid (1 − α) interval for the effect: holds simultaneously at every look."""
    _check_alpha(alpha)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    if not variance > 0:
        raise ValueError(f"variance must be > 0, got {variance!r}")
    h = float(cs_half_width(variance, alpha, rho))
    return estimate - h, estimate + h


def planned_information(variance: float, n_now: float, n_planned: float) -> float:
    """Information expected at ``n_planned`` users per arm, scaled from the current variance at n_now."""
    if not (variance > 0 and n_now > 0 and n_planned > 0):
        raise ValueError(f"need variance, n_now, n_planned > 0, got {variance!r}, {n_now!r}, {n_planned!r}")
    return n_planned / (n_now * variance)


def _check_alpha(alpha: float) -> None:
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


@dataclass(frozen=True)
class SequentialState:
    """What one (arm, metric) test carries between looks; JSON-safe so it fits in a CR status.

    ``p_value`` is the running minimum of 1/Λ (monotone non-increasing across looks); ``sign`` is
    the direction of the estimate at the look that set it."""

    looks: int = 0
    p_value: float = 1.0
    sign: int = 0
    last_estimate: float | None = None
    last_variance: float | None = None
    tau: float | None = None    # the mixing sd, fixed at the first look (the mixture must not drift)
    fractions: tuple[float, ...] = ()   # group-sequential: information fraction of each look so far
    crossed: bool = False               # group-sequential: a boundary was crossed (in direction `sign`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SequentialState":
        if not d:
            return cls()
        known = {"looks", "p_value", "sign", "last_estimate", "last_variance", "tau", "fractions", "crossed"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"SequentialState: unknown field(s) {sorted(unknown)}")
        d = dict(d)
        try:
            d["fractions"] = tuple(float(t) for t in d.get("fractions") or ())
        except (TypeError, ValueError):
            raise ValueError(f"SequentialState.fractions must be a list of numbers, got {d.get('fractions')!r}") from None
        s = cls(**d)
        if not (0.0 <= float(s.p_value) <= 1.0):
            raise ValueError(f"SequentialState.p_value must be in [0, 1], got {s.p_value!r}")
        if int(s.looks) < 0:
            raise ValueError(f"SequentialState.looks must be >= 0, got {s.looks!r}")
        return s


def update(state: SequentialState | None, estimate: float, variance: float, tau: float) -> SequentialState:
    """Fold one look into the mSPRT state: p_n = min(p_{n−1}, 1/Λ_n)."""
    state = state or SequentialState()
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    if not (variance > 0 and math.isfinite(variance) and math.isfinite(estimate)):
        raise ValueError(f"need a finite estimate and a positive variance, got {estimate!r}, {variance!r}")
    p_now = float(msprt_p_value(estimate, variance, tau))
    if p_now < state.p_value:
        p, sign = p_now, int(np.sign(estimate))
    else:
        p, sign = state.p_value, state.sign
    return SequentialState(state.looks + 1, p, sign, float(estimate), float(variance), float(tau))


def update_group(state: SequentialState | None, estimate: float, variance: float, fraction: float,
                 alpha: float, spending: str = "obrien-fleming") -> SequentialState:
    """Fold one look into a group-sequential test: the look counts at information fraction
    ``fraction`` (users so far / planned, capped at 1) when that has grown since the last look, and
    the test is significant once |z| reaches the α-spending boundary. ``p_value`` is the nominal
    two-sided p at the crossing look (1 before), for reading; significance is ``crossed``."""
    from .groupsequential import boundaries

    state = state or SequentialState()
    if not (variance > 0 and math.isfinite(variance) and math.isfinite(estimate)):
        raise ValueError(f"need a finite estimate and a positive variance, got {estimate!r}, {variance!r}")
    fraction = min(1.0, float(fraction))
    if not fraction > 0:
        raise ValueError(f"information fraction must be > 0, got {fraction!r}")
    fr = state.fractions
    if not fr or round(fraction, 6) > round(fr[-1], 6):
        fr = (*fr, round(fraction, 6))
    if state.crossed:
        return SequentialState(state.looks + 1, state.p_value, state.sign, float(estimate), float(variance),
                               None, fr, True)
    c = boundaries(fr, alpha, spending)[-1]
    z = estimate / math.sqrt(variance)
    if abs(z) >= c:
        p = float(math.erfc(abs(z) / math.sqrt(2)))
        return SequentialState(state.looks + 1, p, int(np.sign(z)), float(estimate), float(variance), None, fr, True)
    return SequentialState(state.looks + 1, 1.0, 0, float(estimate), float(variance), None, fr, False)
