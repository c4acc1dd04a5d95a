"""Sample-ratio mismatch: χ² of observed arm sizes against the designed weights (reference §4.2 item 4).

An SRM means assignment or logging is broken, so every effect estimate is suspect: never promote."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from scipy import stats

SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SRMResult:
    p_value: float
    statistic: float
    mismatch: bool
    observed: dict[str, int]
    expected: dict[str, float]
    threshold: float = SRM_THRESHOLD

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def reason(self) -> str:
        obs = ", ".join(f"{a}={n}" for a, n in self.observed.items())
        exp = ", ".join(f"{a}={e:.0f}" for a, e in self.expected.items())
        return f"SRM: observed {obs} vs expected {exp} (chi2={self.statistic:.2f}, p={self.p_value:.2g} < {self.threshold:g})"


def srm_check(observed: Mapping[str, int], weights: Mapping[str, float], *,
              threshold: float = SRM_THRESHOLD) -> SRMResult:
    """χ² goodness of fit with K − 1 degrees of freedom; ``mismatch`` when p < threshold.

    Arms with weight 0 must have no users (any user there is itself a mismatch)."""
    if set(observed) != set(weights):
        raise ValueError(f"observed arms {sorted(observed)} differ from weighted arms {sorted(weights)}")
    if len(weights) < 2:
        raise ValueError("weights: need at least two arms")
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
        return SRMResult(0.0, math.inf, True, obs, exp, threshold)
    live = [a for a in arms if weights[a] > 0]
    if len(live) < 2:
        return SRMResult(1.0, 0.0, False, obs, exp, threshold)
    chi2, p = stats.chisquare(np.array([obs[a] for a in live], float), np.array([exp[a] for a in live]))
    return SRMResult(float(p), float(chi2), bool(p < threshold), obs, exp, threshold)
