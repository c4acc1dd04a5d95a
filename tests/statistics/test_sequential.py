"""Simulated A/A and A/B experiments with 20 daily looks, computed from sums only."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sst

from cambrian.stats import (SequentialState, confidence_sequence, msprt_log_lr, msprt_p_value,
                                          planned_information, rho_for_information, update)
from cambrian.stats.estimators import combine, cuped_arm_means
from cambrian.stats.sequential import cs_half_width

ALPHA, LOOKS, SIMS, PER_DAY, RHO = 0.05, 20, 2000, 200, 0.7
Z = sst.norm.isf(ALPHA / 2)


def _looks(delta: float, seed: int):
    """Cumulative daily sums for SIMS experiments -> per look (estimate, variance) raw and CUPED."""
    rng = np.random.default_rng(seed)
    cum = np.zeros((2, 6, SIMS))
    out = {k: np.zeros((LOOKS, SIMS)) for k in ("e_raw", "v_raw", "e_cup", "v_cup")}
    for d in range(LOOKS):
        for arm in (0, 1):
            x = rng.standard_normal((SIMS, PER_DAY))
            y = RHO * x + math.sqrt(1 - RHO**2) * rng.standard_normal((SIMS, PER_DAY)) + (delta if arm else 0)
            cum[arm] += np.stack([np.full(SIMS, PER_DAY), y.sum(1), (y * y).sum(1), x.sum(1), (x * x).sum(1),
                                  (x * y).sum(1)])
        out["e_raw"][d], out["v_raw"][d] = combine(*cuped_arm_means(tuple(cum[0]), tuple(cum[1]), False)[:4])
        out["e_cup"][d], out["v_cup"][d] = combine(*cuped_arm_means(tuple(cum[0]), tuple(cum[1]), True)[:4])
    return out


def _tau(var_at_end: float) -> float:
    return 1 / math.sqrt(rho_for_information(1 / var_at_end, ALPHA))


@pytest.fixture(scope="module")
def aa():
    return _looks(0.0, 11)


@pytest.fixture(scope="module")
def ab():
    return _looks(0.05, 12)


def test_aa_sequential_fpr_within_alpha_and_naive_peeking_far_above(aa):
    se = math.sqrt(ALPHA * (1 - ALPHA) / SIMS)
    naive = np.mean((np.abs(aa["e_raw"] / np.sqrt(aa["v_raw"])) > Z).any(0))
    fixed = np.mean(np.abs(aa["e_raw"][-1] / np.sqrt(aa["v_raw"][-1])) > Z)
    for e, v in ((aa["e_raw"], aa["v_raw"]), (aa["e_cup"], aa["v_cup"])):
        p = np.minimum.accumulate(msprt_p_value(e, v, _tau(v[-1].mean())), axis=0)
        assert np.mean(p[-1] < ALPHA) <= ALPHA + 2 * se
        rho = rho_for_information(1 / v[-1].mean(), ALPHA)
        covered = (np.abs(e) <= cs_half_width(v, ALPHA, rho)).all(0)   # true effect 0 inside at every look
        assert np.mean(covered) >= 1 - ALPHA - 2 * se
    assert 0.15 < naive < 0.35          # peeking at a fixed-horizon z-test 20 times: ~0.2-0.25
    assert abs(fixed - ALPHA) < 3 * se  # one planned look is fine


def test_cuped_gives_more_sequential_power(ab):
    tau = _tau(ab["v_raw"][-1].mean())
    power = {}
    for k in ("raw", "cup"):
        p = np.minimum.accumulate(msprt_p_value(ab[f"e_{k}"], ab[f"v_{k}"], tau), axis=0)
        power[k] = np.mean((p[-1] < ALPHA) & (ab[f"e_{k}"][-1] > 0))
    assert power["cup"] > power["raw"] + 0.15
    ratio = np.mean(ab["v_cup"][-1] / ab["v_raw"][-1])
    assert ratio == pytest.approx(1 - RHO**2, abs=0.03)


def test_update_carries_running_minimum_and_serialises():
    s = None
    seen = []
    for est in (0.0, 0.3, 0.05, -0.01, 0.2):
        s = update(s, est, 0.01, tau=0.1)
        seen.append(s.p_value)
        s = SequentialState.from_dict(json.loads(json.dumps(s.to_dict())))
    assert all(a >= b for a, b in zip(seen, seen[1:]))
    assert s.looks == 5 and s.sign == 1 and s.p_value == pytest.approx(float(msprt_p_value(0.3, 0.01, 0.1)))
    assert SequentialState.from_dict(None) == SequentialState()
    with pytest.raises(ValueError, match="p_value"):
        SequentialState.from_dict({"p_value": 2.0})
    with pytest.raises(ValueError, match="tau"):
        update(None, 0.1, 0.01, tau=0)
    with pytest.raises(ValueError, match="variance"):
        update(None, 0.1, 0.0, tau=0.1)


@settings(max_examples=200, deadline=None)
@given(est=st.floats(-10, 10), var=st.floats(1e-6, 10), rho=st.floats(1e-3, 1e6), alpha=st.floats(0.001, 0.5))
def test_cs_is_the_inverted_msprt(est, var, rho, alpha):
    """The CS excludes 0 exactly when the mSPRT with τ² = 1/ρ rejects (Λ ≥ 1/α)."""
    lo, hi = confidence_sequence(est, var, alpha, rho=rho)
    log_lr = float(msprt_log_lr(est, var, 1 / math.sqrt(rho)))
    if abs(log_lr - math.log(1 / alpha)) > 1e-6:
        assert (lo > 0 or hi < 0) == (log_lr >= math.log(1 / alpha))


def test_rho_tuned_to_planned_information_is_tightest_there():
    info = 5000.0
    rho = rho_for_information(info, ALPHA)
    w = lambda r: float(cs_half_width(1 / info, ALPHA, r))
    assert w(rho) < w(rho / 3) and w(rho) < w(rho * 3)
    assert planned_information(0.01, 100, 400) == pytest.approx(400.0)


def test_cs_wider_than_fixed_interval_and_bad_input():
    lo, hi = confidence_sequence(1.0, 0.04, 0.05, rho=10.0)
    assert hi - lo > 2 * Z * 0.2
    with pytest.raises(ValueError, match="alpha"):
        confidence_sequence(1.0, 0.04, 1.5, rho=10.0)
    with pytest.raises(ValueError, match="rho"):
        confidence_sequence(1.0, 0.04, 0.05, rho=0)
    with pytest.raises(ValueError, match="planned_information"):
        rho_for_information(-1.0)
