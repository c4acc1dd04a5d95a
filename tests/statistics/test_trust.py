"""Defects 1-2 of issue 14 through decide() itself: the sign of a relative effect with a negative
control mean, and inference on rare events. Each test fails on the code before the fix."""

import math

import numpy as np
import pytest
from scipy import stats as sst
from statsmodels.stats.proportion import proportions_ztest

from cambrian.stats import DecisionPolicy, Metric, SufficientStats, compare, decide
from cambrian.stats.calibration import Cell, simulate

W = {"c": 0.5, "t": 0.5}


def _look(control, treatment, *, relative=True, cuped=False, higher_is_better=True, planned=20_000):
    pol = DecisionPolicy(Metric("m", higher_is_better=higher_is_better, relative=relative, cuped=cuped),
                         planned_users_per_arm=planned, min_users_per_arm=0, max_days=14)
    return decide(pol, control="c", weights=W, stats={"c": {"m": control}, "t": {"m": treatment}}, elapsed_days=7)


@pytest.mark.parametrize("mean_c, mean_t, expect", [(-10.0, -5.0, "promote"), (-10.0, -12.0, "rollback"),
                                                    (10.0, 12.0, "promote"), (10.0, 8.0, "rollback")])
def test_direction_follows_the_absolute_difference(mean_c, mean_t, expect):
    """Old code: control −10 → treatment −5 (better) rolled back, −12 (worse) promoted."""
    rng = np.random.default_rng(1)
    c = SufficientStats.from_arrays(mean_c + rng.standard_normal(5_000))
    t = SufficientStats.from_arrays(mean_t + rng.standard_normal(5_000))
    d = _look(c, t)
    assert d.outcome == expect
    eff = d.arms["t"].effect
    assert eff.direction == np.sign(mean_t - mean_c)
    assert eff.relative == (mean_c > 0)      # a lift only where both means are positive
    lo, hi = d.arms["t"].ci
    assert lo <= eff.estimate <= hi
    # lower-is-better mirrors it
    assert _look(c, t, higher_is_better=False).outcome == {"promote": "rollback", "rollback": "promote"}[expect]


def _binary(events: int, n: int) -> SufficientStats:
    return SufficientStats.from_arrays(np.r_[np.ones(events), np.zeros(n - events)])


def test_issue_example_5_vs_1_of_300_is_not_significant():
    """Old code: always-valid p 0.012 → rollback. Fisher's exact test gives 0.216."""
    c, t = _binary(5, 300), _binary(1, 300)
    assert sst.fisher_exact([[5, 295], [1, 299]]).pvalue == pytest.approx(0.216, abs=1e-3)
    for relative in (True, False):
        d = _look(c, t, relative=relative, planned=300)
        # 300 users is the whole plan: the group design's final look ends it without a decision
        assert d.outcome in ("continue", "inconclusive") and (d.arms["t"].p_value or 1.0) > 0.05
    # Relative: 1 event is too few for a log ratio (the effect is not estimated at all).
    assert "too few events" in _look(c, t, relative=True).reason
    # Absolute: the test variance is the pooled one, i.e. the two-proportion score test (statsmodels).
    e = compare(c, t)
    z_pooled, _ = proportions_ztest([1, 5], [300, 300])
    assert e.test_estimate / math.sqrt(e.test_variance) == pytest.approx(z_pooled * math.sqrt(599 / 600), rel=1e-9)


def test_pooled_null_variance_for_ratio_metrics():
    """Ratio metric, few events in treatment: the test variance does not shrink with them."""
    from cambrian.stats import RatioStats, compare_ratio
    d = np.full(300, 10.0)
    m_c = np.r_[np.ones(5), np.zeros(295)]
    m_t = np.r_[np.ones(1), np.zeros(299)]
    e = compare_ratio(RatioStats.from_arrays(m_c, d), RatioStats.from_arrays(m_t, d))
    r0 = 6 / 6000
    pooled = np.r_[m_c - r0 * d, m_t - r0 * d].var(ddof=1) / 10.0**2 * (2 / 300)
    assert e.test_variance == pytest.approx(max(pooled, e.variance))
    assert e.test_variance > e.variance


def test_rare_aa_false_rollbacks_within_alpha():
    """The issue's setting through decide(): base rate 0.01, 50 users per arm per day, 14 daily looks,
    1000 A/A experiments, default policy (relative, CUPED). Old code: 11.1% false rollbacks."""
    r = simulate(Cell("rate", base=0.01, users=50, looks=14), sims=1000, seed=14)
    assert r["rollback"] <= 0.05 + 2 * r["se"]
    assert r["promote"] <= 0.05 + 2 * r["se"]
