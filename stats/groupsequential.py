"""Group-sequential boundaries with Lan-DeMets α-spending (reference §4.2 item 7).

When the maximum sample is planned (users per arm at the last daily look), a group-sequential test
spends its α over the looks and needs fewer users on average than an always-valid test, which
guards against any number of looks at any time. At looks with information I₁ < … < I_k the
two-sided boundary c_k on |z| solves

    P₀(|Z_j| < c_j for j < k, |Z_k| ≥ c_k) = α(s_k) − α(s_{k−1}),

with Z_j = S(I_j)/√I_j for a Brownian motion S under no effect and s_k the look's spending time
(its information fraction of the plan, in [0, 1]); the recursion integrates the density of S over
the continuation region look by look (Armitage, McPherson & Rowe; as ldbounds and spotify-confidence
do). Only the ratios of the I_j matter, so the looks need not be the planned ones: an extra look
spends the α its spending time allows, a missed look leaves its α to the next, and a look whose
information falls short of or overshoots the plan is computed with the information it has (Lan &
DeMets 1983). Spending functions: O'Brien-Fleming-type α(s) = 2 − 2Φ(z_{α/2}/√s) and Pocock-type
α(s) = α·ln(1 + (e − 1)s). Once s = 1 nothing is left to spend (boundary ∞).

Two boundary rules (``Rule``). "exact": the recursion above, valid when the looks' estimates have
independent increments (corr(Z_j, Z_k) = √(I_j/I_k)). "union": each look is tested alone at the α it
spends, |z| ≥ z_{Δα/2} (Bonferroni over the looks): P(any crossing) ≤ Σ Δα ≤ α whatever the correlation
between looks. It is the rule for a metric that keeps maturing (each user's mean over their days since
exposure: the looks' correlation is below √(I_j/I_k) and per-arm sums cannot measure it, so exact
boundaries are too low). Its spending time is rounded down to a grid of UNION_STEPS steps, so that at
most UNION_STEPS looks spend α however often one looks (daily looks would split the last steps' α
into slivers, each with a high boundary); looks between steps spend nothing.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
from scipy import optimize
from scipy.special import ndtr, ndtri

# scipy.special's normal cdf and quantile: the same values as scipy.stats.norm without its argument
# checks, which cost more than the arithmetic when decide() runs at every look of every experiment.
_SQRT2PI = math.sqrt(2 * math.pi)


def _isf(p):
    return -ndtri(p)


def _pdf(x):
    return np.exp(-0.5 * np.square(x)) / _SQRT2PI

Spending = Literal["obrien-fleming", "pocock"]
Rule = Literal["exact", "union"]
RULES = ("exact", "union")
UNION_STEPS = 2   # the union rule's spending grid: α(½) at half time, the rest at the end (module docstring)
_GRID = 241  # points across the continuation region per look (odd: includes 0)


def check_rule(rule: object, where: str = "boundary rule") -> Rule:
    """`rule` if it is one of RULES; else a ValueError naming `where` (every reader of a rule checks here)."""
    if rule not in RULES:
        raise ValueError(f"{where} must be exact or union, got {rule!r}")
    return rule  # type: ignore[return-value]


@lru_cache(maxsize=65536)
def spent(t: float, alpha: float, kind: Spending = "obrien-fleming") -> float:
    """Cumulative two-sided α spent by information fraction t."""
    t = min(max(t, 0.0), 1.0)
    if t <= 0:
        return 0.0
    if kind == "obrien-fleming":
        return float(2 - 2 * ndtr(_isf(alpha / 2) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"spending must be obrien-fleming or pocock, got {kind!r}")


def spent_by(t: float, alpha: float, kind: Spending = "obrien-fleming", rule: Rule = "exact") -> float:
    """Cumulative two-sided α a rule's looks may have spent by spending time t (the union rule's time is
    rounded down to its grid; a grid is a spending function too: fixed, non-decreasing, α at 1)."""
    if check_rule(rule) == "union":
        t = math.floor(min(max(t, 0.0), 1.0) * UNION_STEPS + 1e-9) / UNION_STEPS
    return spent(t, alpha, kind)


def look_boundary(rule: Rule, information: Sequence[float], bounds: Sequence[float], target: float) -> float:
    """|z| boundary of a new look that spends ``target``: exact (``next_boundary``, given the earlier
    looks' information and boundaries) or union (the look alone: P(|Z| ≥ c) = target; ∞ for nothing)."""
    if check_rule(rule) == "exact":
        return next_boundary(information, bounds, target)
    return math.inf if target <= 1e-15 else float(_isf(min(float(target), 1.0) / 2))


def boundaries(fractions: Sequence[float], alpha: float = 0.05, kind: Spending = "obrien-fleming") -> list[float]:
    """Two-sided z boundaries c_k for looks at the given increasing information fractions (each
    fraction is both the look's information and its spending time; capped at 1)."""
    fr = tuple(round(min(float(t), 1.0), 6) for t in fractions)
    if any(not (t > 0) for t in fr):
        raise ValueError(f"information fractions must be > 0, got {list(fractions)!r}")
    if any(b < a for a, b in zip(fr, fr[1:])):
        raise ValueError(f"information fractions must not decrease, got {list(fractions)!r}")
    _check_alpha(alpha)
    bounds: list[float] = []
    for k in range(len(fr)):
        bounds.append(next_boundary(fr[:k + 1], bounds, spent(fr[k], alpha, kind)
                                    - spent(fr[k - 1] if k else 0.0, alpha, kind)))
    return bounds


def next_boundary(information: Sequence[float], bounds: Sequence[float], target: float) -> float:
    """Boundary of a new look at ``information[-1]`` after looks at ``information[:-1]`` that used
    ``bounds``, such that the chance under no effect of first crossing at this look is ``target``
    (the α the spending function allows between the previous look's spending time and this one's).
    Information: 1 / the estimate's variance, in any unit proportional to it; ∞ when nothing is to be
    spent or nothing was added."""
    info = [float(i) for i in information]
    if not info or any(not (i > 0 and math.isfinite(i)) for i in info):
        raise ValueError(f"information must be positive numbers, got {list(information)!r}")
    if len(bounds) != len(info) - 1:
        raise ValueError(f"need one boundary per earlier look: {len(info) - 1} looks, {len(bounds)} boundaries")
    # Brownian motion is scale-free: time in units of the first look (a repeatable cache key).
    ts = tuple(round(i / info[0], 9) for i in info)
    return _next(ts, tuple(float(c) for c in bounds), round(float(target), 15))


@lru_cache(maxsize=8192)
def _next(ts: tuple[float, ...], cs: tuple[float, ...], target: float) -> float:
    if target <= 1e-15:
        return math.inf
    if len(ts) == 1:   # first look: P(|Z| ≥ c) = target
        return float(_isf(min(target, 1.0) / 2))
    t_k, dt = ts[-1], ts[-1] - ts[-2]
    if dt <= 0:        # no information since the last look: this look adds nothing to test
        return math.inf
    grid, dens = _density_cached(ts[:-1], cs)
    sd = math.sqrt(dt)
    w = _weights(grid)

    def exit_prob(c: float) -> float:
        b = c * math.sqrt(t_k)
        return float(np.sum(w * dens * (ndtr((-b - grid) / sd) + ndtr((grid - b) / sd)))) - target

    hi = 12.0
    if exit_prob(hi) > 0:
        return hi
    if exit_prob(0.0) < 0:   # even c = 0 cannot spend it (the mass is already gone)
        return 0.0
    return float(optimize.brentq(exit_prob, 0.0, hi, xtol=1e-10))


def _weights(grid: np.ndarray) -> np.ndarray:
    h = grid[1] - grid[0]
    w = np.full(grid.size, h)
    w[0] = w[-1] = h / 2
    return w


@lru_cache(maxsize=8192)
def _density_cached(ts: tuple[float, ...], cs: tuple[float, ...]):
    """Sub-density of S(t_last) on the continuation region after looks at times ts with boundaries cs
    (prefixes are cached: each look costs one more convolution)."""
    if len(ts) > 1 and ts[-1] <= ts[-2]:      # a look that added no information changes nothing
        return _density_cached(ts[:-1], cs[:-1])
    t, c = ts[-1], cs[-1]
    b = c * math.sqrt(t) if math.isfinite(c) else 12 * math.sqrt(t)
    grid = np.linspace(-b, b, _GRID)
    if len(ts) == 1:
        return grid, _pdf(grid / math.sqrt(t)) / math.sqrt(t)
    prev_grid, prev = _density_cached(ts[:-1], cs[:-1])
    sd = math.sqrt(t - ts[-2])
    k = _pdf((grid[:, None] - prev_grid[None, :]) / sd) / sd
    return grid, k @ (_weights(prev_grid) * prev)


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
    return ndtr(-(c_final - np.asarray(z, float) * np.sqrt(t) - drift * rest) / np.sqrt(rest))


@lru_cache(maxsize=1024)
def planned_drift(alpha: float, power: float) -> float:
    """E[Z] at the planned users when the true effect is the one the plan was sized for."""
    return float(_isf(alpha / 2) + _isf(1 - power))


def futile(z: float, fractions: Sequence[float], alpha: float, kind: Spending, power: float,
           min_conditional_power: float, *, information: Sequence[float] | None = None,
           bounds: Sequence[float] | None = None, planned_share: float = 1.0,
           rule: Rule = "exact") -> tuple[bool, float]:
    """Non-binding futility (stochastic curtailment): stop without a launch when, even if the planned
    effect were true from now on, the chance of crossing the final boundary is below
    ``min_conditional_power``. Stopping early only lowers the false-promotion rate.

    ``fractions`` are the looks' spending times; ``information`` and ``bounds`` the looks' own
    information and boundaries (default: the fractions and their boundaries). The final look is
    projected at information[-1] / s (where the spending time reaches 1); ``planned_share`` is the users
    projected to the end the same way, as a share of the planned users (below 1 when the calendar, not
    the users, sets the end), which scales the planned effect's drift; ``rule`` the boundary rule the
    looks used (the projected final look spends what is left under it). Returns (futile, conditional
    power); never futile at or past the end."""
    s = min(float(fractions[-1]), 1.0)
    if not 0 < s < 1.0:   # at the end, or before any time has passed (no end to project to)
        return False, float("nan")
    info = list(information) if information is not None else list(fractions)
    bds = list(bounds) if bounds is not None else boundaries(fractions, alpha, kind)
    c_final = look_boundary(rule, (*info, info[-1] / s), bds, alpha - spent_by(s, alpha, kind, rule))
    drift = planned_drift(alpha, power) * math.sqrt(max(planned_share, 0.0))
    cp = float(conditional_power(z, s, c_final, drift))
    return cp < min_conditional_power, cp


def _check_alpha(alpha: float) -> None:
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
