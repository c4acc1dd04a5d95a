"""A/B/n: each treatment arm's own outcome, from the readout through the Rollout's status to its Hypothesis.

The Rollout's decision is about the Rollout; a Hypothesis records its own arm's. Before, every treatment's Hypothesis
recorded the Rollout's decision: a harmful arm beside an inconclusive one was recorded as merely inconclusive (it could
be tested again, the journal and the surrogate learnt it did no harm), an arm still undecided when a sibling was rolled
back was recorded as a rollback, and a loser of a promoted Rollout as a promotion."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from cambrian.operator import api
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import readout as RD
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile import views
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.actions import DeleteArm, DeployArm, RecordJournal, SetWeights
from cambrian.operator.reconcile.observations import Analysis, ArmObservation, RolloutObservation
from cambrian.stats import SufficientStats

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ARMS = {"control": 3400, "b": 3300, "c": 3300}  # users, as the weights 34/33/33 expect them
HYPOTHESES = {"b": "hyp-b", "c": "hyp-c"}


def spec() -> api.RolloutSpec:
    return api.RolloutSpec.model_validate({
        "control": {"bundle": "champion"},
        "treatments": [{"name": arm, "hypothesisRef": {"name": h}, "bundle": h} for arm, h in HYPOTHESES.items()],
        "salt": "s", "ramp": {"steps": [{"weights": [34, 33, 33], "duration": "14d"}]},
        "metrics": {"northStar": [{"name": "minutes"}], "guardrails": [{"metric": "hate", "margin": 0.5}]},
        "statistics": {"minSamplePerArm": 500, "maxDuration": "14d"}, "decisionPolicy": "auto",
    })


def sums(lift_b: float, harm_c: bool = True, arms=ARMS) -> dict:
    """Arm b moves the north star by `lift_b`; arm c leaves it and (harm_c) triples the hate rate (its guardrail
    fails)."""
    rng = np.random.default_rng(0)
    out = {}
    for arm, n in arms.items():
        x = rng.normal(10, 3, n)
        y = x * 0.8 + rng.normal(2 + (lift_b if arm == "b" else 0.0), 1, n)
        hate = rng.binomial(1, 0.3 if arm == "c" and harm_c else 0.1, n).astype(float)
        out[arm] = {"minutes": SufficientStats.from_arrays(y, x), "hate": SufficientStats.from_arrays(hate)}
    return out


SEEN = {n: ArmObservation(n, True, True) for n in ARMS}
META = Meta("ro", "u")


def readout(st: api.RolloutStatus, data: dict, now: datetime, weights=None, **counts):
    """One due readout of the Rollout through the analysis and the core."""
    st = st.model_copy(update={"next_readout_at": now})
    a = RD.analyse(spec(), st, data, now, **(counts or {"exposures": ARMS}))
    return R.reconcile(META, spec(), st, api.Serving(), None,
                       RolloutObservation(SEEN, weights or {"control": 34, "b": 33, "c": 33}, a), now)


def stored(r) -> dict:
    return {"metadata": {"name": "ro"}, "spec": spec().wire(), "status": r.status.wire()}


def conclude(lift_b: float, days: float, harm_c: bool = True) -> dict:
    """One readout of the Rollout through the core; the Rollout object as stored after it."""
    st = api.RolloutStatus(phase="Running", started_at=T0, step_history=[T0])
    return stored(readout(st, sums(lift_b, harm_c), T0 + timedelta(days=days)))


def recorded(ro: dict, hypothesis: str) -> api.HypothesisStatus:
    """What the Hypothesis of a concluded Rollout records (its Evolution applies decisions at once here)."""
    evo = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "minutes"}]},
                                            "data": {"world": {"users": 100, "days": 3}}})
    ctx = H.EvolutionContext(name="evo", uid="evo-uid", spec=evo, baseline=evo.baseline)
    live = api.HypothesisStatus(phase="Live", rollout="ro")
    return H.reconcile(Meta(hypothesis, hypothesis + "-uid", "ns", 1), api.HypothesisSpec.model_validate(
        {"evolutionRef": {"name": "evo"}, "component": "optimizer", "explanation": "x", "delta": {"patch": {"lr": 0.01}}}),
        live, ctx, [], views.rollout_for(hypothesis, [ro]), T0 + timedelta(days=15)).status


def outcomes(ro: dict) -> dict:
    return {a["name"]: a.get("outcome") for a in ro["status"]["arms"]}


def test_a_harmful_arm_beside_an_inconclusive_one_is_recorded_as_a_rollback():
    ro = conclude(0.0, days=14)   # the design's final look: b found nothing, c broke its guardrail
    assert ro["status"]["phase"] == "Inconclusive" and ro["status"]["decision"] == "inconclusive"
    assert outcomes(ro) == {"control": None, "b": "inconclusive", "c": "rollback"}
    arm_c = next(a for a in ro["status"]["arms"] if a["name"] == "c")
    assert "guardrail hate" in arm_c["reason"]
    c, b = recorded(ro, "hyp-c"), recorded(ro, "hyp-b")
    assert (c.phase, c.online.arm, c.online.decision) == ("Retired", "c", "rollback")
    assert "guardrail hate" in c.online.reason and "guardrail" not in b.online.reason
    assert (b.phase, b.online.arm, b.online.decision) == ("Retired", "b", "inconclusive")


def served_by(sw: SetWeights) -> dict[str, str]:
    """Arm -> the arm whose model the router serves its users (the Service of its SetWeights entry)."""
    return {w.arm: next(a for a in ARMS if R.arm_name(META, a) == w.service) for w in sw.weights}


def routed(sw: SetWeights) -> RolloutObservation:
    """What the platform observes once the router has applied `sw`."""
    return RolloutObservation(SEEN, sw.as_dict(), services={w.arm: w.service for w in sw.weights})


def only(actions, kind) -> list:
    return [a for a in actions if isinstance(a, kind)]


def stop_c(now=T0 + timedelta(days=7)):
    """The readout at which c breaks its guardrail while b has no verdict yet."""
    return readout(api.RolloutStatus(phase="Running", started_at=T0, step_history=[T0]), sums(0.0), now)


def test_a_harmful_arm_is_served_control_at_once_and_keeps_its_weight_while_the_other_goes_on():
    """Before, one harmful arm rolled the whole Rollout back, ending b's test undecided; then (fbd9e33) c's weight
    went to 0, its share to control: a new router phase, every user's window restarted and c's users, carrying its
    lasting effect, were re-assigned into control's mean. Now c keeps its weight and its users their assignment (same
    phase), the router serves them control's model, and b goes on to its own decision with c's verdict standing."""
    now = T0 + timedelta(days=7)
    r = stop_c(now)
    assert r.status.phase == "Running" and r.status.decision is None
    (sw,) = only(r.actions, SetWeights)
    assert sw.as_dict() == {"control": 34, "b": 33, "c": 33} and sw.phase == 1 == R.weights_phase(r.status)
    assert served_by(sw) == {"control": "control", "b": "b", "c": "control"}
    arms = {a.name: a for a in r.status.arms}
    assert (arms["c"].outcome, arms["c"].stopped_at, arms["c"].weight) == ("rollback", now, 33)
    assert "guardrail hate" in arms["c"].reason and arms["b"].outcome == "continue" and arms["b"].stopped_at is None
    assert not only(r.actions, DeleteArm)   # the router still sends c's users to c's server
    (ev,) = [a for a in only(r.actions, RecordJournal) if a.event == "ArmStopped"]
    assert ev.warning and ev.data == {"arm": "c", "outcome": "rollback"} and "keep their assignment" in ev.message
    effect_c = [e for e in r.status.effects if e.arm == "c"]
    assert effect_c
    # the design's final look: c's users are still logged under c (served control's model: no harm any more)
    r2 = readout(r.status, sums(1.0, harm_c=False), T0 + timedelta(days=14))
    assert r2.status.phase == "Promoted" and r2.status.winner == "b", r2.status.reason
    assert r2.status.srm is not None and not r2.status.srm.mismatch
    ro = stored(r2)
    assert outcomes(ro) == {"control": None, "b": "promote", "c": "rollback"}
    assert [e for e in r2.status.effects if e.arm == "c"] == effect_c
    assert [g for g in r2.status.guardrails if g.arm == "c" and g.breached]
    c, b = recorded(ro, "hyp-c"), recorded(ro, "hyp-b")
    assert (c.phase, c.online.decision) == ("Retired", "rollback") and "guardrail hate" in c.online.reason
    assert c.online.effects and (b.phase, b.online.decision) == ("Launched", "promote")


def test_the_stopped_arms_deployment_goes_only_after_the_router_serves_its_users_from_control():
    """fbd9e33 left a stopped arm's Deployment running at 0% until the Rollout ended. Now it is deleted, but never
    while the router may still call it: only once the observed router config redirects the arm (and a kubelet had
    time to refresh the router's mounted config)."""
    now = T0 + timedelta(days=7)
    r = stop_c(now)
    (sw,) = only(r.actions, SetWeights)
    grace = timedelta(seconds=R.REDIRECT_GRACE_SECONDS)
    own = {a: R.arm_name(META, a) for a in ARMS}
    # the redirect is not applied yet (the router still serves c from c's Service): sent again, nothing deleted
    late = R.reconcile(META, spec(), r.status, api.Serving(), None,
                       RolloutObservation(SEEN, sw.as_dict(), services=own), now + grace)
    assert only(late.actions, SetWeights) == [sw] and not only(late.actions, DeleteArm)
    # applied, but a cluster's router may not have read it yet: wait for the grace, and come back then
    soon = R.reconcile(META, spec(), r.status, api.Serving(), None, routed(sw), now + timedelta(seconds=30))
    assert not only(soon.actions, (SetWeights, DeleteArm, DeployArm))
    assert soon.requeue_after == R.REDIRECT_GRACE_SECONDS - 30
    done = R.reconcile(META, spec(), soon.status, api.Serving(), None, routed(sw), now + grace)
    assert only(done.actions, DeleteArm) == [DeleteArm(R.arm_name(META, "c"), R.owner_of(META), "ro", "c")]
    assert not only(done.actions, (SetWeights, DeployArm))
    # once gone it is not deployed again, and the Rollout's arms count as ready
    gone = RolloutObservation({n: o for n, o in SEEN.items() if n != "c"}, sw.as_dict(),
                              services={w.arm: w.service for w in sw.weights})
    after = R.reconcile(META, spec(), done.status, api.Serving(), None, gone, now + grace + timedelta(minutes=1))
    assert not only(after.actions, (SetWeights, DeleteArm, DeployArm))
    assert {a.name: (a.weight, a.ready) for a in after.status.arms} == {
        "control": (34, True), "b": (33, True), "c": (33, False)}
    assert next(c for c in after.status.conditions if c.type == "ArmsReady").status == "True"


def test_the_remaining_arms_analysis_is_unaffected_by_a_stop():
    """The same data read with c stopped or still running: b's effect, its test's state (α split across both
    treatments) and the sample-ratio check (c's users counted at c's weight) are the same; c is just not read.
    A router that re-assigned c's users into control (fbd9e33's weight 0) is a sample-ratio mismatch."""
    stopped = stop_c().status
    running = stopped.model_copy(update={"arms": [
        a.model_copy(update={"stopped_at": None, "outcome": "continue"}) for a in stopped.arms]})
    data, now = sums(0.3, harm_c=False), T0 + timedelta(days=10)
    a_stop, a_run = (RD.analyse(spec(), st, data, now, exposures=ARMS) for st in (stopped, running))
    assert [e for e in a_stop.effects if e.arm == "b"] == [e for e in a_run.effects if e.arm == "b"]
    assert a_stop.state["b/minutes"] == a_run.state["b/minutes"]
    assert a_stop.srm_p_value == a_run.srm_p_value and not a_stop.srm_mismatch
    assert not [e for e in a_stop.effects if e.arm == "c"]
    assert a_stop.state["c/minutes"] == stopped.decision_state["c/minutes"] != a_run.state["c/minutes"]  # not read
    moved = RD.analyse(spec(), stopped, data, now, exposures={"control": 5050, "b": 3300, "c": 1650})
    assert moved.srm_mismatch and moved.outcome == "rollback"


def test_a_futile_arm_is_served_control_and_the_ramp_goes_on_with_its_designed_weight():
    """Before, an arm stopped for futility while the others went on kept its treatment until the Rollout ended.
    Now its users are served control's model at once, and a later ramp step gives it its designed weight in the new
    step (its users keep theirs), still served by control: one router phase per ramp step, as before any stop."""
    sp = api.RolloutSpec.model_validate({**spec().wire(), "ramp": {"steps": [
        {"weights": [80, 10, 10], "duration": "2d"}, {"weights": [34, 33, 33], "duration": "12d"}]}})
    now = T0 + timedelta(days=1)
    st = api.RolloutStatus(phase="Running", started_at=T0, step_started_at=T0, step_history=[T0], next_readout_at=now)
    futile = Analysis("continue", "b: not significant yet; c: futility", n={"control": 800, "b": 100, "c": 100},
                      arm_outcomes=(("b", "continue", "not significant yet"), ("c", "inconclusive", "futility: 2%")))
    r = R.reconcile(META, sp, st, api.Serving(), None,
                    RolloutObservation(SEEN, {"control": 80, "b": 10, "c": 10}, futile), now)
    (sw,) = only(r.actions, SetWeights)
    assert sw.as_dict() == {"control": 80, "b": 10, "c": 10} and sw.phase == 1 and r.status.step == 0
    assert served_by(sw) == {"control": "control", "b": "b", "c": "control"}
    (ev,) = [a for a in only(r.actions, RecordJournal) if a.event == "ArmStopped"]
    assert not ev.warning and "dropped" in ev.message
    # step 0 ends: the ramp moves on, c at its step-1 weight, still served by control
    r2 = R.reconcile(META, sp, r.status, api.Serving(), None, routed(sw), T0 + timedelta(days=2))
    (sw2,) = only(r2.actions, SetWeights)
    assert r2.status.step == 1 and sw2.as_dict() == {"control": 34, "b": 33, "c": 33} and sw2.phase == 2
    assert served_by(sw2) == {"control": "control", "b": "b", "c": "control"}
    # the next analysis passes c's verdict on instead of reading it; c's users count in the check per phase
    a = RD.analyse(sp, r2.status, {k: v for k, v in sums(0.0).items() if k != "c"}, T0 + timedelta(days=3),
                   cohorts={1: {"control": 1600, "b": 200, "c": 200}, 2: {"control": 3400, "b": 3300, "c": 3300}})
    assert dict((arm, o) for arm, o, _ in a.arm_outcomes)["c"] == "inconclusive" and "missing data" not in a.reason
    assert not a.srm_mismatch


def test_a_promoted_rollouts_undecided_loser_goes_back_to_the_review():
    """An arm with no verdict when another arm's promotion ended the Rollout: its test decided nothing about it.
    Before, it was recorded inconclusive and its Hypothesis Retired as if its test had found nothing; now its
    outcome says undecided (continue) and its Hypothesis goes back to Scored, to be tested against the new
    champion (the Hypothesis vocabulary: `Live -> Scored` when its Rollout decided nothing about it)."""
    ro = conclude(1.0, days=7, harm_c=False)    # b wins; c is fine but not significant yet
    assert ro["status"]["phase"] == "Promoted" and ro["status"]["winner"] == "b"
    assert outcomes(ro) == {"control": None, "b": "promote", "c": "continue"}
    c = recorded(ro, "hyp-c")
    assert (c.phase, c.undecided_tests, c.online) == ("Scored", ["ro"], None), c.reason
    assert recorded(ro, "hyp-b").phase == "Launched"


def test_an_arm_without_a_verdict_when_the_time_limit_ends_the_rollout_is_inconclusive():
    """Its test ran its full maxDuration: that is a verdict (inconclusive), and its Hypothesis is Retired."""
    st = readout(api.RolloutStatus(phase="Running", started_at=T0, step_started_at=T0, step_history=[T0]),
                 sums(0.0, harm_c=False), T0 + timedelta(days=1)).status
    assert {a.name: a.outcome for a in st.arms} == {"control": None, "b": "continue", "c": "continue"}
    r = R.reconcile(Meta("ro", "u"), spec(), st, api.Serving(), None,
                    RolloutObservation(SEEN, {"control": 34, "b": 33, "c": 33}), T0 + timedelta(days=14, hours=1))
    ro = stored(r)
    assert ro["status"]["phase"] == "Inconclusive"
    assert outcomes(ro) == {"control": None, "b": "inconclusive", "c": "inconclusive"}
    b = recorded(ro, "hyp-b")
    assert (b.phase, b.online.decision) == ("Retired", "inconclusive")


def test_a_promoted_rollout_records_its_harmful_loser_as_a_rollback():
    ro = conclude(1.0, days=7)    # b wins; c broke its guardrail
    assert ro["status"]["phase"] == "Promoted" and ro["status"]["winner"] == "b"
    assert outcomes(ro) == {"control": None, "b": "promote", "c": "rollback"}
    b, c = recorded(ro, "hyp-b"), recorded(ro, "hyp-c")
    assert (b.phase, b.online.decision) == ("Launched", "promote")
    assert (c.phase, c.online.decision) == ("Retired", "rollback")


def test_a_human_rollback_rolls_every_arm_back():
    sp = spec()
    st = api.RolloutStatus(phase="Running", started_at=T0, step_history=[T0], next_readout_at=T0 + timedelta(days=1))
    seen = {n: ArmObservation(n, True, True) for n in ARMS}
    r = R.reconcile(Meta("ro", "u"), sp, st, api.Serving(), None,
                    RolloutObservation(seen, {"control": 34, "b": 33, "c": 33}, approval="rollback"), T0 + timedelta(hours=1))
    ro = {"metadata": {"name": "ro"}, "spec": sp.wire(), "status": r.status.wire()}
    assert ro["status"]["phase"] == "RolledBack"
    assert outcomes(ro) == {"control": None, "b": "rollback", "c": "rollback"}
    assert recorded(ro, "hyp-b").online.decision == recorded(ro, "hyp-c").online.decision == "rollback"


def test_a_promoted_rollouts_loser_records_its_own_measured_effect_for_the_surrogate():
    """Each Hypothesis records its own arm's effects. The view of a promoted Rollout kept only the winner's, so the
    loser recorded the winner's effects: online_effect found none for its arm and the surrogate never learnt it."""
    from cambrian.agents.surrogate import observed_effect
    from cambrian.operator import proposing as P

    ro = conclude(1.0, days=7)    # b wins; c broke its guardrail
    assert ro["status"]["phase"] == "Promoted" and ro["status"]["winner"] == "b"
    measured = {(e["arm"], e["metric"]): e["estimate"] for e in ro["status"]["effects"]}
    evo = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "minutes"}]},
                                            "data": {"world": {"users": 100, "days": 3}}})
    objs = []
    for h, arm in (("hyp-b", "b"), ("hyp-c", "c")):
        online = recorded(ro, h).online
        assert online.arm == arm and online.effects
        assert {(e.arm, e.metric): e.estimate for e in online.effects} == {
            k: v for k, v in measured.items() if k[0] == arm}
        objs.append({"metadata": {"name": h}, "spec": {"component": "optimizer", "delta": {"patch": {"lr": 0.01}}},
                     "status": {"phase": "Retired", "online": online.wire()}})
    entries = {e.id: e for e in P.journal_view(objs, evo, evo.baseline)}
    # what the surrogate's training rows are made of (fit_journal keeps each hypothesis with an observed effect)
    assert observed_effect(entries["hyp-c"]) == measured[("c", "minutes")]
    assert observed_effect(entries["hyp-b"]) == measured[("b", "minutes")] != measured[("c", "minutes")]
