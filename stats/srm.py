"""Sample-ratio mismatch, tested anytime-validly over every look (reference §4.2 item 4).

An SRM means assignment or logging is broken, so every effect estimate is suspect: never promote.
The operator checks the cumulative exposures at every look, so a fixed-sample χ² test at p < 0.001
would fire far more often than 0.1% over an experiment's looks (0.76% with 14 looks). Instead the
test is the sequential Dirichlet-multinomial Bayes factor (Lindon & Malek 2022, GrowthBook's
sequential SRM): with a Dirichlet(k·w) prior around the designed weights w,

    BF = [B(k·w + n) / B(k·w)] / Π w_a^{n_a}

is a nonnegative martingale under correct assignment, so by Ville's inequality P(BF ever ≥ 1/t) ≤ t
over all looks, however many. The p-value 1/BF is anytime-valid; the χ² statistic is reported beside
it for reading. The price is power: 50,600 vs 49,400 on 50/50 (χ² p = 1.5e-4) is not flagged
(p = 0.02); 51,000 vs 49,000 is (p < 1e-7)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.special import gammaln

SRM_THRESHOLD = 0.001
# k: the prior's weight around the design. Small k spreads the mixture to gross mismatches (a broken
# assignment shows early: 750 vs 450 gives p = 2e-15); large k to subtle ones at large n (GrowthBook
# uses 10,000, which misses 750 vs 450 entirely: p = 0.02). 100 flags both that and 51,000 vs 49,000.
SRM_CONCENTRATION = 100.0


@dataclass(frozen=True)
class SRMResult:
    p_value: float           # anytime-valid: min(1, 1/BF)
    statistic: float         # χ² of the current counts (for reading; not the test)
    mismatch: bool
    observed: dict[str, int]
    expected: dict[str, float]
    threshold: float = SRM_THRESHOLD
    log_bayes_factor: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def reason(self) -> str:
        obs = ", ".join(f"{a}={n}" for a, n in self.observed.items())
        exp = ", ".join(f"{a}={e:.0f}" for a, e in self.expected.items())
        return (f"SRM: observed {obs} vs expected {exp} (sequential p={self.p_value:.2g} < {self.threshold:g}, "
                f"chi2={self.statistic:.2f})")


def log_bayes_factor(counts, probs, concentration: float = SRM_CONCENTRATION):
    """log BF of the Dirichlet-multinomial mixture against the designed multinomial; arrays broadcast
    over leading axes (counts: (..., K), probs: (K,))."""
    counts = np.asarray(counts, float)
    probs = np.asarray(probs, float)
    a = concentration * probs
    return (gammaln(a.sum()) - gammaln(a.sum() + counts.sum(-1))
            + (gammaln(a + counts) - gammaln(a)).sum(-1) - (counts * np.log(probs)).sum(-1))


def srm_check(observed: Mapping[str, int], weights: Mapping[str, float], *,
              threshold: float = SRM_THRESHOLD, concentration: float = SRM_CONCENTRATION) -> SRMResult:
    """Sequential SRM test of cumulative arm sizes against the designed weights; ``mismatch`` when
    the anytime-valid p < threshold. Arms with weight 0 must have no users (any user there is itself
    a mismatch)."""
    if set(observed) != set(weights):
        raise ValueError(f"observed arms {sorted(observed)} differ from weighted arms {sorted(weights)}")
    if len(weights) < 2:
        raise ValueError("weights: need at least two arms")
    if not (concentration > 0 and math.isfinite(concentration)):
        raise ValueError(f"concentration must be a positive number, got {concentration!r}")
    for arm, w in weights.items():
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"weights[{arm!r}] must be a finite number >= 0, got {w!r}")
    for arm, n in observed.items():
        if n < 0 or int(n) != n:
            raise ValueError(f"observed[{arm!r}] must be a whole number >= 0, got {n!r}")
    total_w = sum(weights.values())
    if total_w <= 0:
        raise ValueError("weights: at least one arm needs a positive weight")
    arms = list(weights)
    obs = {a: int(observed[a]) for a in arms}
    n = sum(obs.values())
    exp = {a: n * weights[a] / total_w for a in arms}
    if n == 0:
        return SRMResult(1.0, 0.0, False, obs, exp, threshold)
    zero = [a for a in arms if weights[a] == 0]
    if any(obs[a] > 0 for a in zero):
        return SRMResult(0.0, math.inf, True, obs, exp, threshold, math.inf)
    live = [a for a in arms if weights[a] > 0]
    if len(live) < 2:
        return SRMResult(1.0, 0.0, False, obs, exp, threshold)
    counts = np.array([obs[a] for a in live], float)
    probs = np.array([weights[a] for a in live], float) / sum(weights[a] for a in live)
    expected = counts.sum() * probs
    chi2 = float(((counts - expected) ** 2 / expected).sum())   # = scipy.stats.chisquare(...).statistic
    log_bf = float(log_bayes_factor(counts, probs, concentration))
    p = float(min(1.0, math.exp(-log_bf))) if log_bf > -700 else 1.0
    return SRMResult(p, chi2, bool(p < threshold), obs, exp, threshold, log_bf)


def least_evidence_weights(observed: Mapping[str, int], known: Mapping[str, float], free: float,
                           mixes: Sequence[Mapping[str, float]], *,
                           concentration: float = SRM_CONCENTRATION) -> dict[str, float]:
    """Expected arm shares for users of whom `known` (arm -> expected users) are attributed and `free` more were
    assigned under some unknown mix of the weight sets `mixes` (a log that does not say which ramp step each user
    came in): of all those expectations, the one the observed counts are least evidence against.

    The null is composite (any mix), and the Bayes factor at its closest point is at most the one at the true mix,
    so testing there keeps the check's false-alarm bound while flagging only counts that no mix explains: a
    treatment share outside every step's weights, or an arm with users that no step routes to."""
    from scipy.optimize import minimize  # only here: the operator imports this module for every readout

    arms = list(observed)
    obs = {a: int(observed[a]) for a in arms}
    fixed = np.array([float(known.get(a, 0.0)) for a in arms])
    table = np.array([[float(m[a]) for a in arms] for m in mixes])
    table = table / table.sum(axis=1, keepdims=True)

    def shares(lam: np.ndarray) -> dict[str, float]:
        e = fixed + free * (np.clip(lam, 0, None) / max(np.clip(lam, 0, None).sum(), 1e-12)) @ table
        return dict(zip(arms, (e / e.sum()).tolist()))

    def evidence(lam: np.ndarray) -> float:
        # capped: a share of 0 against observed users is infinite evidence, which the optimiser cannot step through
        return min(srm_check(obs, shares(lam), concentration=concentration).log_bayes_factor, 1e6)

    m = len(table)
    starts = [np.eye(m)[i] for i in range(m)] + [np.full(m, 1 / m)]
    best = min(starts, key=evidence)
    if m > 1:
        for x0 in starts:
            r = minimize(evidence, x0, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                         constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1}])
            if evidence(r.x) < evidence(best):
                best = r.x
    return shares(best)
