"""Treatment effects from sufficient statistics: Welch difference, relative lift (delta method),
CUPED with θ pooled over arms, and ratio metrics by the delta method (reference §4.2 items 1-3).

The formulas live in array kernels (numpy broadcasting) so the decision benchmark can run
thousands of simulated experiments through exactly the same code as the operator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import stats

from .sums import InsufficientData, RatioStats, SufficientStats, centered_sum, pooled_centered_sum


# ---------------------------------------------------------------- array kernels (no checks) ----

def _unpack(sums):
    """(n, Σa, Σb, Σ(a−r_a)², Σ(b−r_b)², Σ(a−r_a)(b−r_b)[, r_a, r_b]) in the dataclass field order;
    six entries mean references 0 (raw sums)."""
    if len(sums) == 6:
        return (*sums, 0.0, 0.0)
    return tuple(sums)


def _mean_moments(c, t, cuped: bool):
    """Per-arm (adjusted) means, variances of those means, θ, and the pooled unit variance and mean.

    ``c`` and ``t`` are SufficientStats field tuples of arrays or floats. With ``cuped``,
    θ = Cov(Y, X)/Var(X) over both arms pooled, and each arm's mean is Ȳ_a − θ(X̄_a − X̄), whose
    variance is (s²_Y + θ² s²_X − 2θ s_XY)/n_a. The pooled unit variance of Y − θX (both arms as one
    sample) is the variance under the null of no effect (a score test's variance)."""
    n_c, sy_c, syy_c, sx_c, sxx_c, sxy_c, ry_c, rx_c = _unpack(c)
    n_t, sy_t, syy_t, sx_t, sxx_t, sxy_t, ry_t, rx_t = _unpack(t)
    cyy_c, cyy_t = centered_sum(n_c, sy_c, sy_c, syy_c, ry_c, ry_c), centered_sum(n_t, sy_t, sy_t, syy_t, ry_t, ry_t)
    cxx_c, cxx_t = centered_sum(n_c, sx_c, sx_c, sxx_c, rx_c, rx_c), centered_sum(n_t, sx_t, sx_t, sxx_t, rx_t, rx_t)
    cxy_c, cxy_t = centered_sum(n_c, sx_c, sy_c, sxy_c, rx_c, ry_c), centered_sum(n_t, sx_t, sy_t, sxy_t, rx_t, ry_t)
    n = n_c + n_t
    cyy = pooled_centered_sum(n_c, sy_c, sy_c, cyy_c, n_t, sy_t, sy_t, cyy_t)
    mean_c, mean_t, mean_pool = sy_c / n_c, sy_t / n_t, (sy_c + sy_t) / n
    if cuped:
        cxx = pooled_centered_sum(n_c, sx_c, sx_c, cxx_c, n_t, sx_t, sx_t, cxx_t)
        cxy = pooled_centered_sum(n_c, sx_c, sy_c, cxy_c, n_t, sx_t, sy_t, cxy_t)
        with np.errstate(divide="ignore", invalid="ignore"):
            theta = np.where(cxx > 0, cxy / np.where(cxx > 0, cxx, 1.0), 0.0)
        x_bar = (sx_c + sx_t) / n
    else:
        cxx = cxy = theta = np.zeros_like(mean_c * mean_t)
        x_bar = 0.0

    def adjust(n_a, sy, sx, cyy_a, cxx_a, cxy_a):
        var = np.maximum(cyy_a + theta**2 * cxx_a - 2 * theta * cxy_a, 0.0) / (n_a - 1) / n_a
        return sy / n_a - theta * (sx / n_a - x_bar), var

    m_c, v_c = adjust(n_c, sy_c, sx_c, cyy_c, cxx_c, cxy_c)
    m_t, v_t = adjust(n_t, sy_t, sx_t, cyy_t, cxx_t, cxy_t)
    s2_pool = np.maximum(cyy + theta**2 * cxx - 2 * theta * cxy, 0.0) / (n - 1)
    return m_c, v_c, m_t, v_t, theta, s2_pool, mean_pool


def cuped_arm_means(c, t, cuped: bool = True):
    """Per-arm (adjusted) means and variances of those means: (mean_c, var_c, mean_t, var_t, theta)."""
    return _mean_moments(c, t, cuped)[:5]


def _ratio_moments(c, t):
    """Per-arm ratios M̄/D̄ with delta-method variances, and the pooled null unit variance and ratio.

    Arm variance (1/n)[s²_M/D̄² − 2M̄ s_MD/D̄³ + M̄² s²_D/D̄⁴]; under the null both arms share the
    pooled ratio r₀ = ΣM/ΣD, and the unit variance is Var(M − r₀D)/D̄² over both arms pooled."""
    n_c, sm_c, sd_c, smm_c, sdd_c, smd_c, rm_c, rd_c = _unpack(c)
    n_t, sm_t, sd_t, smm_t, sdd_t, smd_t, rm_t, rd_t = _unpack(t)
    arms = []
    for n, sm, sd, smm, sdd, smd, rm, rd in ((n_c, sm_c, sd_c, smm_c, sdd_c, smd_c, rm_c, rd_c),
                                              (n_t, sm_t, sd_t, smm_t, sdd_t, smd_t, rm_t, rd_t)):
        cmm, cdd, cmd = (centered_sum(n, sm, sm, smm, rm, rm), centered_sum(n, sd, sd, sdd, rd, rd),
                         centered_sum(n, sm, sd, smd, rm, rd))
        m, d = sm / n, sd / n
        var = (np.maximum(cmm, 0) / d**2 - 2 * m * cmd / d**3 + m**2 * np.maximum(cdd, 0) / d**4) / (n - 1) / n
        arms.append((m / d, np.maximum(var, 0.0), cmm, cdd, cmd))
    (r_c, v_c, cmm_c, cdd_c, cmd_c), (r_t, v_t, cmm_t, cdd_t, cmd_t) = arms
    n = n_c + n_t
    r0, d_bar = (sm_c + sm_t) / (sd_c + sd_t), (sd_c + sd_t) / n
    cmm = pooled_centered_sum(n_c, sm_c, sm_c, cmm_c, n_t, sm_t, sm_t, cmm_t)
    cdd = pooled_centered_sum(n_c, sd_c, sd_c, cdd_c, n_t, sd_t, sd_t, cdd_t)
    cmd = pooled_centered_sum(n_c, sm_c, sd_c, cmd_c, n_t, sm_t, sd_t, cmd_t)
    s2_pool = np.maximum(cmm - 2 * r0 * cmd + r0**2 * cdd, 0.0) / (n - 1) / d_bar**2
    return r_c, v_c, r_t, v_t, s2_pool, r0


def ratio_arm_mean(n, s_m, s_d, s_mm, s_dd, s_md, r_m=0.0, r_d=0.0):
    """M̄/D̄ and its delta-method variance (1/n)[s²_M/D̄² − 2M̄ s_MD/D̄³ + M̄² s²_D/D̄⁴]."""
    r, v, *_ = _ratio_moments((n, s_m, s_d, s_mm, s_dd, s_md, r_m, r_d), (n, s_m, s_d, s_mm, s_dd, s_md, r_m, r_d))
    return r, v


def combine(mean_c, var_c, mean_t, var_t, relative: bool = False):
    """Absolute difference (Welch) or relative lift r = μ_T/μ_C − 1 by the delta method."""
    if not relative:
        return mean_t - mean_c, var_c + var_t
    return mean_t / mean_c - 1.0, var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4


def inference_scale(m_c, v_c, m_t, v_t, s2_pool, m_pool, n_c, n_t, relative):
    """The estimate and variance the always-valid test and interval use; arrays broadcast.

    Absolute: Δ = μ_T − μ_C. Relative: log(μ_T/μ_C), defined only where both means are positive
    (elsewhere the absolute difference is used, element by element); its delta-method variance
    v_T/μ_T² + v_C/μ_C² grows, never shrinks, when an arm has few events. The variance is the larger
    of that and the variance under the pooled null (s²_pool(1/n_C + 1/n_T), over μ_pool² for the log),
    so a rare metric with one or two events in an arm cannot look precise.
    Returns (estimate, variance, relative_used)."""
    inv_n = 1 / n_c + 1 / n_t
    rel = np.asarray(relative, bool) & (m_c > 0) & (m_t > 0) & (m_pool > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = lambda v: np.where(rel, v, 1.0)  # noqa: E731  (log/ratios only where defined)
        est = np.where(rel, np.log(safe(m_t) / safe(m_c)), m_t - m_c)
        var_abs = np.maximum(v_c + v_t, s2_pool * inv_n)
        var_log = np.maximum(v_t / safe(m_t) ** 2 + v_c / safe(m_c) ** 2, s2_pool * inv_n / safe(m_pool) ** 2)
    var = np.where(rel, var_log, var_abs)
    if np.ndim(est) == 0:
        return float(est), float(var), bool(rel)
    return est, var, rel


def mean_inference_kernel(c, t, cuped: bool, relative: bool):
    """Test-scale (estimate, variance, relative_used) for mean metrics from sum tuples (arrays)."""
    m_c, v_c, m_t, v_t, _, s2, m0 = _mean_moments(c, t, cuped)
    return inference_scale(m_c, v_c, m_t, v_t, s2, m0, _unpack(c)[0], _unpack(t)[0], relative)


def ratio_inference_kernel(c, t, relative: bool):
    """Test-scale (estimate, variance, relative_used) for ratio metrics from sum tuples (arrays)."""
    r_c, v_c, r_t, v_t, s2, r0 = _ratio_moments(c, t)
    return inference_scale(r_c, v_c, r_t, v_t, s2, r0, _unpack(c)[0], _unpack(t)[0], relative)


# ---------------------------------------------------------------- checked scalar API ----------

@dataclass(frozen=True)
class Effect:
    """A treatment-versus-control estimate and its variance; ``relative`` means a lift fraction.

    ``estimate``/``variance``: the reported effect (μ_T − μ_C, or the lift μ_T/μ_C − 1 by the delta
    method). ``test_estimate``/``test_variance``: the scale the always-valid test and interval use
    (the difference, or log(μ_T/μ_C); the variance is never below the pooled-null variance).
    A relative effect is used only when both arm means are positive; otherwise the effect is the
    absolute difference, ``relative`` is False and ``note`` says why."""

    estimate: float
    variance: float
    control_mean: float
    treatment_mean: float
    n_control: int
    n_treatment: int
    relative: bool = False
    theta: float = 0.0
    test_estimate: float | None = None
    test_variance: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.test_estimate is None:
            object.__setattr__(self, "test_estimate", self.estimate)
        if self.test_variance is None:
            object.__setattr__(self, "test_variance", self.variance)

    @property
    def direction(self) -> int:
        """The sign of μ_T − μ_C: the direction of any decision, whatever the scale."""
        d = self.treatment_mean - self.control_mean
        return 1 if d > 0 else -1 if d < 0 else 0

    def to_reported(self, value: float) -> float:
        """A test-scale value (e.g. an interval end) on the reported scale: exp(v) − 1 for a lift."""
        return math.expm1(value) if self.relative else value

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


# A log-ratio needs each arm mean known to ~30% (coefficient of variation 1/√10) before its
# delta-method variance means anything: for counts, at least 10 events per arm.
MIN_EFFECTIVE_EVENTS = 10.0


def _finish(m_c, v_c, m_t, v_t, s2_pool, m_pool, n_c, n_t, relative, theta) -> Effect:
    m_c, v_c, m_t, v_t = float(m_c), float(v_c), float(m_t), float(v_t)
    if relative and m_c > 0 and m_t > 0:
        # effective events m²/v (= the count for a Poisson or rare 0/1 metric)
        few = [(label, m * m / v) for label, m, v in (("control", m_c, v_c), ("treatment", m_t, v_t))
               if v > 0 and m * m / v < MIN_EFFECTIVE_EVENTS]
        _require(not few, "too few events for a relative effect: " + ", ".join(
            f"{label} ≈ {e:.1f} effective events" for label, e in few) + f" (need {MIN_EFFECTIVE_EVENTS:g} per arm)")
    t_est, t_var, rel = inference_scale(m_c, v_c, m_t, v_t, float(s2_pool), float(m_pool), n_c, n_t, relative)
    note = ""
    if relative and not rel:
        note = (f"relative effect undefined (control mean {m_c:.4g}, treatment mean {m_t:.4g}: both must be "
                f"positive); absolute difference used")
    est, var = combine(m_c, v_c, m_t, v_t, rel)
    _require(math.isfinite(est) and math.isfinite(var) and math.isfinite(t_est) and math.isfinite(t_var),
             "estimate is not finite")
    _require(var > 0.0 and t_var > 0.0, "zero variance in both arms: no uncertainty can be estimated yet")
    return Effect(float(est), float(var), m_c, m_t, n_c, n_t, rel, float(theta), t_est, t_var, note)


def _check_pair(control, treatment, kind) -> None:
    for label, s in (("control", control), ("treatment", treatment)):
        if not isinstance(s, kind):
            raise TypeError(f"{label} must be {kind.__name__}, got {type(s).__name__}")
        _require(s.n >= 2, f"{label} arm has n={s.n} users; need at least 2")


def _tuple(s):
    return tuple(getattr(s, f.name) for f in fields(s))


def compare(control: SufficientStats, treatment: SufficientStats, *, cuped: bool = False,
            relative: bool = False) -> Effect:
    """Treatment minus control (or relative lift where defined), optionally CUPED-adjusted.

    Raises InsufficientData when the sums cannot support an estimate (n < 2, zero variance)."""
    _check_pair(control, treatment, SufficientStats)
    m_c, v_c, m_t, v_t, theta, s2, m0 = _mean_moments(_tuple(control), _tuple(treatment), cuped)
    return _finish(m_c, v_c, m_t, v_t, s2, m0, control.n, treatment.n, relative, theta)


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
    r_c, v_c, r_t, v_t, s2, r0 = _ratio_moments(_tuple(control), _tuple(treatment))
    return _finish(r_c, v_c, r_t, v_t, s2, r0, control.n, treatment.n, relative, 0.0)


def analyse(control, treatment, *, cuped: bool = False, relative: bool = False) -> Effect:
    """Dispatch on the kind of sums: SufficientStats (mean metric) or RatioStats (ratio metric)."""
    if isinstance(control, RatioStats):
        return compare_ratio(control, treatment, relative=relative)
    return compare(control, treatment, cuped=cuped, relative=relative)
