"""Treatment effects from sufficient statistics: Welch difference, relative lift (delta method),
CUPED with θ pooled over arms, and ratio metrics by the delta method (reference §4.2 items 1-3).

The formulas live in array kernels (numpy broadcasting) so the decision benchmark can run
thousands of simulated experiments through exactly the same code as the operator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from .sums import InsufficientData, RatioStats, SufficientStats, centered_sum


# ---------------------------------------------------------------- array kernels (no checks) ----

def _cov(n, s_a, s_b, s_ab):
    """Sample covariance from raw sums (ddof=1); arrays broadcast."""
    return centered_sum(n, s_a, s_b, s_ab) / (n - 1)


def cuped_arm_means(c, t, cuped: bool = True):
    """Per-arm (adjusted) means and variances of those means.

    ``c`` and ``t`` are 6-tuples (n, ΣY, ΣY², ΣX, ΣX², ΣXY) of arrays or floats. With ``cuped``,
    θ = Cov(Y, X)/Var(X) over both arms pooled, and each arm's mean is Ȳ_a − θ(X̄_a − X̄), whose
    variance is (s²_Y + θ² s²_X − 2θ s_XY)/n_a. Returns (mean_c, var_c, mean_t, var_t, theta).
    """
    n_c, sy_c, syy_c, sx_c, sxx_c, sxy_c = c
    n_t, sy_t, syy_t, sx_t, sxx_t, sxy_t = t
    vy_c = np.maximum(_cov(n_c, sy_c, sy_c, syy_c), 0.0)
    vy_t = np.maximum(_cov(n_t, sy_t, sy_t, syy_t), 0.0)
    mean_c, mean_t = sy_c / n_c, sy_t / n_t
    if not cuped:
        theta = np.zeros_like(mean_c * mean_t)
        return mean_c, vy_c / n_c, mean_t, vy_t / n_t, theta
    n = n_c + n_t
    vx_pool = _cov(n, sx_c + sx_t, sx_c + sx_t, sxx_c + sxx_t)
    cxy_pool = _cov(n, sx_c + sx_t, sy_c + sy_t, sxy_c + sxy_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(vx_pool > 0, cxy_pool / np.where(vx_pool > 0, vx_pool, 1.0), 0.0)
    x_bar = (sx_c + sx_t) / n

    def adjust(n_a, sy, sx, vy, sxx, sxy):
        vx = np.maximum(_cov(n_a, sx, sx, sxx), 0.0)
        cxy = _cov(n_a, sx, sy, sxy)
        var = np.maximum(vy + theta**2 * vx - 2 * theta * cxy, 0.0) / n_a
        return sy / n_a - theta * (sx / n_a - x_bar), var

    m_c, v_c = adjust(n_c, sy_c, sx_c, vy_c, sxx_c, sxy_c)
    m_t, v_t = adjust(n_t, sy_t, sx_t, vy_t, sxx_t, sxy_t)
    return m_c, v_c, m_t, v_t, theta


def ratio_arm_mean(n, s_m, s_d, s_mm, s_dd, s_md):
    """M̄/D̄ and its delta-method variance (1/n)[s²_M/D̄² − 2M̄ s_MD/D̄³ + M̄² s²_D/D̄⁴]."""
    m, d = s_m / n, s_d / n
    vm = np.maximum(_cov(n, s_m, s_m, s_mm), 0.0)
    vd = np.maximum(_cov(n, s_d, s_d, s_dd), 0.0)
    cmd = _cov(n, s_m, s_d, s_md)
    var = (vm / d**2 - 2 * m * cmd / d**3 + m**2 * vd / d**4) / n
    return m / d, np.maximum(var, 0.0)


def combine(mean_c, var_c, mean_t, var_t, relative: bool = False):
    """Absolute difference (Welch) or relative lift r = μ_T/μ_C − 1 by the delta method."""
    if not relative:
        return mean_t - mean_c, var_c + var_t
    return mean_t / mean_c - 1.0, var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4


# ---------------------------------------------------------------- checked scalar API ----------

@dataclass(frozen=True)
class Effect:
    """A treatment-versus-control estimate and its variance; ``relative`` means a lift fraction."""

    estimate: float
    variance: float
    control_mean: float
    treatment_mean: float
    n_control: int
    n_treatment: int
    relative: bool = False
    theta: float = 0.0

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)

    @property
    def z(self) -> float:
        return self.estimate / self.se

    @property
    def p_value(self) -> float:
        """Fixed-horizon two-sided p-value: valid only if this is the single, planned look."""
        return float(2 * stats.norm.sf(abs(self.z)))

    def ci(self, alpha: float = 0.05) -> tuple[float, float]:
        """Fixed-horizon confidence interval (not valid under peeking; see sequential.py)."""
        h = float(stats.norm.isf(alpha / 2)) * self.se
        return self.estimate - h, self.estimate + h

    def to_dict(self) -> dict:
        return asdict(self)


def _require(cond: bool, why: str) -> None:
    if not cond:
        raise InsufficientData(why)


def _finish(m_c, v_c, m_t, v_t, n_c, n_t, relative, theta) -> Effect:
    if relative:
        _require(float(m_c) != 0.0, "control mean is 0: relative lift undefined")
    est, var = combine(float(m_c), float(v_c), float(m_t), float(v_t), relative)
    _require(math.isfinite(est) and math.isfinite(var), "estimate is not finite")
    _require(var > 0.0, "zero variance in both arms: no uncertainty can be estimated yet")
    return Effect(float(est), float(var), float(m_c), float(m_t), n_c, n_t, relative, float(theta))


def _check_pair(control, treatment, kind) -> None:
    for label, s in (("control", control), ("treatment", treatment)):
        if not isinstance(s, kind):
            raise TypeError(f"{label} must be {kind.__name__}, got {type(s).__name__}")
        _require(s.n >= 2, f"{label} arm has n={s.n} users; need at least 2")


def _tuple(s: SufficientStats):
    return (s.n, s.sum_y, s.sum_y2, s.sum_x, s.sum_x2, s.sum_xy)


def compare(control: SufficientStats, treatment: SufficientStats, *, cuped: bool = False,
            relative: bool = False) -> Effect:
    """Treatment minus control (or relative lift), optionally CUPED-adjusted.

    Raises InsufficientData when the sums cannot support an estimate (n < 2, zero variance)."""
    _check_pair(control, treatment, SufficientStats)
    m_c, v_c, m_t, v_t, theta = cuped_arm_means(_tuple(control), _tuple(treatment), cuped)
    return _finish(m_c, v_c, m_t, v_t, control.n, treatment.n, relative, theta)


def difference_in_means(control: SufficientStats, treatment: SufficientStats) -> Effect:
    return compare(control, treatment)


def relative_lift(control: SufficientStats, treatment: SufficientStats, *, cuped: bool = False) -> Effect:
    return compare(control, treatment, cuped=cuped, relative=True)


def cuped(control: SufficientStats, treatment: SufficientStats, *, relative: bool = False) -> Effect:
    return compare(control, treatment, cuped=True, relative=relative)


def cuped_theta(*arms: SufficientStats) -> float:
    """θ = Cov(Y, X)/Var(X) with all arms pooled (0 when X has no variance)."""
    pooled = SufficientStats()
    for a in arms:
        pooled = pooled.merge(a)
    return pooled.cov_xy / pooled.var_x if pooled.var_x > 0 else 0.0


def compare_ratio(control: RatioStats, treatment: RatioStats, *, relative: bool = False) -> Effect:
    """Difference (or relative lift) of per-arm ratios ΣM/ΣD, users as the unit (delta method)."""
    _check_pair(control, treatment, RatioStats)
    for label, s in (("control", control), ("treatment", treatment)):
        _require(s.sum_d != 0.0, f"{label} arm has ΣD = 0: ratio undefined")
    r_c, v_c = ratio_arm_mean(control.n, control.sum_m, control.sum_d, control.sum_m2, control.sum_d2,
                              control.sum_md)
    r_t, v_t = ratio_arm_mean(treatment.n, treatment.sum_m, treatment.sum_d, treatment.sum_m2,
                              treatment.sum_d2, treatment.sum_md)
    return _finish(r_c, v_c, r_t, v_t, control.n, treatment.n, relative, 0.0)


def analyse(control, treatment, *, cuped: bool = False, relative: bool = False) -> Effect:
    """Dispatch on the kind of sums: SufficientStats (mean metric) or RatioStats (ratio metric)."""
    if isinstance(control, RatioStats):
        return compare_ratio(control, treatment, relative=relative)
    return compare(control, treatment, cuped=cuped, relative=relative)
