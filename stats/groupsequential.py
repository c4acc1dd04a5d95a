"""Group-sequential boundaries with Lan-DeMets α-spending (reference §4.2 item 7).

When the maximum sample is planned (users per arm at the last daily look), a group-sequential test
spends its α over the looks and needs fewer users on average than an always-valid test, which
guards against any number of looks at any time. At information fractions t₁ < … < t_k (users so
far / planned users, capped at 1) the two-sided boundary c_k on |z| solves

    P₀(|Z_j| < c_j for j < k, |Z_k| ≥ c_k) = α(t_k) − α(t_{k−1}),

with Z_k = S(t_k)/√t_k for a Brownian motion S under no effect; the recursion integrates the
density of S over the continuation region look by look (Armitage, McPherson & Rowe; as ldbounds
and spotify-confidence do). Spending functions: O'Brien-Fleming-type α(t) = 2 − 2Φ(z_{α/2}/√t)
and Pocock-type α(t) = α·ln(1 + (e − 1)t). Looks past t = 1 spend nothing more (boundary ∞).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
from scipy import optimize
from scipy.stats import norm

Spending = Literal["obrien-fleming", "pocock"]
_GRID = 241  # points across the continuation region per look (odd: includes 0)


def spent(t: float, alpha: float, kind: Spending = "obrien-fleming") -> float:
    """Cumulative two-sided α spent by information fraction t."""
    t = min(max(t, 0.0), 1.0)
    if t <= 0:
        return 0.0
    if kind == "obrien-fleming":
        return float(2 - 2 * norm.cdf(norm.isf(alpha / 2) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"spending must be obrien-fleming or pocock, got {kind!r}")


def boundaries(fractions: Sequence[float], alpha: float = 0.05, kind: Spending = "obrien-fleming") -> list[float]:
    """Two-sided z boundaries c_k for looks at the given increasing information fractions."""
    fr = tuple(round(min(float(t), 1.0), 6) for t in fractions)
    if any(not (t > 0) for t in fr):
        raise ValueError(f"information fractions must be > 0, got {list(fractions)!r}")
    if any(b < a for a, b in zip(fr, fr[1:])):
        raise ValueError(f"information fractions must not decrease, got {list(fractions)!r}")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return list(_boundaries(fr, float(alpha), kind))


@lru_cache(maxsize=4096)
def _boundaries(fr: tuple[float, ...], alpha: float, kind: Spending) -> tuple[float, ...]:
    if len(fr) > 1:
        prev = _boundaries(fr[:-1], alpha, kind)
    else:
        prev = ()
    grid, dens = _density(fr[:-1], prev)
    t_k = fr[-1]
    target = spent(t_k, alpha, kind) - spent(fr[-2] if len(fr) > 1 else 0.0, alpha, kind)
    if target <= 1e-15:
        return (*prev, math.inf)
    if grid is None:  # first look: P(|Z| ≥ c) = target
        return (float(norm.isf(target / 2)),)
    dt = t_k - fr[-2]
    if dt <= 0:
        return (*prev, math.inf)
    sd = math.sqrt(dt)
    w = _weights(grid)

    def exit_prob(c: float) -> float:
        b = c * math.sqrt(t_k)
        return float(np.sum(w * dens * (norm.cdf((-b - grid) / sd) + norm.sf((b - grid) / sd)))) - target

    hi = 12.0
    if exit_prob(hi) > 0:
        return (*prev, hi)
    lo = 0.0
    if exit_prob(lo) < 0:   # even c = 0 cannot spend it (mass already gone)
        return (*prev, lo)
    return (*prev, float(optimize.brentq(exit_prob, lo, hi, xtol=1e-10)))


def _weights(grid: np.ndarray) -> np.ndarray:
    h = grid[1] - grid[0]
    w = np.full(grid.size, h)
    w[0] = w[-1] = h / 2
    return w


@lru_cache(maxsize=4096)
def _density_cached(fr: tuple[float, ...], bounds: tuple[float, ...]):
    grid = dens = None
    t_prev = 0.0
    for t, c in zip(fr, bounds):
        b = c * math.sqrt(t) if math.isfinite(c) else 12 * math.sqrt(t)
        new_grid = np.linspace(-b, b, _GRID)
        sd = math.sqrt(t - t_prev) if t > t_prev else 1e-12
        if grid is None:
            new = norm.pdf(new_grid / math.sqrt(t)) / math.sqrt(t)
        else:
            k = norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd
            new = k @ (_weights(grid) * dens)
        grid, dens, t_prev = new_grid, new, t
    return grid, dens


def _density(fr: tuple[float, ...], bounds: tuple[float, ...]):
    """Sub-density of S(t_last) on the continuation region after the given looks (None: no looks)."""
    if not fr:
        return None, None
    return _density_cached(fr, bounds)


def crossed(z: float, fractions: Sequence[float], alpha: float = 0.05,
            kind: Spending = "obrien-fleming") -> tuple[bool, float]:
    """(|z| ≥ c_k, c_k) at the last of the looks so far."""
    c = boundaries(fractions, alpha, kind)[-1]
    return abs(z) >= c, c


def conditional_power(z, t, c_final: float, drift: float):
    """P(Z(1) ≥ c_final | Z(t) = z) if the effect is the planned one (drift E[Z(1)]); arrays broadcast.

    With B(t) = Z√t, B(1) − B(t) ~ N(drift·(1 − t), 1 − t)."""
    t = np.asarray(t, float)
    rest = np.maximum(1 - t, 1e-12)
    return norm.sf((c_final - np.asarray(z, float) * np.sqrt(t) - drift * rest) / np.sqrt(rest))


def planned_drift(alpha: float, power: float) -> float:
    """E[Z] at the planned users when the true effect is the one the plan was sized for."""
    return float(norm.isf(alpha / 2) + norm.isf(1 - power))


def futile(z: float, fractions: Sequence[float], alpha: float, kind: Spending, power: float,
           min_conditional_power: float) -> tuple[bool, float]:
    """Non-binding futility (stochastic curtailment): stop without a launch when, even if the planned
    effect were true from now on, the chance of crossing the final boundary is below
    ``min_conditional_power``. Stopping early only lowers the false-promotion rate.
    Returns (futile, conditional power); never futile at or past the planned users."""
    t = min(float(fractions[-1]), 1.0)
    if t >= 1.0:
        return False, float("nan")
    c_final = boundaries((*fractions, 1.0), alpha, kind)[-1]
    cp = float(conditional_power(z, t, c_final, planned_drift(alpha, power)))
    return cp < min_conditional_power, cp
