"""The north star's z on heavy-tailed minutes per user at about 1,000 users per arm (the calibrated world's
A/A: skew 2.3, excess kurtosis 8.9, CUPED ρ 0.8; bench/README.md, decision-world).

A/A by randomisation: one fixed population, each draw assigns every user to an arm by a fair coin, as
bench/decision_world.py does. Both arms read the same outcomes, so the only randomness is the assignment and
decide()'s z must be N(0, 1) over the draws: its variance estimate (delta method on log(μ_T/μ_C), CUPED θ pooled
and estimated on the same data) must equal the estimate's spread across draws, and agree with scipy's and
statsmodels' Welch t-test and with a bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from cambrian.stats import SufficientStats, analyse
from cambrian.stats.estimators import mean_inference_kernel
from cambrian.stats.sums import reference


def _population(n=2000, seed=7):
    """Minutes per user per day ~ a user's habit (lognormal) × noise; the pre-period the same habit × other noise."""
    rng = np.random.default_rng(seed)
    habit = rng.lognormal(0.0, 0.75, n)
    return 8 * habit * rng.lognormal(0.0, 0.35, n), 8 * habit * rng.lognormal(0.0, 0.45, n)


def _kernel_sums(assign, y, x):
    """Per-arm SufficientStats field tuples for every draw at once (rows of `assign`: 1 = treatment)."""
    ry, rx = reference(y), reference(x)

    def arm(m):
        n = m.sum(1)
        return (n, m @ y, m @ (y - ry) ** 2, m @ x, m @ (x - rx) ** 2, m @ ((x - rx) * (y - ry)),
                np.full(n.size, ry), np.full(n.size, rx))

    return arm(1.0 - assign), arm(assign)


def test_population_is_heavy_tailed():
    y, x = _population()
    assert sps.skew(y) > 2 and sps.kurtosis(y) > 6 and np.corrcoef(y, x)[0, 1] > 0.6   # the test is not vacuous


@pytest.mark.parametrize("cuped", [True, False])
@pytest.mark.parametrize("relative", [True, False])
def test_aa_z_is_standard_normal_over_random_assignments(cuped, relative):
    """4,000 assignments: Var(estimate) across draws / mean estimated variance within 1 ± 0.08 (3.5 Monte Carlo
    s.e.), |z| ≥ 1.96 in 5% ± 3 s.e., each side of the final union boundary (2.01) in 2.22% ± 3 s.e."""
    y, x = _population()
    rng = np.random.default_rng(11)
    sims = 4000
    assign = (rng.random((sims, y.size)) < 0.5).astype(float)
    est, var, _ = mean_inference_kernel(*_kernel_sums(assign, y, x), cuped, relative)
    assert est.var(ddof=1) / var.mean() == pytest.approx(1.0, abs=0.08)
    z = est / np.sqrt(var)
    se = lambda p: 3 * math.sqrt(p * (1 - p) / sims)  # noqa: E731
    assert abs(np.mean(np.abs(z) >= 1.96) - 0.05) <= se(0.05)
    side = sps.norm.sf(2.01)
    for hit in (z >= 2.01, z <= -2.01):
        assert abs(np.mean(hit) - side) <= se(side)


def test_cuped_difference_is_scipys_and_statsmodels_welch_t():
    """CUPED on the absolute scale is Welch's t on the users' values y − θ(x − x̄), θ pooled over both arms:
    decide()'s z equals scipy's and statsmodels' statistic unless the pooled-null variance is larger (then
    decide() is the more cautious); its relative z is the same test on the log scale (within 3%)."""
    from statsmodels.stats.weightstats import ttest_ind as sm_ttest

    y, x = _population()
    rng = np.random.default_rng(3)
    theta = np.cov(y, x)[0, 1] / np.var(x, ddof=1)
    adjusted = y - theta * (x - x.mean())
    for _ in range(20):
        t = rng.random(y.size) < 0.5
        c_sums, t_sums = SufficientStats.from_arrays(y[~t], x[~t]), SufficientStats.from_arrays(y[t], x[t])
        eff = analyse(c_sums, t_sums, cuped=True, relative=False)
        z = eff.test_estimate / math.sqrt(eff.test_variance)
        welch = sps.ttest_ind(adjusted[t], adjusted[~t], equal_var=False).statistic
        sm = sm_ttest(adjusted[t], adjusted[~t], usevar="unequal")[0]
        assert welch == pytest.approx(sm, rel=1e-9)
        welch_var = np.var(adjusted[t], ddof=1) / t.sum() + np.var(adjusted[~t], ddof=1) / (~t).sum()
        if eff.test_variance <= welch_var * (1 + 1e-9):
            assert z == pytest.approx(welch, rel=1e-6)
        else:
            assert abs(z) < abs(welch)
        rel = analyse(c_sums, t_sums, cuped=True, relative=True)
        assert rel.test_estimate / math.sqrt(rel.test_variance) == pytest.approx(z, rel=0.03, abs=0.02)


def test_delta_method_variance_of_the_cuped_log_ratio_matches_a_bootstrap():
    """Users resampled within each arm, θ re-estimated on each resample: the bootstrap variance of
    log(μ_T/μ_C) over decide()'s delta-method variance is 1 within 8% on average over 20 draws (a variance
    that ignored θ's estimation, or one term of the delta method, would miss by more)."""
    y, x = _population()
    rng = np.random.default_rng(5)
    ratios = []
    for _ in range(20):
        t = rng.random(y.size) < 0.5
        eff = analyse(SufficientStats.from_arrays(y[~t], x[~t]), SufficientStats.from_arrays(y[t], x[t]),
                      cuped=True, relative=True)
        yt, xt, yc, xc = y[t], x[t], y[~t], x[~t]
        it = rng.integers(0, yt.size, (300, yt.size))
        ic = rng.integers(0, yc.size, (300, yc.size))
        ya, xa = np.concatenate([yt[it], yc[ic]], 1), np.concatenate([xt[it], xc[ic]], 1)
        xm = xa.mean(1, keepdims=True)
        theta = ((xa - xm) * (ya - ya.mean(1, keepdims=True))).sum(1) / ((xa - xm) ** 2).sum(1)
        mt = yt[it].mean(1) - theta * (xt[it].mean(1) - xm[:, 0])
        mc = yc[ic].mean(1) - theta * (xc[ic].mean(1) - xm[:, 0])
        ratios.append(np.var(np.log(mt / mc), ddof=1) / eff.test_variance)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.08), ratios
