"""Group-sequential α-spending boundaries, the futility rule, and decide(sequential="group")."""

import math

import numpy as np
import pytest

from cambrian.stats import DecisionPolicy, Metric, SufficientStats, decide
from cambrian.stats.groupsequential import boundaries, conditional_power, futile, planned_drift, spent


def test_pocock_type_boundaries_match_published_values():
    # Lan-DeMets Pocock-type spending, 5 equally spaced looks, two-sided α = 0.05 (ldbounds' example)
    c = boundaries([0.2, 0.4, 0.6, 0.8, 1.0], 0.05, "pocock")
    assert c == pytest.approx([2.438, 2.427, 2.410, 2.397, 2.386], abs=2e-3)
    # a single look at t = 1 is the fixed-horizon test
    assert boundaries([1.0], 0.05)[0] == pytest.approx(1.959964, abs=1e-6)


@pytest.mark.parametrize("kind", ["obrien-fleming", "pocock"])
def test_boundaries_spend_exactly_alpha_under_the_null(kind):
    """Monte Carlo over a Brownian motion at 28 unequal looks: the crossing rate at each look matches
    the spending function's increments, and the total is α."""
    rng = np.random.default_rng(3)
    fr = np.cumsum(rng.uniform(0.5, 1.5, 28))
    fr = fr / fr[-1]
    c = np.array(boundaries(fr, 0.05, kind))
    sims = 200_000
    s = np.cumsum(rng.standard_normal((sims, fr.size)) * np.sqrt(np.diff(np.r_[0, fr])), axis=1)
    hit = np.abs(s / np.sqrt(fr)) >= c
    first = np.where(hit.any(1), hit.argmax(1), -1)
    total = np.mean(first >= 0)
    se = math.sqrt(0.05 * 0.95 / sims)
    assert abs(total - 0.05) < 3 * se
    half = np.mean((first >= 0) & (first < 14))
    assert abs(half - spent(fr[13], 0.05, kind)) < 3 * math.sqrt(0.05 / sims)
    assert list(c) == sorted(c, reverse=True) or kind == "pocock"   # O'Brien-Fleming: decreasing


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="must not decrease"):
        boundaries([0.5, 0.4])
    with pytest.raises(ValueError, match="> 0"):
        boundaries([0.0, 0.5])


def test_conditional_power_and_futility():
    d = planned_drift(0.05, 0.8)
    assert d == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    # on track for the planned effect at half the users: high conditional power, not futile
    assert conditional_power(d * math.sqrt(0.5), 0.5, 1.96, d) > 0.8
    assert not futile(d * math.sqrt(0.5), [0.25, 0.5], 0.05, "obrien-fleming", 0.8, 0.1)[0]
    # heading the wrong way at half the users: futile
    fut, cp = futile(-1.0, [0.25, 0.5], 0.05, "obrien-fleming", 0.8, 0.1)
    assert fut and cp < 0.1
    assert not futile(-3.0, [1.0], 0.05, "obrien-fleming", 0.8, 0.1)[0]   # never at the planned end


def _sums(rng, n, effect):
    x = rng.standard_normal(n)
    return SufficientStats.from_arrays(effect + 0.7 * x + 0.71 * rng.standard_normal(n), x)


def test_decide_group_sequential_promotes_and_stops_harmful_arms_for_futility():
    pol = DecisionPolicy(Metric("y", relative=False), planned_users_per_arm=4000, min_users_per_arm=0,
                         max_days=20, sequential="group")
    rng = np.random.default_rng(9)
    for effect, expect in ((0.2, "promote"), (-0.2, ("rollback", "inconclusive"))):
        c = t = SufficientStats()
        state, outcome = None, None
        for day in range(1, 21):
            c, t = c + _sums(rng, 200, 0.0), t + _sums(rng, 200, effect)
            d = decide(pol, control="c", weights={"c": 1, "t": 1}, stats={"c": {"y": c}, "t": {"y": t}},
                       elapsed_days=day, state=state)
            state = d.state
            if d.outcome != "continue":
                outcome = d.outcome
                break
        assert outcome == expect or outcome in expect
        assert day < 10, f"{effect}: decided only on day {day}"
        # the state round-trips through JSON (the CR status)
        st = d.state.to_dict()["t/y"]
        assert isinstance(st["fractions"], tuple | list) and st["looks"] == day
    with pytest.raises(ValueError, match="sequential"):
        DecisionPolicy(Metric("y"), planned_users_per_arm=10, min_users_per_arm=0, max_days=1, sequential="bayes")
