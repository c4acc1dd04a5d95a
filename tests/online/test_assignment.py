"""Property tests of the user-sticky assignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cambrian.online.assignment import Assignment, bucket

USERS = list(range(20_000))


@st.composite
def weight_sets(draw, n_treatments: int):
    """Weights for control + n treatments, each treatment within its slot, summing to 100."""
    cap = 100 // n_treatments
    ws = [draw(st.integers(0, cap)) for _ in range(n_treatments)]
    if sum(ws) == 100 and max(ws) < 100:  # a 0% control is valid only for a full launch (treatment_weight_error)
        ws[0] -= 1
    return {"control": 100 - sum(ws), **{f"t{i}": w for i, w in enumerate(ws)}}


def _make(weights, salt="exp"):
    treatments = [a for a in weights if a != "control"]
    return Assignment.create(salt, "control", treatments, weights)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4).flatmap(lambda k: weight_sets(k)), st.text(min_size=1, max_size=8))
def test_sticky_and_deterministic(weights, salt):
    a, b = _make(weights, salt), _make(dict(weights), salt)
    users = USERS[:500]
    assert [a.arm_of(u) for u in users] == [b.arm_of(u) for u in users]
    assert list(a.arm_indices(users)) == [a.arms.index(a.arm_of(u)) for u in users]
    assert a.arm_index_list(users) == list(a.arm_indices(users))        # numpy path
    assert a.arm_index_list(users[:20]) == list(a.arm_indices(users[:20]))  # pure-Python path


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4).flatmap(lambda k: st.tuples(weight_sets(k), weight_sets(k))))
def test_ramp_moves_only_between_control_and_a_treatment(pair):
    w1, w2 = pair
    a1, a2 = _make(w1), _make(w2)
    arms1 = a1.arm_indices(USERS[:3000])
    arms2 = a2.arm_indices(USERS[:3000])
    moved = arms1 != arms2
    # Never treatment -> another treatment.
    assert not np.any(moved & (arms1 > 0) & (arms2 > 0))
    # A treatment that did not shrink keeps every user it had; one that did not grow gains none.
    for i, arm in enumerate(a1.treatments, start=1):
        if w2[arm] >= w1[arm]:
            assert np.all(arms2[arms1 == i] == i)
        if w2[arm] <= w1[arm]:
            assert np.all(arms1[arms2 == i] == i)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3).flatmap(lambda k: weight_sets(k)))
def test_share_matches_weights(weights):
    a = _make(weights)
    idx = a.arm_indices(USERS)
    n = len(USERS)
    for i, arm in enumerate(a.arms):
        p = weights[arm] / 100
        share = np.mean(idx == i)
        # 5 standard errors of a binomial proportion (plus a tiny slack for p in {0, 1}).
        assert abs(share - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (arm, share, p)


def test_full_launch_and_errors():
    a = Assignment.create("s", "control", ["t0", "t1"], {"control": 0, "t0": 100, "t1": 0})
    assert set(a.arm_indices(USERS[:100])) == {1}
    with pytest.raises(ValueError, match="weights: must sum to 100"):
        Assignment.create("s", "control", ["t0"], {"control": 50, "t0": 40})
    with pytest.raises(ValueError, match=r"weights.t1: 60% exceeds"):
        Assignment.create("s", "control", ["t0", "t1"], {"control": 40, "t0": 0, "t1": 60})
    with pytest.raises(ValueError, match=r"weights.control: must be an integer"):
        Assignment.create("s", "control", ["t0"], {"control": 50.5, "t0": 49.5})
    with pytest.raises(ValueError, match="unknown arm"):
        Assignment.create("s", "control", ["t0"], {"control": 50, "tx": 50})


def test_salt_changes_buckets():
    same = sum(bucket(u, "a") == bucket(u, "b") for u in USERS[:2000])
    assert same < 20


@pytest.mark.parametrize("weights,problem", [
    ([0, 50, 50], "weights.control: 0%"),     # was accepted locally: four days of a 0% control, then "inconclusive"
    ([1, 34, 33, 32], "weights.treatment 1: 34% exceeds"),
])
def test_the_rollout_ramp_follows_the_router_rule(weights, problem):
    """A Rollout's ramp step (the one format of both platforms; its CEL rule says the same) is refused where
    the router would refuse its weights, and accepted at 100/(K+1) each."""
    from pydantic import ValidationError

    from cambrian.operator.api import RampStep

    with pytest.raises(ValidationError, match=problem):
        RampStep.model_validate({"weights": weights})
    k = len(weights) - 1
    even = [100 - k * (100 // (k + 1))] + [100 // (k + 1)] * k
    assert RampStep.model_validate({"weights": even}).weights == even
