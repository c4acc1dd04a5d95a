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
    fractions: tuple[float, ...] = ()   # group-sequential: spending time (share of the plan) of each look
    crossed: bool = False               # group-sequential: a boundary was crossed (in direction `sign`)
    information: tuple[float, ...] = ()  # group-sequential: information of each look (see information_unit)
    bounds: tuple[float, ...] = ()       # group-sequential: the |z| boundary each look used
    # group-sequential: what `information` counts: "variance" (1 / the estimate's variance), or "users" per
    # arm in a state written before (decide() keeps a test's unit: information in two units has no ratio)
    information_unit: str = "variance"
    # group-sequential: how the boundaries were computed (groupsequential.Rule): "exact" (independent
    # increments; every state written before the rule existed) or "union" (valid for any correlation between
    # looks). A test keeps its rule: switching mid-experiment would spend α twice.
    boundary_rule: str = "exact"

    @property
    def complete(self) -> bool:
        """A group-sequential design whose final look (spending time 1) has been taken."""
        return bool(self.fractions) and self.fractions[-1] >= 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bounds"] = [c if math.isfinite(c) else None for c in self.bounds]   # JSON has no infinity
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SequentialState":
        if not d:
            return cls()
        known = {"looks", "p_value", "sign", "last_estimate", "last_variance", "tau", "fractions", "crossed",
                 "information", "bounds", "information_unit", "boundary_rule"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"SequentialState: unknown field(s) {sorted(unknown)}")
        d = dict(d)
        if "information_unit" not in d and d.get("fractions"):
            d["information_unit"] = "users"   # a group test stored before information was the variance's
        if d.get("information_unit", "variance") not in ("variance", "users"):
            raise ValueError(f"SequentialState.information_unit must be variance or users, got {d['information_unit']!r}")
        from .groupsequential import check_rule  # scipy: only where a stored group test is read

        check_rule(d.get("boundary_rule", "exact"), "SequentialState.boundary_rule")
        for key in ("fractions", "information", "bounds"):
            try:   # a boundary of ∞ (nothing spent at that look) is stored as null: JSON has no infinity
                d[key] = tuple(math.inf if t is None else float(t) for t in d.get(key) or ())
            except (TypeError, ValueError):
                raise ValueError(f"SequentialState.{key} must be a list of numbers, got {d.get(key)!r}") from None
        if len(d["information"]) != len(d["bounds"]) or (d["information"] and len(d["fractions"]) != len(d["bounds"])):
            raise ValueError("SequentialState: fractions, information and bounds need one entry per look")
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


def _sig(info: float) -> float:
    """Information rounded to 12 significant digits: float noise in a recomputed variance neither makes a look
    "grow" nor changes the stored value. Significant digits, not decimals: information is 1 / a variance in the
    metric's own units, and 1e-10 (a variance of 1e10: milliseconds, cents) rounded to 9 decimals was 0."""
    return float(f"{info:.12g}")


def update_group(state: SequentialState | None, estimate: float, variance: float, fraction: float,
                 alpha: float, spending: str = "obrien-fleming", information: float | None = None,
                 rule: str = "exact") -> SequentialState:
    """Fold one look into a group-sequential test.

    ``information``: the look's information, 1 / the estimate's variance (``state.information_unit``;
    any unit proportional to it; default: ``fraction``); ``fraction``:
    its spending time in (0, 1] (the share of the planned horizon reached; 1 at the final look).
    The look gets the boundary that spends α(fraction) − α(previous fraction) given the boundaries
    the earlier looks actually used (stored in the state), so extra, missed or off-plan looks keep
    the false-decision rate at α. Under exact boundaries a look without new information is not a new test
    (the state is carried), except the final one (fraction 1), which spends what is left alone; under union
    boundaries every look is tested at what it spends. After the final look nothing is left to spend.
    ``p_value`` is the nominal two-sided p at the crossing look (1 before), for reading; significance is
    ``crossed``. ``rule``: groupsequential's boundary rule for a new test ("exact" or "union"); a test that has
    looked keeps its own."""
    from .groupsequential import boundaries, check_rule, look_boundary, spent_by

    state = state or SequentialState()
    if not (variance > 0 and math.isfinite(variance) and math.isfinite(estimate)):
        raise ValueError(f"need a finite estimate and a positive variance, got {estimate!r}, {variance!r}")
    fraction = min(1.0, float(fraction))
    info = float(fraction if information is None else information)
    if not (fraction >= 0 and info > 0 and math.isfinite(info)):   # fraction 0 (a look at time 0): nothing to spend
        raise ValueError(f"need an information fraction >= 0 and information > 0, got {fraction!r}, {information!r}")
    fr, infos, bds = state.fractions, state.information, state.bounds
    rule = check_rule(state.boundary_rule if fr else rule)
    if fr and not infos:   # a state written before looks kept their information: fractions were both
        infos, bds = fr, tuple(boundaries(fr, alpha, spending))
    carried = dict(looks=state.looks + 1, last_estimate=float(estimate), last_variance=float(variance),
                   fractions=fr, information=infos, bounds=bds, information_unit=state.information_unit,
                   boundary_rule=rule)
    grew = not infos or _sig(info) > _sig(infos[-1])
    if state.crossed or (fr and fr[-1] >= 1.0) or (not grew and rule == "exact" and fraction < 1.0):
        # decided already, the design is complete, or (exact boundaries) no new information since the last look
        return SequentialState(p_value=state.p_value, sign=state.sign, crossed=state.crossed, **carried)
    fraction = max(fraction, fr[-1] if fr else 0.0)
    # Union boundaries test each look alone at the α it spends, whatever its information. The final look of an
    # exact design whose information did not grow (a maturing metric's variance can rise) cannot use the
    # √(I_j/I_k) correlation: it spends what is left alone too (a union bound on the remainder: the total stays
    # ≤ α). Before, that look was skipped and a design ended inconclusive at any z.
    c = look_boundary(rule if grew else "union", (*infos, info), bds, spent_by(fraction, alpha, spending, rule)
                      - spent_by(fr[-1] if fr else 0.0, alpha, spending, rule))
    carried.update(fractions=(*fr, round(fraction, 9)), information=(*infos, _sig(info)), bounds=(*bds, c))
    z = estimate / math.sqrt(variance)
    if abs(z) >= c:
        return SequentialState(p_value=float(math.erfc(abs(z) / math.sqrt(2))), sign=int(np.sign(z)), crossed=True,
                               **carried)
    return SequentialState(p_value=1.0, sign=0, crossed=False, **carried)
