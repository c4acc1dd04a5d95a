"""The decision benchmark on the calibrated world: its per-arm sums are the collector's (fast), the demo's policy,
and a small run end to end (slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cambrian.bench.decision_world import (Outcomes, Size, _blocks, arm_sums, by_duration, demo_policy, experiment,
                                          fixed_test_at_end, true_effect)
from cambrian.online.aggregate import AggregationSettings, arm_statistics


def _outcomes(rng, n, days, lift):
    active = (rng.random((n, days)) < 0.6).astype(float)
    minutes = active * rng.gamma(2.0, 10.0, (n, days)) * (1 + lift)
    imps = active * rng.integers(20, 80, (n, days))
    return Outcomes(minutes=minutes, active=active, hates=np.floor(imps * rng.random((n, days)) * 0.05),
                    impressions=imps)


def test_each_worlds_arms_are_its_own_candidates_with_aa_first_and_the_trap_last():
    from cambrian.bench.decision_world import WORLD_ARMS
    from cambrian.bench.fidelity import TRAP, bench_world

    for world, arms in WORLD_ARMS.items():
        assert arms[0] == "aa" and arms[-1] == TRAP, world
        assert all(a in bench_world(world).candidates for a in arms[1:]), world
    # the ratio's arm is a reward that reads likes on the wary world's watch-time product, not its Φ0's label
    wary = bench_world("wary")
    assert '"like"' in wary.candidates[WORLD_ARMS["wary"][2]][1]["reward"]["label"]


def test_decision_world_names_the_worlds_it_has_arms_for():
    from cambrian.bench import decision_world
    from cambrian.errors import ConfigError

    with pytest.raises(ConfigError, match="no arms for world 'hooked'"):
        decision_world.run(world="hooked")
    with pytest.raises(ConfigError, match="unknown benchmark world"):
        decision_world.run(world="nowhere")
    with pytest.raises(ConfigError, match="unknown arm"):
        decision_world.run(world="wary", arms=("reward:watch_time",))


def test_arm_sums_equal_the_collectors_aggregation():
    """Same users, arms, days and pre-period: the benchmark's fast sums are online/aggregate.py's."""
    rng = np.random.default_rng(5)
    n, days, log_days = 60, 5, 3
    arms = {"c": _outcomes(rng, n, days, 0.0), "t": _outcomes(rng, n, days, 0.1)}
    first = np.where(arms["c"].active.any(1), arms["c"].active.argmax(1), days)
    for o in arms.values():  # the same first active day in both arms (as in the world: nothing differs before it)
        cols = np.arange(days)[None, :]
        o.active[cols == first[:, None]] = 1.0
        o.active[cols < first[:, None]] = 0.0
        o.minutes[cols < first[:, None]] = 0.0
    pre = rng.gamma(2.0, 8.0, (n, log_days)) * (rng.random((n, log_days)) < 0.6)
    x = pre.sum(1) / log_days
    assign = (rng.random(n) < 0.5).astype(int)
    closed = 3
    rows = []
    for u in range(n):
        for d in range(log_days):
            rows.append({"user_id": u, "day": d, "minutes": pre[u, d], "active": int(pre[u, d] > 0)})
        o = arms["ct"[assign[u]]]
        for d in range(days):
            rows.append({"user_id": u, "day": log_days + d, "minutes": o.minutes[u, d], "active": int(o.active[u, d]),
                         "hates": o.hates[u, d], "impressions": o.impressions[u, d]})
    ud = pd.DataFrame(rows).fillna(0)
    exposed = first <= closed
    exposures = pd.DataFrame({"user_id": np.arange(n)[exposed], "arm": np.array(["control", "treatment"])[assign][exposed],
                              "day": log_days + first[exposed]})
    want = arm_statistics(exposures, ud, log_days + closed, AggregationSettings(pre_days=14))
    got = arm_sums(arms, assign, ("c", "t"), first, x, closed)
    for arm in ("control", "treatment"):
        for metric in ("watch_minutes", "hate_rate"):
            w, g = want[metric][arm], got[arm][metric].to_dict()
            assert g.keys() == w.keys()
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-9, abs=1e-9), (arm, metric, k)


def test_demo_policy_is_the_demos_rollout_policy():
    """The full demo's Rollouts are planned by days (no decision before users/8 per arm, the design ends at
    maxDuration); the fast demo's by users (users/4 per arm); the benchmark's comparison design is the latter."""
    from dataclasses import replace

    from cambrian.demo import FAST, evolution_object

    p = demo_policy(2000, 14, 10)
    assert p.north_star.name == "watch_minutes" and p.north_star.cuped
    assert p.horizon == "days" and p.min_users_per_arm == 250 and p.max_days == 10
    assert [g.metric for g in p.guardrails] == ["hate_rate"]
    u = demo_policy(2000, 14, 10, planned_by_days=False)
    assert u.horizon == "users" and u.planned_users_per_arm == 500 and u.min_users_per_arm == 50
    assert replace(u, horizon="days", min_users_per_arm=250, planned_users_per_arm=p.planned_users_per_arm) == p
    fast = evolution_object(FAST, 0, gemini=False)["spec"]["experiment"]["statistics"]
    assert fast == {"minSamplePerArm": 50, "plannedSamplePerArm": 250, "maxDuration": "6d"}


def test_an_experiment_on_a_large_lift_promotes_and_an_aa_rarely_does():
    rng = np.random.default_rng(1)
    n, days = 2000, 6
    c = _outcomes(rng, n, days, 0.0)
    big = Outcomes(minutes=c.minutes * 1.3, active=c.active, hates=c.hates, impressions=c.impressions)
    first = np.where(c.active.any(1), c.active.argmax(1), days)
    x = c.minutes[:, :2].mean(1)
    policy = demo_policy(n, 7, days)
    assert true_effect(big, c, first)[0] == pytest.approx(0.3)
    win = experiment({"control": c, "treatment": big}, ("control", "treatment"), first, x, policy, rng)
    assert win["outcome"] == "promote" and win["users_per_arm"] > 0
    assert win["estimate"] == pytest.approx(0.3, abs=0.1)   # the lift a launch reports (the winner's curse, per arm)
    aa = [experiment({"control": c, "treatment": c}, ("control", "treatment"), first, x, policy, rng)["outcome"]
          for _ in range(10)]
    assert aa.count("promote") <= 2


def test_a_better_change_that_doubles_hates_is_rolled_back_by_the_guardrail_and_promoted_without_it():
    """What `without_guardrails` separates: the hate-rate guardrail, not the north star's test, stops it."""
    from dataclasses import replace

    rng = np.random.default_rng(2)
    n, days = 2000, 6
    c = _outcomes(rng, n, days, 0.0)
    hated = Outcomes(minutes=c.minutes * 1.3, active=c.active, hates=c.hates * 2 + 1, impressions=c.impressions)
    first = np.where(c.active.any(1), c.active.argmax(1), days)
    x = c.minutes[:, :2].mean(1)
    policy = demo_policy(n, 7, days)
    pair = {"control": c, "treatment": hated}
    stopped = experiment(pair, ("control", "treatment"), first, x, policy, rng)
    assert stopped["outcome"] == "rollback" and "hate_rate" in stopped["reason"]
    bare = experiment(pair, ("control", "treatment"), first, x, replace(policy, guardrails=()), rng)
    assert bare["outcome"] == "promote"


def test_by_duration_cuts_the_same_outcomes_and_plans_each_design_to_its_own_end():
    """A lift that only starts on day 4: a 3-day design cannot see it (its true effect is 0 and it never promotes),
    a 6-day one sees it and promotes after day 3; the A/A arm is run on the same draws."""
    rng = np.random.default_rng(3)
    n, days = 2000, 6
    c = _outcomes(rng, n, days, 0.0)
    late = c.minutes.copy()
    late[:, 3:] *= 3.0
    outcomes = {"control": c, "late": Outcomes(minutes=late, active=c.active, hates=c.hates, impressions=c.impressions)}
    x = c.minutes[:, :2].mean(1)
    size = Size(users=n, log_days=7, online_days=days, epochs=1, max_train_examples=1000, sims=4)
    out = by_duration(outcomes, x, ("late", "aa"), size, (3, 6))
    assert set(out) == {"3d", "6d"} and set(out["3d"]) == {"late", "aa"}
    assert out["3d"]["late"]["true_effect"] == 0.0 and out["3d"]["late"]["promote"] == 0.0
    # (a draw may stop for futility in the flat first days: the design cannot know that a lift is coming)
    assert out["6d"]["late"]["true_effect"] > 0.5 and out["6d"]["late"]["promote"] >= 0.5
    assert out["6d"]["late"]["median_day_of_decision"] > 3  # it could only promote once the lift had begun
    assert out["3d"]["aa"]["true_effect"] == out["6d"]["aa"]["true_effect"] == 0.0
    assert all(r["median_day_of_stop"] <= int(d[:-1]) for d, arms in out.items() for r in arms.values())


def test_fixed_test_at_the_end_reads_the_same_outcomes_in_both_arms():
    """A/A on one set of outcomes: the last day's fixed test over 600 draws rejects about α/2 per side
    (± 3 s.e.), its z has sd about 1, and scipy's Welch t-test on the same draws rejects as often (± 1%)."""
    rng = np.random.default_rng(2)
    n, days = 1500, 5
    c = _outcomes(rng, n, days, 0.0)
    first = np.where(c.active.any(1), c.active.argmax(1), days)
    x = c.minutes[:, :2].mean(1) + rng.gamma(2.0, 3.0, n)
    draws = [(rng.random(n) < 0.5).astype(np.int8) for _ in range(600)]
    r = fixed_test_at_end(c, first, x, draws)
    assert r["draws"] == 600 and abs(r["z_sd"] - 1) < 0.1 and abs(r["z_mean"]) < 0.15
    lo, hi = r["variance_ratio_95"]
    assert lo < r["variance_ratio"] < hi and lo < 1 < hi, r
    for side in ("promote", "rollback"):
        assert abs(r[side] - 0.025) <= 3 * r["se_per_side"], r
    assert abs(r["welch_scipy_two_sided"] - (r["promote"] + r["rollback"])) <= 0.01, r


def test_promotions_are_counted_per_block_of_draws():
    runs = [{"outcome": "promote" if i % 100 == 0 else "inconclusive"} for i in range(1000)]
    assert _blocks(runs) == [4, 4]          # the last 200 draws make no full block
    assert _blocks(runs, 500) == [5, 5]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_decision_world_small_end_to_end():
    from cambrian.bench import decision_world

    size = decision_world.Size(users=200, log_days=3, online_days=3, epochs=1, max_train_examples=20_000, sims=4)
    r = decision_world.run(size=size, durations=(2, 3))
    json.dumps(r)
    assert set(r["by_duration"]) == {"2d", "3d"} and set(r["by_duration"]["2d"]) == set(decision_world.ARMS)
    assert set(r["arms"]) == set(decision_world.ARMS)
    assert r["arms"]["aa"]["true_effect"] == 0.0
    for a in r["arms"].values():
        assert a["promote"] + a["rollback"] + a["inconclusive"] + a["no_decision_by_max_duration"] == pytest.approx(1.0)
    assert 0 < r["minutes_per_day_cv"] and -1 <= r["cuped_rho"] <= 1
    assert r["arms"]["aa"]["fixed_test_at_max_duration"]["draws"] == 4
    assert r["policy"]["horizon"] == "days" and r["planned_users_policy"]["horizon"] == "users"
    assert all(a["planned_users"]["median_day_of_stop"] >= 1 for a in r["arms"].values())
    assert not any("guardrail" in why for a in r["arms"].values() for why in a["without_guardrails"]["reasons"])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_decision_world_on_the_wary_world_trains_its_watch_time_product_and_its_arms():
    from cambrian.bench import decision_world

    size = decision_world.Size(users=200, log_days=3, online_days=3, epochs=1, max_train_examples=20_000, sims=4)
    r = decision_world.run(size=size, world="wary", users=240)
    assert r["world"]["preset"] == "wary" and r["world"]["users"] == 240
    assert r["command"] == "cambrian bench run decision-world --world wary --users 240"
    assert set(r["arms"]) == set(decision_world.WORLD_ARMS["wary"])
    assert r["ratio"] == r["arms"]["reward:watch_and_like"]["promote"]
    # the watch + like model is not Φ0 (a watch-time model): its outcomes differ from the control's
    assert r["arms"]["reward:watch_and_like"]["true_effect"] != 0.0
    for a in r["arms"].values():
        bare = a["without_guardrails"]
        assert bare["promote"] + bare["rollback"] + bare["inconclusive"] + bare["no_decision_by_max_duration"] == \
            pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_decision_world_quick_aa_design_by_days_keeps_alpha():
    """The quick calibrated world (600 users, 6 days), 1,000 A/A draws: the design planned by days (union
    boundaries) promotes ≤ α/2 and decides falsely ≤ α, each + 2 Monte Carlo s.e.; the last day's fixed test on
    the same draws is within α/2 per side ± 3 s.e. (its z is N(0, 1) on this world's heavy-tailed minutes)."""
    from cambrian.bench import decision_world

    r = decision_world.run(quick=True, arms=("aa",), sims=1000)["arms"]["aa"]
    within = lambda rate, a: rate <= a + 2 * (a * (1 - a) / 1000) ** 0.5  # noqa: E731
    d = r  # the demo's design: planned by days
    assert within(d["promote"], 0.025) and within(d["promote"] + d["rollback"], 0.05), d
    f = r["fixed_test_at_max_duration"]
    for side in ("promote", "rollback"):
        assert abs(f[side] - 0.025) <= 3 * f["se_per_side"], f
