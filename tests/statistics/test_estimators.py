import numpy as np
import pytest
from scipy import stats as sst

from cambrian.stats import (InsufficientData, RatioStats, SufficientStats, analyse, compare,
                                          compare_ratio, cuped, cuped_theta, difference_in_means,
                                          relative_lift)


def _arrays(seed, n, effect=0.0, rho=0.7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 10 + effect + rho * x + np.sqrt(1 - rho**2) * rng.normal(size=n)
    return y, x


def test_welch_from_sums_equals_arrays():
    (yc, xc), (yt, xt) = _arrays(1, 400), _arrays(2, 600, 0.2)
    e = difference_in_means(SufficientStats.from_arrays(yc, xc), SufficientStats.from_arrays(yt, xt))
    assert e.estimate == pytest.approx(yt.mean() - yc.mean())
    assert e.variance == pytest.approx(yt.var(ddof=1) / 600 + yc.var(ddof=1) / 400)
    t = sst.ttest_ind(yt, yc, equal_var=False)
    assert e.z == pytest.approx(t.statistic)
    assert e.p_value == pytest.approx(2 * sst.norm.sf(abs(t.statistic)))  # z reference distribution
    lo, hi = e.ci(0.05)
    assert lo < e.estimate < hi and (hi - lo) == pytest.approx(2 * 1.959964 * e.se)


def test_relative_lift_delta_method():
    (yc, xc), (yt, xt) = _arrays(1, 400), _arrays(2, 600, 0.2)
    e = relative_lift(SufficientStats.from_arrays(yc, xc), SufficientStats.from_arrays(yt, xt))
    mc, mt = yc.mean(), yt.mean()
    assert e.estimate == pytest.approx(mt / mc - 1)
    assert e.variance == pytest.approx(yt.var(ddof=1) / (600 * mc**2) + mt**2 * yc.var(ddof=1) / (400 * mc**4))
    assert e.relative


def test_cuped_from_sums_equals_array_adjustment():
    (yc, xc), (yt, xt) = _arrays(3, 500), _arrays(4, 700, 0.1)
    c, t = SufficientStats.from_arrays(yc, xc), SufficientStats.from_arrays(yt, xt)
    e = cuped(c, t)
    x_all, y_all = np.r_[xc, xt], np.r_[yc, yt]
    theta = np.cov(x_all, y_all)[0, 1] / x_all.var(ddof=1)
    adj_c, adj_t = yc - theta * (xc - x_all.mean()), yt - theta * (xt - x_all.mean())
    assert e.theta == pytest.approx(theta) == pytest.approx(cuped_theta(c, t))
    assert e.estimate == pytest.approx(adj_t.mean() - adj_c.mean())
    assert e.variance == pytest.approx(adj_t.var(ddof=1) / 700 + adj_c.var(ddof=1) / 500)
    r = compare(c, t, cuped=True, relative=True)
    assert r.estimate == pytest.approx(adj_t.mean() / adj_c.mean() - 1)


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.7, 0.9])
def test_cuped_variance_ratio_is_one_minus_rho_squared(rho):
    (yc, xc), (yt, xt) = _arrays(10, 40_000, rho=rho), _arrays(11, 40_000, 0.05, rho=rho)
    c, t = SufficientStats.from_arrays(yc, xc), SufficientStats.from_arrays(yt, xt)
    ratio = cuped(c, t).variance / difference_in_means(c, t).variance
    assert ratio == pytest.approx(1 - rho**2, abs=0.02)


def test_cuped_without_covariate_is_plain_welch():
    c = SufficientStats.from_arrays([1.0, 2.0, 4.0, 3.0])
    t = SufficientStats.from_arrays([2.0, 3.0, 5.0, 6.0])
    assert cuped(c, t).estimate == difference_in_means(c, t).estimate
    assert cuped(c, t).variance == difference_in_means(c, t).variance
    assert cuped_theta(c, t) == 0.0


def test_ratio_metric_delta_method_matches_linearisation():
    rng = np.random.default_rng(7)
    dc, dt = rng.poisson(15, 800).astype(float) + 1, rng.poisson(15, 900).astype(float) + 1
    mc, mt = rng.binomial(dc.astype(int), 0.10).astype(float), rng.binomial(dt.astype(int), 0.12).astype(float)
    e = compare_ratio(RatioStats.from_arrays(mc, dc), RatioStats.from_arrays(mt, dt))

    def lin_var(m, d):  # variance of the linearised ratio (M − rD)/D̄, the delta method's definition
        r = m.sum() / d.sum()
        return ((m - r * d) / d.mean()).var(ddof=1) / m.size

    assert e.estimate == pytest.approx(mt.sum() / dt.sum() - mc.sum() / dc.sum())
    assert e.variance == pytest.approx(lin_var(mc, dc) + lin_var(mt, dt))
    assert analyse(RatioStats.from_arrays(mc, dc), RatioStats.from_arrays(mt, dt)) == e


def test_ratio_variance_beats_naive_iid_impressions_assumption_when_clustered():
    # Users differ in their own CTR: treating impressions as i.i.d. understates the variance.
    rng = np.random.default_rng(8)
    def arm():
        d = rng.poisson(30, 2000).astype(float) + 1
        p = rng.beta(2, 18, 2000)
        return rng.binomial(d.astype(int), p).astype(float), d
    (mc, dc), (mt, dt) = arm(), arm()
    e = compare_ratio(RatioStats.from_arrays(mc, dc), RatioStats.from_arrays(mt, dt))
    pc, pt = mc.sum() / dc.sum(), mt.sum() / dt.sum()
    naive = pc * (1 - pc) / dc.sum() + pt * (1 - pt) / dt.sum()
    assert e.variance > 1.5 * naive


@pytest.mark.parametrize("c, t, why", [
    (SufficientStats(), SufficientStats.from_arrays([1.0, 2.0]), "control arm has n=0"),
    (SufficientStats.from_arrays([1.0]), SufficientStats.from_arrays([1.0, 2.0]), "n=1"),
    (SufficientStats.from_arrays([3.0, 3.0]), SufficientStats.from_arrays([4.0, 4.0, 4.0]), "zero variance"),
])
def test_insufficient_data(c, t, why):
    with pytest.raises(InsufficientData, match=why):
        compare(c, t, cuped=True)


def test_relative_needs_positive_means_else_absolute():
    """Defect 1: with a negative control mean the lift μ_T/μ_C − 1 has the wrong sign; the effect
    falls back to the absolute difference, whose sign is the truth."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1, 400)
    for mc, mt in ((-10.0, -5.0), (-10.0, -12.0), (0.0, 1.0)):
        e = relative_lift(SufficientStats.from_arrays(mc + noise), SufficientStats.from_arrays(mt + noise[::-1]))
        assert not e.relative and "undefined" in e.note
        assert e.estimate == pytest.approx(mt - mc) and e.direction == np.sign(mt - mc)
        assert np.sign(e.test_estimate) == np.sign(mt - mc)
    pos = relative_lift(SufficientStats.from_arrays(10 + noise), SufficientStats.from_arrays(12 + noise))
    assert pos.relative and pos.test_estimate == pytest.approx(np.log(pos.treatment_mean / pos.control_mean))
    with pytest.raises(InsufficientData, match="ΣD = 0"):
        compare_ratio(RatioStats.from_arrays([0, 0], [0, 0]), RatioStats.from_arrays([1, 2], [3, 4]))


def test_wrong_types_are_rejected():
    with pytest.raises(TypeError, match="treatment must be SufficientStats"):
        compare(SufficientStats.from_arrays([1.0, 2.0]), {"n": 2})
