"""Property-based tests (hypothesis) on the three places untrusted numbers enter:

* deltas: `apply_delta(parse_delta(anything))` raises nothing but ConfigError, and what it returns is a
  valid Φ that differs from the base only in the delta's component;
* router weights / assignment: any valid weights give each user exactly one arm, shares follow the
  weights, users are sticky (same weights -> same arm, a new Assignment object or process changes
  nothing), a ramp only moves users from control into a treatment, and bad weights are a ValueError;
* the decision rule: it never promotes on missing data, on a sample-ratio mismatch or below the
  minimum sample, however large the effect.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cambrian.errors import ConfigError
from cambrian.online.assignment import N_BUCKETS, Assignment
from cambrian.stats import DecisionPolicy, Guardrail, Metric, SufficientStats, decide
from cambrian.trainer.config import COMPONENTS, ModelConfig
from cambrian.trainer.delta import apply_delta, parse_delta

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- deltas ------------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
KNOWN_KEYS = ["name", "lr", "weight_decay", "params", "code", "embedding_dim", "hidden", "dropout", "activation",
              "cross_layers", "label", "weight", "loss", "epochs", "batch_size", "seed", "device", "cpu_threads",
              "validation_days", "max_train_examples", "grad_clip", "long_watch_seconds"]
patches = st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10)), json_value, max_size=5)
deltas = st.one_of(
    json_value,
    st.fixed_dictionaries({"component": st.one_of(st.sampled_from(COMPONENTS), st.text(max_size=8)),
                           "patch": st.one_of(patches, json_value)},
                          optional={"code": st.one_of(st.text(max_size=50), json_value), "extra": json_value}),
)


@FAST
@given(deltas)
def test_apply_delta_raises_only_config_error(data):
    base = ModelConfig()
    try:
        out = apply_delta(base, parse_delta(data))
    except ConfigError as exc:
        assert str(exc)  # a message, never an empty error
        return
    assert isinstance(out, ModelConfig)
    comp = data["component"]
    for other in COMPONENTS:  # a delta touches only its own component (lesson L1)
        if other != comp:
            assert getattr(out, other) == getattr(base, other)
    # the result is itself a valid Φ: it round-trips
    assert ModelConfig.model_validate(out.model_dump(mode="json")) == out


@FAST
@given(st.sampled_from(["optimizer", "architecture", "reward", "training"]), patches)
def test_applying_the_same_delta_twice_is_idempotent(component, patch):
    """Merge patches are idempotent: replaying a delta after a crash cannot drift Φ."""
    try:
        d = parse_delta({"component": component, "patch": patch})
        once = apply_delta(ModelConfig(), d)
    except ConfigError:
        return
    assert apply_delta(once, d) == once


# ---- router weights and assignment -----------------------------------------------------------------

@st.composite
def valid_weights(draw, max_treatments=4):
    k = draw(st.integers(1, max_treatments))
    cap = N_BUCKETS // k // 100
    ws = [draw(st.integers(0, cap)) for _ in range(k)]
    assume(sum(ws) < 100 or 100 in ws)  # the control keeps traffic until a full launch
    names = [f"t{i}" for i in range(k)]
    return {"control": 100 - sum(ws), **dict(zip(names, ws))}, names


users = st.lists(st.integers(0, 2**40), min_size=1, max_size=60, unique=True)


@FAST
@given(valid_weights(), users, st.text(min_size=1, max_size=12))
def test_every_user_gets_exactly_one_sticky_arm(wt, uids, salt):
    weights, names = wt
    a = Assignment.create(salt, "control", names, weights)
    arms = [a.arm_of(u) for u in uids]
    assert all(x in a.arms for x in arms)
    assert all(weights[x] > 0 for x in arms)  # nobody lands on a 0% arm
    b = Assignment.create(salt, "control", names, dict(weights))  # e.g. a restarted router
    assert [b.arm_of(u) for u in uids] == arms
    idx = a.arm_index_list(uids)
    assert [a.arms[i] for i in idx] == arms
    assert [a.arms[i] for i in a.arm_indices(uids).tolist()] == arms


@FAST
@given(valid_weights(max_treatments=3), st.data())
def test_ramping_up_only_moves_users_out_of_control(wt, data):
    weights, names = wt
    grow = {t: data.draw(st.integers(weights[t], N_BUCKETS // len(names) // 100)) for t in names}
    assume(sum(grow.values()) < 100 or 100 in grow.values())
    new = {"control": 100 - sum(grow.values()), **grow}
    a = Assignment.create("salt", "control", names, weights)
    b = a.with_weights(new)
    for u in range(500):
        before, after = a.arm_of(u), b.arm_of(u)
        assert before == after or before == "control", (u, before, after)


@settings(max_examples=30, deadline=None)
@given(valid_weights(max_treatments=3))
def test_shares_follow_the_weights(wt):
    weights, names = wt
    a = Assignment.create("share-salt", "control", names, weights)
    n = 20000
    counts = {arm: 0 for arm in a.arms}
    for i in a.arm_indices(list(range(n))).tolist():
        counts[a.arms[i]] += 1
    for arm, w in weights.items():
        p = w / 100
        sd = math.sqrt(n * p * (1 - p)) + 1
        assert abs(counts[arm] - n * p) <= 6 * sd, (arm, counts, weights)


bad_weight = st.one_of(st.integers(-100, -1), st.integers(101, 1000), st.floats(0.1, 99.9).filter(lambda x: x != int(x)),
                       st.text(max_size=4), st.none(), st.booleans())


@FAST
@given(st.dictionaries(st.sampled_from(["control", "t0", "t1", "zz"]), st.one_of(st.integers(0, 100), bad_weight),
                       max_size=4))
def test_bad_weights_are_a_value_error_naming_weights(weights):
    try:
        a = Assignment.create("s", "control", ["t0", "t1"], weights)
    except ValueError as exc:
        assert "weights" in str(exc)
        return
    assert sum(a.weights.values()) == 100 and set(a.weights) == {"control", "t0", "t1"}


@FAST
@given(st.integers(1, 4).flatmap(lambda k: st.lists(st.integers(0, 100), min_size=k + 1, max_size=k + 1)))
def test_the_rollout_model_and_the_router_accept_the_same_weights(weights):
    """One rule of A/B/n weights: a ramp step the Rollout model accepts is one the router accepts, and back
    (the CRD's CEL twin is checked against the real API server in test_bad_inputs.py)."""
    from pydantic import ValidationError

    from cambrian.operator.api import RampStep

    weights[0] += 100 - sum(weights)
    assume(0 <= weights[0] <= 100)
    names = [f"t{i}" for i in range(len(weights) - 1)]
    try:
        RampStep(weights=weights)
        model_ok = True
    except ValidationError:
        model_ok = False
    try:
        Assignment.create("s", "control", names, dict(zip(["control", *names], weights)))
        router_ok = True
    except ValueError:
        router_ok = False
    assert model_ok == router_ok, weights


# ---- the decision rule -----------------------------------------------------------------------------

POLICY = DecisionPolicy(Metric("y"), planned_users_per_arm=2000, min_users_per_arm=500, max_days=14,
                        guardrails=(Guardrail("g", margin=0.05, higher_is_better=False),))


def sums(n: int, mean: float, sd: float) -> SufficientStats:
    """Sums of n users with this mean and (sample) standard deviation, no covariate."""
    if n == 0:
        return SufficientStats()
    s = n * mean
    ss = sd * sd * (n - 1) + n * mean * mean
    return SufficientStats(n=n, sum_y=s, sum_y2=ss)


effect = st.floats(0.05, 5.0)
n_big = st.integers(600, 50000)


@FAST
@given(n_big, effect, st.sampled_from(["control/y", "t/y", "control/g", "t/g"]), st.floats(0, 30))
def test_missing_data_never_promotes(n, lift, drop, days):
    stats = {"control": {"y": sums(n, 1.0, 1.0), "g": sums(n, 0.1, 0.01)},
             "t": {"y": sums(n, 1.0 + lift, 1.0), "g": sums(n, 0.1, 0.01)}}
    arm, metric = drop.split("/")
    del stats[arm][metric]
    d = decide(POLICY, control="control", weights={"control": 0.5, "t": 0.5}, stats=stats, elapsed_days=days,
               exposures={"control": n, "t": n})
    assert d.outcome != "promote" and d.winner is None
    assert d.outcome in ("continue", "inconclusive", "rollback")


@FAST
@given(n_big, effect, st.floats(0.15, 0.5), st.floats(0, 30))
def test_srm_never_promotes(n, lift, skew, days):
    stats = {"control": {"y": sums(n, 1.0, 1.0), "g": sums(n, 0.1, 0.01)},
             "t": {"y": sums(n, 1.0 + lift, 1.0), "g": sums(n, 0.1, 0.01)}}
    expo = {"control": int(n * (1 + skew)), "t": int(n * (1 - skew))}
    d = decide(POLICY, control="control", weights={"control": 0.5, "t": 0.5}, stats=stats, elapsed_days=days,
               exposures=expo)
    assert d.outcome == "rollback" and "SRM" in d.reason


@FAST
@given(st.integers(2, 499), effect, st.floats(0, 13.9))
def test_below_min_sample_never_promotes(n, lift, days):
    stats = {"control": {"y": sums(n, 1.0, 1.0), "g": sums(n, 0.1, 0.01)},
             "t": {"y": sums(n, 1.0 + lift, 1.0), "g": sums(n, 0.1, 0.01)}}
    d = decide(POLICY, control="control", weights={"control": 0.5, "t": 0.5}, stats=stats, elapsed_days=days,
               exposures={"control": n, "t": n})
    assert d.outcome != "promote", d.reason


@FAST
@given(st.integers(0, 3), st.integers(0, 3), st.floats(0, 30))
def test_no_users_at_all_is_no_decision(nc, nt, days):
    stats = {"control": {"y": sums(nc, 1.0, 1.0), "g": sums(nc, 0.1, 0.01)},
             "t": {"y": sums(nt, 9.0, 1.0), "g": sums(nt, 0.1, 0.01)}}
    d = decide(POLICY, control="control", weights={"control": 0.5, "t": 0.5}, stats=stats, elapsed_days=days,
               exposures={"control": nc, "t": nt})
    assert d.outcome != "promote"


def test_the_rule_does_promote_a_clear_winner():
    """The properties above are not vacuous: the same inputs with enough data and no fault promote."""
    n = 5000
    stats = {"control": {"y": sums(n, 1.0, 1.0), "g": sums(n, 0.1, 0.01)},
             "t": {"y": sums(n, 1.3, 1.0), "g": sums(n, 0.1, 0.01)}}
    # day 7 of 14: the design ends at max_days, whose union boundaries spend α first at half time
    d = decide(POLICY, control="control", weights={"control": 0.5, "t": 0.5}, stats=stats, elapsed_days=7,
               exposures={"control": n, "t": n})
    assert d.outcome == "promote" and d.winner == "t", d.reason
