"""One test per branch of decide() (see the order in cambrian/stats/decision.py)."""

import json

import numpy as np
import pytest

from cambrian.stats import (DecisionPolicy, DecisionState, Guardrail, HardLimit, Metric,
                                          SufficientStats, decide)

W = {"c": 0.5, "t": 0.5}
N = 20_000


def policy(**kw):
    # exact boundaries: a single look on day 5 of 14 that spends α (the union rule of a days design spends
    # nothing before half time; its own tests are in test_group_sequential.py)
    base = dict(north_star=Metric("watch"), planned_users_per_arm=N, min_users_per_arm=1_000, max_days=14,
                boundary_rule="exact")
    return DecisionPolicy(**{**base, **kw})


def msprt(**kw):
    """The always-valid mixture SPRT (the tests of its carried p-values and τ)."""
    return policy(sequential="msprt", **kw)


@pytest.fixture(scope="module")
def arms(make_arm):
    return {
        "c": make_arm(N, seed=1), "good": make_arm(N, 0.2, seed=2), "bad": make_arm(N, -0.2, seed=3),
        "flat": make_arm(N, 0.0, seed=4), "better": make_arm(N, 0.4, seed=5),
    }


def run(pol, arms, treat=("good",), metrics=("watch",), days=5.0, **kw):
    stats = {a: {m: arms[a] for m in metrics} for a in ("c", *treat)}
    if "stats" in kw:
        stats = kw.pop("stats")
    weights = kw.pop("weights", {a: 1.0 for a in ("c", *treat)})
    return decide(pol, control="c", weights=weights, stats=stats, elapsed_days=days, **kw)


def test_promote(arms):
    d = run(policy(), arms)
    assert d.outcome == "promote" and d.winner == "good"
    a = d.arms["good"]
    assert a.effect.estimate == pytest.approx(0.02, abs=0.003) and a.effect.relative and a.effect.theta > 0.5
    assert a.ci[0] > 0 and a.p_value < 1e-6 and a.p_adjusted == a.p_value
    json.dumps(d.to_dict(), allow_nan=False)


def test_srm_never_promotes(arms):
    d = run(policy(), arms, exposures={"c": 51_000, "good": 49_000})
    assert d.outcome == "rollback" and d.reason.startswith("SRM") and d.winner is None
    assert d.srm.mismatch and d.arms["good"].outcome == "rollback"
    # without exported exposures the north star's n is used
    skewed = {"c": {"watch": arms["c"]}, "good": {"watch": arms["good"].merge(arms["flat"])}}
    assert run(policy(), arms, stats=skewed).reason.startswith("SRM")


def test_hard_limit_breach_rolls_back_that_arm_only(arms):
    pol = policy(hard_limits=(HardLimit("latency_p99_ms", max=250),))
    values = {"good": {"latency_p99_ms": 400.0}, "better": {"latency_p99_ms": 120.0}}
    d = run(pol, arms, treat=("good", "better"), values=values)
    assert d.arms["good"].outcome == "rollback"
    assert "latency_p99_ms on good is 400, above the max 250" in d.arms["good"].reason
    assert d.outcome == "promote" and d.winner == "better"
    d1 = run(pol, arms, values={"good": {"latency_p99_ms": 400.0}})
    assert d1.outcome == "rollback" and "hard limit" in d1.reason


def test_hard_limit_from_sums(arms, make_arm):
    # error rate as a metric with sums: the arm mean (≈10) is over the bound
    pol = policy(hard_limits=(HardLimit("watch", max=5.0),))
    assert run(pol, arms).outcome == "rollback"


@pytest.mark.parametrize("case", ["north_star", "guardrail", "hard_limit", "exposures"])
def test_missing_data_continues_never_promotes(arms, case):
    pol = policy(guardrails=(Guardrail("dau", margin=0.01),), hard_limits=(HardLimit("latency_p99_ms", max=250),))
    stats = {a: {"watch": arms[a], "dau": arms[a]} for a in ("c", "good")}
    values = {"good": {"latency_p99_ms": 100.0}}
    exposures = {"c": N, "good": N}
    if case == "north_star":
        del stats["good"]["watch"]
    elif case == "guardrail":
        del stats["c"]["dau"]
    elif case == "hard_limit":
        values = {}
    else:
        exposures = {"c": N}
    d = run(pol, arms, stats=stats, values=values, exposures=exposures)
    assert d.outcome == "continue" and d.reason.startswith("missing data") and d.winner is None


def test_missing_data_at_max_duration_is_inconclusive(arms):
    stats = {"c": {"watch": arms["c"]}, "good": {}}
    d = run(policy(), arms, stats=stats, days=30, exposures={"c": N, "good": N})
    assert d.outcome == "inconclusive" and "missing data" in d.reason


@pytest.mark.parametrize("c, t, days", [
    ([1.0], [2.0], 3), ([], [], 3), ([5.0] * 50, [5.0] * 50, 3), ([5.0] * 50, [5.0] * 50, 99),
])
def test_insufficient_data_continues(arms, c, t, days):
    stats = {"c": {"watch": SufficientStats.from_arrays(c)}, "good": {"watch": SufficientStats.from_arrays(t)}}
    d = run(policy(), arms, stats=stats, days=days)
    assert d.outcome == ("continue" if days < 14 else "inconclusive")
    assert "insufficient data" in d.reason and d.winner is None


def test_guardrail_failure_rolls_back(arms):
    pol = policy(guardrails=(Guardrail("dau", margin=0.005),))
    stats = {"c": {"watch": arms["c"], "dau": arms["c"]}, "good": {"watch": arms["good"], "dau": arms["bad"]}}
    d = run(pol, arms, stats=stats)
    assert d.outcome == "rollback" and "guardrail dau on good: fail" in d.reason
    assert d.arms["good"].guardrails[0].status == "fail"


def test_guardrail_pending_blocks_promotion_then_inconclusive(make_arm, arms):
    pol = policy(guardrails=(Guardrail("dau", margin=0.0005, cuped=False),))
    small_c, small_t = make_arm(2_000, seed=7), make_arm(2_000, seed=8)
    stats = {"c": {"watch": arms["c"], "dau": small_c}, "good": {"watch": arms["good"], "dau": small_t}}
    d = run(pol, arms, stats=stats)
    assert d.outcome == "continue" and "guardrail(s) not yet passed" in d.reason
    assert d.arms["good"].guardrails[0].status == "pending"
    d = run(pol, arms, stats=stats, days=14)
    assert d.outcome == "inconclusive" and d.winner is None


def test_guardrail_lower_is_better_passes(arms):
    pol = policy(guardrails=(Guardrail("hate", margin=0.01, higher_is_better=False),))
    stats = {"c": {"watch": arms["c"], "hate": arms["c"]}, "good": {"watch": arms["good"], "hate": arms["flat"]}}
    d = run(pol, arms, stats=stats)
    assert d.outcome == "promote" and d.arms["good"].guardrails[0].status == "pass"


def test_significantly_worse_rolls_back(arms):
    d = run(policy(), arms, treat=("bad",))
    assert d.outcome == "rollback" and "significantly worse" in d.reason


def test_lower_is_better_north_star(arms):
    pol = policy(north_star=Metric("watch", higher_is_better=False))
    assert run(pol, arms, treat=("bad",)).outcome == "promote"
    assert run(pol, arms, treat=("good",)).outcome == "rollback"


def test_min_sample_not_reached_continues(arms):
    d = run(policy(min_users_per_arm=50_000), arms)
    assert d.outcome == "continue" and "min sample not reached" in d.reason


@pytest.mark.parametrize("sequential", ["group", "msprt"])
def test_not_significant_continue_then_inconclusive(arms, sequential):
    pol = policy(sequential=sequential, planned_users_per_arm=4 * N)   # a quarter of the plan so far
    d = run(pol, arms, treat=("flat",))
    assert d.outcome == "continue" and "not significant yet" in d.reason
    d = run(pol, arms, treat=("flat",), days=14)
    assert d.outcome == "inconclusive" and d.arms["flat"].outcome == "inconclusive"


def test_partial_rollback_keeps_experiment_running(arms):
    d = run(policy(planned_users_per_arm=4 * N), arms, treat=("bad", "flat"))
    assert d.outcome == "continue"
    assert d.arms["bad"].outcome == "rollback" and d.arms["flat"].outcome == "continue"


def test_largest_significant_effect_wins(arms):
    d = run(policy(), arms, treat=("good", "better"))
    assert d.outcome == "promote" and d.winner == "better"
    assert d.arms["good"].outcome == "continue" and "better has the larger effect" in d.arms["good"].reason


def _nudged(arms):
    """Treatments that differ from control by a tiny positive shift: not significant on their own."""
    y, x = np.random.default_rng(9).standard_normal((2, 4000))
    c = SufficientStats.from_arrays(10 + y, x)
    t = SufficientStats.from_arrays(10.0001 + y, x)
    return c, t


@pytest.mark.parametrize("correction, p1, p2, promoted", [
    ("holm", 0.03, 0.5, False), ("holm", 0.02, 0.04, True), ("bonferroni", 0.02, 0.5, True),
    ("bonferroni", 0.03, 0.5, False),
])
def test_multiple_arm_correction_on_carried_p_values(arms, correction, p1, p2, promoted):
    c, t = _nudged(arms)
    stats = {"c": {"watch": c}, "t1": {"watch": t}, "t2": {"watch": t}}
    state = {"t1/watch": {"looks": 3, "p_value": p1, "sign": 1}, "t2/watch": {"looks": 3, "p_value": p2, "sign": 1}}
    d = decide(msprt(correction=correction, min_users_per_arm=10), control="c", weights={"c": 1, "t1": 1, "t2": 1},
               stats=stats, elapsed_days=5, state=state)
    assert d.arms["t1"].p_value == p1   # the running minimum is carried
    assert (d.outcome == "promote") is promoted
    # the same p-value with a single treatment arm needs no correction
    single = decide(msprt(correction=correction, min_users_per_arm=10), control="c", weights=W,
                    stats={"c": {"watch": c}, "t": {"watch": t}}, elapsed_days=5,
                    state={"t/watch": {"looks": 3, "p_value": 0.03, "sign": 1}})
    assert single.outcome == "promote"


def test_direction_change_does_not_decide(arms):
    c, t = _nudged(arms)
    d = decide(policy(min_users_per_arm=10), control="c", weights=W, stats={"c": {"watch": c}, "t": {"watch": t}},
               elapsed_days=5, state={"t/watch": {"looks": 3, "p_value": 0.001, "sign": -1}})
    assert d.outcome == "continue" and "direction has changed" in d.reason


def test_state_roundtrip_and_monotone_p_across_looks(make_arm):
    state, ps = None, []
    c_all, t_all = SufficientStats(), SufficientStats()
    for day in range(8):
        c_all = c_all.merge(make_arm(1000, seed=100 + day))
        t_all = t_all.merge(make_arm(1000, 0.02, seed=200 + day))
        d = decide(msprt(), control="c", weights=W, stats={"c": {"watch": c_all}, "t": {"watch": t_all}},
                   elapsed_days=day + 1, state=state)
        state = json.loads(json.dumps(d.to_dict(), allow_nan=False))["state"]
        ps.append(d.arms["t"].p_value)
    assert all(a >= b for a, b in zip(ps, ps[1:]))
    assert DecisionState.from_dict(state).tests["t/watch"].looks == 8


def test_secondary_metrics_reported_with_bh(arms):
    pol = policy(secondary=(Metric("clicks"), Metric("likes")))
    stats = {a: {"watch": arms[a], "clicks": arms[a], "likes": arms["c"] if a == "c" else arms["flat"]}
             for a in ("c", "good")}
    d = run(pol, arms, stats=stats)
    rows = {r["metric"]: r for r in d.secondary}
    assert rows["clicks"]["q_value"] < 0.05 < rows["likes"]["q_value"]
    assert d.outcome == "promote"


@pytest.mark.parametrize("kw, field", [
    ({"alpha": 1.5}, "alpha"), ({"tau": -1.0}, "tau"), ({"correction": "sidak"}, "correction"),
    ({"planned_users_per_arm": 0}, "planned_users_per_arm"), ({"max_days": 0}, "max_days"),
])
def test_policy_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        policy(**kw)


def test_argument_validation(arms):
    with pytest.raises(ValueError, match="control arm"):
        decide(policy(), control="x", weights=W, stats={}, elapsed_days=1)
    with pytest.raises(ValueError, match="treatment"):
        decide(policy(), control="c", weights={"c": 1}, stats={}, elapsed_days=1)
    with pytest.raises(ValueError, match="elapsed_days"):
        decide(policy(), control="c", weights=W, stats={}, elapsed_days=-1)


def test_missing_secondary_metric_does_not_block(arms):
    pol = policy(secondary=(Metric("clicks"),))
    d = run(pol, arms)
    assert d.outcome == "promote" and d.secondary[0]["note"] == "missing data"


def test_policy_from_dict():
    spec = {"north_star": {"name": "return_d7", "relative": True}, "planned_users_per_arm": 5000,
            "min_users_per_arm": 500, "max_days": 21, "correction": "bonferroni",
            "guardrails": [{"metric": "hate_rate", "margin": 0.02, "higher_is_better": False}],
            "hard_limits": [{"metric": "latency_p99_ms", "max": 250}], "secondary": ["clicks"]}
    pol = DecisionPolicy.from_dict(json.loads(json.dumps(spec)))
    assert pol.north_star == Metric("return_d7") and pol.guardrails[0].margin == 0.02
    assert pol.hard_limits == (HardLimit("latency_p99_ms", max=250),) and pol.secondary == (Metric("clicks"),)
    with pytest.raises(ValueError, match="unknown field"):
        DecisionPolicy.from_dict({**spec, "alpah": 0.1})
    with pytest.raises(ValueError, match=r"guardrails\[0\]"):
        DecisionPolicy.from_dict({**spec, "guardrails": [{"metric": "x", "margn": 1}]})
    with pytest.raises(ValueError, match="north_star"):
        DecisionPolicy.from_dict({k: v for k, v in spec.items() if k != "north_star"})


def test_tau_is_fixed_at_the_first_look(make_arm):
    c, t = make_arm(3000, seed=31), make_arm(3000, 0.01, seed=32)
    d1 = decide(msprt(), control="c", weights=W, stats={"c": {"watch": c}, "t": {"watch": t}}, elapsed_days=1)
    tau1 = d1.state.tests["t/watch"].tau
    c2, t2 = c.merge(make_arm(9000, sd=3, seed=33)), t.merge(make_arm(9000, sd=3, seed=34))
    d2 = decide(msprt(), control="c", weights=W, stats={"c": {"watch": c2}, "t": {"watch": t2}}, elapsed_days=2,
                state=d1.state.to_dict())
    assert d2.state.tests["t/watch"].tau == tau1 > 0
    assert decide(msprt(tau=0.004), control="c", weights=W, stats={"c": {"watch": c}, "t": {"watch": t}},
                  elapsed_days=1).state.tests["t/watch"].tau == 0.004


def test_stats_of_the_wrong_type_name_the_field():
    with pytest.raises(TypeError, match=r"stats\['t'\]\['watch'\]"):
        decide(policy(), control="c", weights=W, stats={"c": {}, "t": {"watch": {"n": 3}}}, elapsed_days=1)


@pytest.mark.parametrize("pol", [policy(), msprt()], ids=["group", "msprt"])
def test_an_arm_stopped_earlier_keeps_its_verdict_needs_no_data_and_never_loosens_the_others(arms, pol):
    """A/B/n: an arm stopped at an earlier look (its users keep their assignment and weight but are served
    control's model) is not read in later looks. Passed as `stopped`, its verdict stands, its users still count in
    the SRM check, and the arm still running is tested as in the full family: α split across every treatment
    (group), the correction counting it at p = 1 (msprt), never as a family of one."""
    from cambrian.stats.multiple import adjust

    weights = {"c": 1.0, "flat": 1.0, "bad": 1.0}
    gone = {"bad": ("rollback", "north star significantly worse")}
    d = run(pol, arms, treat=("flat",), weights=weights, exposures={"c": 20_000, "flat": 20_000, "bad": 20_100},
            stopped=gone)
    assert d.arms["bad"].outcome == "rollback" and d.arms["bad"].effect is None
    assert not d.srm.mismatch and set(d.srm.observed) == {"c", "flat", "bad"}, d.srm
    assert "missing data" not in d.reason and d.arms["flat"].effect is not None, d.reason
    # a router that moved the stopped arm's users to control (re-randomised them) is a sample-ratio mismatch
    moved = run(pol, arms, treat=("flat",), weights=weights, exposures={"c": 30_000, "flat": 20_000, "bad": 10_000},
                stopped=gone)
    assert moved.srm.mismatch and moved.outcome == "rollback"
    # without its exposures, the check covers the arms still read (conditional multinomial)
    assert not run(pol, arms, treat=("flat",), weights=weights, exposures={"c": 20_000, "flat": 20_000},
                   stopped=gone).srm.mismatch
    pair = run(pol, arms, treat=("flat", "bad"))  # the same look with both arms read
    alone = run(pol, arms, treat=("flat",))       # a family of one
    (key,) = d.state.tests
    assert d.state.tests[key] == pair.state.tests[key]
    if pol.sequential == "group":
        assert d.state.tests[key] != alone.state.tests[key]  # its boundaries spend α/2, not α
    else:
        assert d.arms["flat"].p_adjusted == adjust([d.arms["flat"].p_value, 1.0], pol.correction)[0]
        assert d.arms["flat"].p_adjusted >= alone.arms["flat"].p_adjusted
    # every treatment stopped: the Rollout's test is over
    over = run(pol, arms, treat=(), weights=weights, stats={},
               stopped={"bad": ("rollback", "worse"), "flat": ("inconclusive", "futility")})
    assert over.outcome == "inconclusive"
    with pytest.raises(ValueError, match="stopped"):
        run(pol, arms, stopped={"nope": ("rollback", "x")})
