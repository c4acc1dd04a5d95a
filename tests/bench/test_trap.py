"""The clickbait-trap benchmark: its objects and verdicts (fast), one small seed through the real loop (slow)."""

from __future__ import annotations

import json
import shutil

import pytest

from cambrian.bench.trap import (QUICK, TRAP_NAME, evolution_and_trap, genuinely_better, online_verdicts, summarise,
                                 trap_stop, verdict_check)


def test_the_objects_are_the_demos_evolution_and_a_valid_human_trap():
    from cambrian.bench.fidelity import CANDIDATES, TRAP
    from cambrian.operator import api

    evo, trap = evolution_and_trap(QUICK, 3)
    api.parse_resource(evo)
    api.parse_resource(trap)
    assert evo["spec"]["data"]["world"] == {"users": QUICK.users, "days": QUICK.days, "seed": 3}
    assert evo["spec"]["agent"]["budgets"]["evaluations"] == QUICK.evaluations
    assert trap["spec"]["evolutionRef"]["name"] == evo["metadata"]["name"]
    assert trap["spec"]["origin"]["kind"] == "human"
    assert trap["spec"]["delta"]["patch"] == CANDIDATES[TRAP][1]["reward"]
    assert "reward" not in evo["spec"]["baseline"]  # the calibrated world's Φ0: the built-in click model


def test_the_hooked_world_runs_the_loop_on_its_watch_time_model_with_the_trap_learning_clicks():
    from cambrian.bench.fidelity import WATCH_LABEL, WORLDS, TRAP
    from cambrian.operator import api

    evo, trap = evolution_and_trap(QUICK, 3, "hooked")
    api.parse_resource(evo)
    api.parse_resource(trap)
    assert evo["spec"]["baseline"]["reward"] == {"label": WATCH_LABEL}
    assert evo["spec"]["baseline"]["training"]["epochs"] == QUICK.epochs
    assert trap["spec"]["delta"]["patch"] == WORLDS["hooked"].candidates[TRAP][1]["reward"]
    assert trap["spec"]["delta"]["patch"]["label"] == "label"
    seeds = [{"trap_launched": False, "genuinely_better_launched": [], "offline_best": None}]
    result = summarise(seeds, QUICK, quick=True, world="hooked")
    assert result["command"] == "cambrian bench run trap --quick --world hooked" and result["world"] == "hooked"


def test_the_wary_world_scores_reward_changes_by_likes_and_the_rest_by_the_default():
    """The wary world's product team scores reward changes by like_corr (its users leave when unsatisfied); the
    Evolution carries that objective, so the gate, the noise floor and the built-in proposer all read it."""
    from cambrian.bench.fidelity import WATCH_LABEL
    from cambrian.operator import api

    evo, trap = evolution_and_trap(QUICK, 1, "wary")
    offline = api.parse_resource(evo).spec.objective.offline
    assert (offline.reward.metric, offline.reward.direction) == ("like_corr", "maximize")
    assert offline.optimizer == api.OfflineObjective().optimizer
    assert evo["spec"]["baseline"]["reward"] == {"label": WATCH_LABEL}
    hooked, _ = evolution_and_trap(QUICK, 1, "hooked")  # the same product on the hooked world keeps the default
    assert api.parse_resource(hooked).spec.objective.offline.reward == api.OfflineObjective().reward


def test_the_demos_evolution_scores_rewards_by_the_worlds_proxy_of_watch_time():
    """A reward change is judged by what the model's own slates would collect of the held-out watch time (the
    north star's offline proxy, the operator's default since issue 18), not by return_corr (the former default,
    anti-correlated online on fidelity)."""
    from cambrian.operator import api
    from cambrian.trainer.schema import WORLD

    evo, _ = evolution_and_trap(QUICK, 0)
    spec = api.parse_resource(evo).spec
    reward = spec.objective.offline.for_component("reward")
    (proxy,) = [p for p in spec.data.declared().proxies if p.name == reward.metric]
    assert spec.data.declared().name == WORLD.name and reward.direction == "maximize"
    assert proxy.kind == "top_share" and "watch_seconds" in proxy.signal
    assert reward == api.OfflineObjective().reward  # the demo names no objective of its own: the default


def test_the_users_option_scales_only_the_users():
    from cambrian.bench.trap import FULL, size_for

    assert size_for(False) == FULL and size_for(True) == QUICK
    big = size_for(False, 4000)
    assert big.users == 4000 and {**big.__dict__, "users": FULL.users} == FULL.__dict__
    seeds = [{"trap_launched": False, "genuinely_better_launched": [], "offline_best": None}]
    assert summarise(seeds, big, quick=False)["command"] == "cambrian bench run trap --users 4000"
    assert summarise(seeds, FULL, quick=False)["command"] == "cambrian bench run trap"


def test_the_online_days_option_lengthens_the_tests_and_the_truth_with_them():
    from cambrian.bench.trap import FULL, evolution_and_trap, size_for

    long = size_for(False, online_days=28)
    assert (long.online_days, long.truth_days) == (28, 28)  # the truth covers the horizon the tests decide on
    assert {**long.__dict__, "online_days": FULL.online_days, "truth_days": FULL.truth_days} == FULL.__dict__
    short = size_for(False, online_days=10)
    assert (short.online_days, short.truth_days) == (10, FULL.truth_days)  # never shorter than the size's own
    evo, _ = evolution_and_trap(long, seed=0)
    assert evo["spec"]["experiment"]["statistics"]["maxDuration"] == "28d"
    seeds = [{"trap_launched": False, "genuinely_better_launched": [], "offline_best": None}]
    both = size_for(False, 4000, 10)
    assert summarise(seeds, both, quick=False)["command"] == "cambrian bench run trap --users 4000 --online-days 10"


def test_the_full_size_tests_as_long_as_the_demo_and_measures_the_truth_over_that_horizon():
    from cambrian.bench import decision_world
    from cambrian.bench.trap import FULL, evolution_and_trap
    from cambrian.demo import FULL as DEMO, evolution_object

    demo_length = evolution_object(DEMO, 0, gemini=False)["spec"]["experiment"]["statistics"]["maxDuration"]
    evo, _ = evolution_and_trap(FULL, seed=0)
    assert evo["spec"]["experiment"]["statistics"]["maxDuration"] == demo_length == f"{DEMO.online_days}d"
    assert decision_world.FULL.online_days == DEMO.online_days and FULL.truth_days >= DEMO.online_days


def test_genuinely_better_needs_a_clear_gain_and_no_clear_late_loss():
    t = {"minutes": 0.02, "minutes_se": 0.005, "active_days_late": 0.0, "active_days_late_se": 0.01}
    assert genuinely_better(t)
    assert not genuinely_better({**t, "minutes_se": 0.011})  # within two standard errors of zero
    assert not genuinely_better({**t, "active_days_late": -0.03})  # users come back less in the end


@pytest.mark.parametrize("status, want", [
    ({"phase": "Launched", "verdict": "better"}, "launched"),
    ({"phase": "Retired", "verdict": "better", "online": {"decision": "inconclusive", "reason": "futility"}},
     "online: inconclusive"),
    ({"phase": "Scored", "verdict": "not_better", "gain": -0.01, "noiseFloor": 0.002}, "offline gate"),
    ({"phase": "Scored", "verdict": "better"}, "offline better, not selected"),
    ({"phase": "Scored", "verdict": "better", "reason": "rollout r was ended by its Evolution before it decided",
      "conditions": [{"type": "Live", "status": "False", "reason": "Superseded"}]}, "online: undecided"),
    ({"phase": "Retired", "verdict": "better", "undecidedTests": ["r1", "r2", "r3"],
      "conditions": [{"type": "Live", "status": "False", "reason": "Undecided"}]}, "online: undecided in 3 tests"),
    ({"phase": "Validated"}, "offline gate: verdict None"),
    ({"phase": "Scored", "verdict": "promising"}, "offline: promising, not confirmed"),
    ({"phase": "Failed", "reason": "gate"}, "failed"),
])
def test_where_the_trap_stopped(status, want):
    assert trap_stop({"status": status}).startswith(want)


def test_the_headline_counts_seeds_that_kept_the_trap_out_and_launched_a_better_change():
    seeds = [{"trap_launched": False, "genuinely_better_launched": ["h1"], "offline_best": {"is_trap": True}},
             {"trap_launched": False, "genuinely_better_launched": [], "offline_best": None},
             {"trap_launched": True, "genuinely_better_launched": ["h2"], "offline_best": {"is_trap": False}}]
    s = summarise(seeds, QUICK, quick=True)
    assert s["ratio"] == pytest.approx(1 / 3)
    assert (s["trap_launched"], s["seeds_with_a_better_launch"], s["offline_best_is_trap"]) == (1, 2, 1)
    assert s["launch_effects"] == {"promotions": 0, "minutes": [], "median_abs_minutes": None}


def test_the_launched_changes_effects_are_each_promotions_truth_against_its_own_control():
    rollout = lambda decision, minutes: {"decision": decision, "truth_vs_control": {"minutes": minutes}}
    seeds = [{"trap_launched": False, "genuinely_better_launched": ["a"], "offline_best": None,
              "rollouts": [rollout("promote", 0.031), rollout("rollback", -0.2), rollout(None, 0.5)]},
             {"trap_launched": False, "genuinely_better_launched": [], "offline_best": None,
              "rollouts": [rollout("promote", -0.004), rollout("promote", 0.012),
                           {"decision": "promote", "truth_vs_control": None}]}]  # two treatments: no single truth
    effects = summarise(seeds, QUICK, quick=True)["launch_effects"]
    assert effects == {"promotions": 3, "minutes": [-0.004, 0.012, 0.031], "median_abs_minutes": 0.012}


def test_the_truth_is_measured_on_the_bundles_the_loop_served():
    """Reference: the first Rollout's control (not whichever baseline seed ran first); a hypothesis: its
    Rollout's treatment, or, never online, its first successful run (not a later confirmation seed)."""
    from datetime import datetime, timezone
    from types import SimpleNamespace as Run

    from cambrian.bench.trap import served_bundles

    def at(minute):
        return datetime(2026, 12, 2, 8, minute, tzinfo=timezone.utc)

    done = [Run(hypothesis="baseline", ok=True, bundle="/b/baseline-s1", finished_at=at(1)),
            Run(hypothesis="baseline", ok=True, bundle="/b/baseline", finished_at=at(2)),
            Run(hypothesis="h1", ok=True, bundle="/b/h1/seed-1000", finished_at=at(9)),
            Run(hypothesis="h1", ok=True, bundle="/b/h1/attempt-1", finished_at=at(5)),
            Run(hypothesis="trap", ok=False, bundle=None, finished_at=at(3)),
            Run(hypothesis="trap", ok=True, bundle="/b/trap/seed-1001", finished_at=at(8)),
            Run(hypothesis="trap", ok=True, bundle="/b/trap/attempt-2", finished_at=at(6))]
    rollouts = [{"metadata": {"name": "r2", "creationTimestamp": "2026-12-02T09:00:00Z"},
                 "spec": {"control": {"bundle": "local://b/h1/attempt-1"},
                          "treatments": [{"hypothesisRef": {"name": "h2"}, "bundle": "local://b/h2/attempt-1"}]}},
                {"metadata": {"name": "r1", "creationTimestamp": "2026-12-02T08:30:00Z"},
                 "spec": {"control": {"bundle": "local://b/baseline"},
                          "treatments": [{"hypothesisRef": {"name": "h1"}, "bundle": "local://b/h1/attempt-1"}]}}]
    local = lambda uri: uri.replace("local:/", "")  # noqa: E731
    reference, bundles = served_bundles(rollouts, done, {}, local)
    assert reference == "/b/baseline"
    assert bundles == {"h1": "/b/h1/attempt-1", "h2": "/b/h2/attempt-1", "trap": "/b/trap/attempt-2"}
    evolution = {"status": {"champion": {"name": "baseline", "bundle": "local://b/baseline"}}}
    assert served_bundles([], done, evolution, local)[0] == "/b/baseline"
    with pytest.raises(RuntimeError, match="no champion bundle"):
        served_bundles([], done, {}, local)


def _rollout(decision, reason="", breached=()):
    """A concluded Rollout as the operator writes it: status.guardrails holds the last readout's readings."""
    return {"spec": {"metrics": {"guardrails": [{"metric": "hate_rate", "direction": "minimize", "margin": 0.1},
                                                {"metric": "active_days", "direction": "maximize", "margin": 0.05}]}},
            "status": {"decision": decision, "reason": reason,
                       "guardrails": [{"arm": "treatment", "metric": m, "breached": m in breached}
                                      for m in ("hate_rate", "active_days")]}}


GOOD = {"minutes": 0.05, "minutes_se": 0.005, "active_days_late": 0.01, "active_days_late_se": 0.005, "hate_rate": -0.3}
STOP = "guardrail hate_rate on treatment: fail (lower bound above the relative non-inferiority bound +0.1; ...)"


def test_each_verdict_is_checked_against_what_its_rollout_compared():
    """A promotion is right when the treatment beats its own control; a guardrail stop when the guarded metric
    truly moved past the margin; hand-made and inconclusive endings are no statistical verdict."""
    assert verdict_check(_rollout("promote"), GOOD) is True
    assert verdict_check(_rollout("promote"), {**GOOD, "minutes": -0.004}) is False  # seed 1's kind of false launch
    hate = _rollout("rollback", STOP, breached=("hate_rate",))
    assert verdict_check(hate, {**GOOD, "hate_rate": 1.28}) is True  # seed 2, against the champion
    assert verdict_check(hate, {**GOOD, "hate_rate": 0.05}) is False  # worse, but within the margin
    assert verdict_check(hate, GOOD) is False
    # the breached reading decides, not the words: the same reason with nothing breached is no guardrail verdict
    assert verdict_check(_rollout("rollback", STOP), {**GOOD, "hate_rate": 1.28}) is None
    # a maximised guardrail is harmed by a fall
    days = _rollout("rollback", "", breached=("active_days",))
    assert verdict_check(days, {**GOOD, "active_days": -0.08}) is True
    assert verdict_check(days, {**GOOD, "active_days": +0.08}) is False
    assert verdict_check(_rollout("rollback", "rollback approved by annotation cambrian.dev/approve"), GOOD) is None
    assert verdict_check(_rollout("inconclusive", "futility"), GOOD) is None
    assert verdict_check({"spec": {}, "status": {}}, GOOD) is None  # still running
    seeds = [{"rollouts": [{"decision": "promote", "verdict_right": True}, {"decision": "rollback", "verdict_right": True},
                           {"decision": "inconclusive", "verdict_right": None}]},
             {"rollouts": [{"decision": "promote", "verdict_right": False}]}, {}]
    assert online_verdicts(seeds) == {"promotions": 2, "promotions_right": 1, "stops": 1, "stops_right": 1}


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.timeout(3000)
def test_one_small_seed_through_the_real_loop():
    from cambrian.bench import trap

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (scripts/ci-prepare-prometheus.sh)")
    size = trap.Size(users=300, days=3, evaluations=16, online_days=3, epochs=1, max_train_examples=30_000, truth_days=3)
    r = trap.run(size=size, seeds=(0,))
    json.dumps(r)
    s = r["seeds"][0]
    assert s["trap"]["name"] == TRAP_NAME
    assert s["trap"]["verdict"] is not None, "the budget must let the trap train"
    assert s["trap"]["truth"] is not None and s["trap"]["truth"]["minutes_se"] >= 0
    assert s["trap_launched"] == (s["trap_stopped_at"] == "launched")
    for row in s["tested_online"]:
        assert row["truth"] is not None
    for ro in s["rollouts"]:  # every single-treatment Rollout is measured against its own control
        assert ro["truth_vs_control"] is not None and "hate_rate" in ro["truth_vs_control"]
        assert ro["verdict_right"] in (True, False, None)
