"""Every Rollout phase transition through the pure core."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cambrian.operator import api
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import (A_APPROVE, ClearWeights, DeleteArm, DeployArm, Mark, RecordJournal,
                                                SetWeights)
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import Analysis, ArmObservation, Effect, RolloutObservation

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
META = Meta("ro-a", "ro-uid", "ns", 3)
SERVING = api.Serving()


def spec(policy="auto", **stats) -> api.RolloutSpec:
    return api.RolloutSpec.model_validate(
        {
            "control": {"bundle": "pvc://b/champion"},
            "treatments": [{"name": "treatment", "hypothesisRef": {"name": "h1"}, "bundle": "pvc://b/h1"}],
            "salt": "s1",
            "ramp": {"steps": [{"weights": [90, 10], "duration": "1d"}, {"weights": [50, 50], "duration": "2d"}]},
            "metrics": {"northStar": [{"name": "dau"}], "readout": {"interval": "6h"}},
            "statistics": {"minSamplePerArm": 100, "maxDuration": "7d", **stats},
            "decisionPolicy": policy,
        }
    )


def arms(ready=True, names=("control", "treatment")):
    return {n: ArmObservation(R.arm_name(META, n), True, ready) for n in names}


def obs(weights=None, analysis=None, approval=None, ready=True, names=("control", "treatment")):
    return RolloutObservation(arms(ready, names), weights, analysis, approval)


def run(sp, st, o, now):
    return R.reconcile(META, sp, st, SERVING, "claim", o, now)


def running(sp=None):
    sp = sp or spec()
    r = run(sp, api.RolloutStatus(), RolloutObservation(), T0)
    assert r.status.phase == "Deploying"
    deploys = [a for a in r.actions if isinstance(a, DeployArm)]
    assert [(d.arm, d.bundle, d.name) for d in deploys] == [
        ("control", "pvc://b/champion", R.arm_name(META, "control")),
        ("treatment", "pvc://b/h1", R.arm_name(META, "treatment")),
    ]
    assert all(d.storage_claim == "claim" for d in deploys)
    # created but not ready: no re-deploy, no weights
    r = run(sp, r.status, obs(ready=False), T0 + timedelta(seconds=30))
    assert r.status.phase == "Deploying" and not any(isinstance(a, (DeployArm, SetWeights)) for a in r.actions)
    r = run(sp, r.status, obs(), T0 + timedelta(minutes=1))
    assert r.status.phase == "Running"
    return sp, r


def test_deploy_then_first_step_weights():
    sp, r = running()
    sets = [a for a in r.actions if isinstance(a, SetWeights)]
    assert len(sets) == 1 and sets[0].as_dict() == {"control": 90, "treatment": 10} and sets[0].salt == "s1"
    assert sets[0].phase == 1  # the router's phase: 0 while all users were on control, then one per ramp step
    assert sets[0].weights[1].service == R.arm_name(META, "treatment")
    s = r.status
    assert s.started_at == s.step_started_at == T0 + timedelta(minutes=1)
    assert s.next_readout_at == s.started_at + timedelta(hours=6)
    assert s.weights_summary == "control=90,treatment=10"


def test_weights_resynced_only_when_router_differs():
    sp, r = running()
    t = T0 + timedelta(hours=1)
    same = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}), t)
    assert same.actions == []
    drift = run(sp, r.status, obs(weights=None), t)
    assert [type(a) for a in drift.actions] == [SetWeights]


def test_missing_arm_is_redeployed_while_running():
    sp, r = running()
    o = RolloutObservation(arms(names=("control",)), {"control": 90, "treatment": 10})
    r2 = run(sp, r.status, o, T0 + timedelta(hours=1))
    assert [(type(a), a.arm) for a in r2.actions if isinstance(a, DeployArm)] == [(DeployArm, "treatment")]
    assert any(c.type == "ArmsReady" and c.status == "False" for c in r2.status.conditions)


def test_ramp_advances_after_step_duration():
    sp, r = running()
    t = r.status.step_started_at + timedelta(days=1)
    r2 = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}, analysis=cont()), t)
    assert r2.status.step == 1 and r2.status.step_started_at == t
    assert [a.as_dict() for a in r2.actions if isinstance(a, SetWeights)] == [{"control": 50, "treatment": 50}]
    # the router stamps exposures with the step: the analysis reads the users of the current step alone
    assert [a.phase for a in r2.actions if isinstance(a, SetWeights)] == [2]  # 0 before the ramp, then 1, 2, ...


def cont(n=50):
    return Analysis("continue", "not yet significant", {"control": n, "treatment": n})


def promote(n=500, winner="treatment"):
    eff = (Effect("treatment", "dau", 0.02, 0.01, 0.03, True, 0.001),)
    return Analysis("promote", "dau +2% [1%, 3%]", {"control": n, "treatment": n}, winner, eff, 0.5, False)


def at_readout(r):
    return r.status.next_readout_at


def test_promote_auto():
    sp, r = running()
    t = at_readout(r)
    r2 = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}, analysis=promote()), t)
    s = r2.status
    assert s.phase == "Promoted" and s.decision == "promote" and s.winner == "treatment" and s.concluded_at == t
    assert s.effects[0].ci_low == 0.01 and s.srm.mismatch is False and s.readouts == 1
    assert [(a.as_dict(), a.phase) for a in r2.actions if isinstance(a, SetWeights)] == \
        [({"control": 0, "treatment": 100}, 2)]  # the launch moves users too: the phase after step 0's (1)
    assert s.next_readout_at is None
    # stays put afterwards; does not delete the winner or control
    r3 = run(sp, s, obs(weights={"control": 0, "treatment": 100}), t + timedelta(days=1))
    assert r3.actions == [] and r3.status.phase == "Promoted"


def test_promote_needs_min_samples():
    sp, r = running()
    r2 = run(sp, r.status, obs(analysis=promote(n=10)), at_readout(r))
    assert r2.status.phase == "Running" and "minSamplePerArm" in r2.status.reason


def test_manual_promotion_waits_for_approval_then_applies_at_once():
    sp, r = running(spec(policy="manual"))
    t = at_readout(r)
    r2 = run(sp, r.status, obs(analysis=promote()), t)
    assert r2.status.phase == "AwaitingApproval" and r2.status.recommendation == "promote"
    assert [a.as_dict() for a in r2.actions if isinstance(a, SetWeights)] == [{"control": 90, "treatment": 10}]
    # no approval yet: nothing changes (weights already right)
    r3 = run(sp, r2.status, obs(weights={"control": 90, "treatment": 10}), t + timedelta(minutes=5))
    assert r3.status.phase == "AwaitingApproval" and r3.actions == []
    r4 = run(sp, r3.status, obs(weights={"control": 90, "treatment": 10}, approval="promote"), t + timedelta(minutes=6))
    assert r4.status.phase == "Promoted" and r4.status.winner == "treatment"


def test_a_promotion_approved_before_it_awaits_approval_is_removed_and_never_applied_later():
    """Before: an approve=promote set while Running stayed on the object and promoted, at the first step in
    AwaitingApproval, whatever the analysis recommended by then: an approval of nothing. Now it is removed (the
    Rollout's own Mark, value None) with a Warning, and only an approval given while it awaits one promotes."""
    sp, r = running(spec(policy="manual"))
    annotations = {A_APPROVE: "promote"}  # a human approves while the test is still running
    weights = {"control": 90, "treatment": 10}

    def step(status, now, analysis=None):
        res = run(sp, status, obs(weights=weights, analysis=analysis, approval=annotations.get(A_APPROVE)), now)
        for a in res.actions:  # as a platform applies them
            if isinstance(a, Mark) and (a.kind, a.name) == ("Rollout", META.name):
                annotations.pop(a.annotation, None) if a.value is None else annotations.update({a.annotation: a.value})
        return res

    early = step(r.status, T0 + timedelta(hours=1))
    assert early.status.phase == "Running"
    assert Mark("Rollout", META.name, R.owner_of(META), A_APPROVE, None) in early.actions
    (warn,) = [a for a in early.actions if isinstance(a, RecordJournal) and a.event == "ApprovalIgnored"]
    assert warn.warning and "Running" in warn.message
    awaiting = step(early.status, at_readout(r), promote())
    assert awaiting.status.phase == "AwaitingApproval"
    later = step(awaiting.status, at_readout(r) + timedelta(minutes=5))
    assert later.status.phase == "AwaitingApproval" and later.status.decision is None and later.actions == []
    # an approval given now, while it awaits one, promotes at once
    annotations[A_APPROVE] = "promote"
    approved = step(later.status, at_readout(r) + timedelta(minutes=6))
    assert approved.status.phase == "Promoted" and approved.status.winner == "treatment"
    assert not [a for a in approved.actions if isinstance(a, Mark)]  # the approval that applied stays on record


def test_a_misspelled_approval_is_removed_with_a_warning_naming_the_accepted_values():
    """Before, cambrian.dev/approve=promte (or yes) was silently ignored: the human believed they had answered."""
    sp, r = running(spec(policy="manual"))
    awaiting = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}, analysis=promote()), at_readout(r))
    assert awaiting.status.phase == "AwaitingApproval"
    for status in (r.status, awaiting.status):
        for value in ("promte", "yes", "Promote"):
            res = run(sp, status, obs(weights={"control": 90, "treatment": 10}, approval=value),
                      at_readout(r) + timedelta(minutes=5))
            assert res.status.phase == status.phase and res.status.decision is None
            assert Mark("Rollout", META.name, R.owner_of(META), A_APPROVE, None) in res.actions
            (warn,) = [a for a in res.actions if isinstance(a, RecordJournal) and a.event == "ApprovalIgnored"]
            assert warn.warning and repr(value) in warn.message and "promote and rollback" in warn.message


def test_an_early_approval_is_removed_even_in_the_step_whose_readout_recommends_a_promotion():
    sp, r = running(spec(policy="manual"))
    res = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}, analysis=promote(), approval="promote"),
              at_readout(r))
    assert res.status.phase == "AwaitingApproval"  # not Promoted: the approval came before the recommendation
    assert Mark("Rollout", META.name, R.owner_of(META), A_APPROVE, None) in res.actions
    # a Rollout not yet started: removed too; a rollback is not (it applies in any phase)
    pending = run(sp, api.RolloutStatus(), RolloutObservation(approval="promote"), T0)
    assert pending.status.phase == "Deploying" and any(isinstance(a, Mark) for a in pending.actions)
    assert not [a for a in run(sp, r.status, obs(approval="rollback"), T0).actions if isinstance(a, Mark)]


def test_rollback_on_guardrail_even_when_manual():
    sp, r = running(spec(policy="manual"))
    a = Analysis("rollback", "guardrail hate_rate breached", {"control": 500, "treatment": 500})
    r2 = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}, analysis=a), at_readout(r))
    assert r2.status.phase == "RolledBack" and r2.status.decision == "rollback"
    assert [a.as_dict() for a in r2.actions if isinstance(a, SetWeights)] == [{"control": 100, "treatment": 0}]
    assert [(a.arm) for a in r2.actions if isinstance(a, DeleteArm)] == ["treatment"]
    # the removed arm is not ready in the concluding status itself (before: ready until a later step, which the
    # cluster never takes for a concluded Rollout, so its status kept a deleted arm "ready")
    assert [(x.name, x.weight, x.ready) for x in r2.status.arms] == [("control", 100, True), ("treatment", 0, False)]


def test_srm_rolls_back():
    sp, r = running()
    a = Analysis("promote", "looks good", {"control": 5000, "treatment": 4000}, "treatment", (), 1e-9, True)
    r2 = run(sp, r.status, obs(analysis=a), at_readout(r))
    assert r2.status.phase == "RolledBack" and "sample ratio mismatch" in r2.status.reason
    assert r2.status.srm.mismatch


def test_prometheus_down_decides_nothing_and_retries():
    sp, r = running()
    t = at_readout(r)
    r2 = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}, analysis=None), t)
    s = r2.status
    assert s.phase == "Running" and s.decision is None and s.readouts == 0
    assert s.next_readout_at == t + timedelta(seconds=R.METRICS_RETRY_SECONDS)
    assert any(c.type == "MetricsAvailable" and c.status == "False" for c in s.conditions)
    assert not [a for a in r2.actions if isinstance(a, SetWeights)]


def test_inconclusive_from_analysis_and_from_max_duration():
    sp, r = running()
    a = Analysis("inconclusive", "futility: CI inside ±MDE", {"control": 500, "treatment": 500})
    r2 = run(sp, r.status, obs(analysis=a), at_readout(r))
    assert r2.status.phase == "Inconclusive"
    t = r.status.started_at + timedelta(days=7)
    o = obs(weights={"control": 50, "treatment": 50})
    st = r.status.model_copy(update={"next_readout_at": t + timedelta(hours=1)})
    r3 = run(sp, st, o, t)
    assert r3.status.phase == "Inconclusive" and "maxDuration" in r3.status.reason


def test_human_rollback_any_time():
    sp, r = running()
    r2 = run(sp, r.status, obs(approval="rollback"), T0 + timedelta(hours=2))
    assert r2.status.phase == "RolledBack" and r2.status.reason == "rollback approved by annotation cambrian.dev/approve"
    # the same rollback written by its Evolution (RetireRollout) says so, and why: not a person's verdict
    retired = RolloutObservation(arms(True, ("control", "treatment")), None, None, "rollback", retired="h left the top 2")
    r3 = run(sp, r.status, retired, T0 + timedelta(hours=2))
    assert r3.status.phase == "RolledBack" and r3.status.reason == "retired by its Evolution: h left the top 2"
    assert r3.status.retired == "h left the top 2" and r2.status.retired is None


def test_rollback_or_retirement_before_it_starts_ends_it_at_once():
    # before, Pending/Deploying ignored both: once its arms were ready it started Running and routed users to the
    # treatment (an Evolution retires a Rollout that has not started without waiting: evolution._preemptible)
    sp = spec()
    deploying = run(sp, api.RolloutStatus(), RolloutObservation(), T0).status
    assert deploying.phase == "Deploying"

    def never_routed(r):
        assert r.status.phase == "RolledBack" and r.status.decision == "rollback" and r.status.started_at is None
        assert not [a for a in r.actions if isinstance(a, SetWeights) and a.as_dict()["treatment"] > 0]
        assert not [a for a in r.actions if isinstance(a, DeployArm) and a.arm == "treatment"]

    t = T0 + timedelta(minutes=1)
    for ready in (False, True):
        by_hand = run(sp, deploying, obs(approval="rollback", ready=ready), t)
        never_routed(by_hand)
        assert by_hand.status.reason == "rollback approved by annotation cambrian.dev/approve"
        assert by_hand.status.retired is None
    retired = run(sp, deploying, RolloutObservation(arms(False), None, None, "rollback", retired="h left the top 2"), t)
    never_routed(retired)
    assert retired.status.retired == "h left the top 2"
    fresh = run(sp, api.RolloutStatus(), RolloutObservation(approval="rollback"), T0)  # Pending: no arm deployed
    never_routed(fresh)
    # a promotion is only approved in AwaitingApproval
    assert run(sp, deploying, obs(approval="promote"), t).status.phase == "Running"


def test_its_evolutions_retirement_waits_for_a_readout_already_due():
    # a launch retires the rollouts against the replaced champion; one whose readout is due at that instant is
    # decided by it (its own decision, whichever order a platform steps the rollout and its Evolution in)
    sp, r = running()
    t = at_readout(r)
    breach = Analysis("rollback", "guardrail hate_rate breached", {"control": 500, "treatment": 500})
    retire = lambda a: RolloutObservation(arms(True, ("control", "treatment")), None, a, "rollback",  # noqa: E731
                                          retired="its control is no longer the champion")
    own = run(sp, r.status, retire(breach), t)
    assert own.status.phase == "RolledBack" and own.status.reason == "guardrail hate_rate breached"
    assert own.status.retired is None and own.status.readouts == 1
    undecided = run(sp, r.status, retire(cont(600)), t)
    assert undecided.status.phase == "RolledBack" and undecided.status.retired == "its control is no longer the champion"
    assert undecided.status.readouts == 1  # the readout ran, once
    early = run(sp, r.status, retire(None), t - timedelta(hours=1))  # no readout due: retired at once
    assert early.status.retired and early.status.readouts == 0


def test_a_ramp_shortened_under_a_running_rollout_goes_on_at_its_last_step():
    # spec.ramp.steps may be edited while it runs; before, status.step past the new ramp raised IndexError at
    # every reconcile (desired_weights, the ramp, the requeue time)
    sp, r = running()
    d = sp.model_dump(by_alias=True, exclude_none=True)
    d["ramp"]["steps"] = d["ramp"]["steps"][1:]  # one step left: 50/50
    short = api.RolloutSpec.model_validate(d)
    at_step_2 = r.status.model_copy(update={"step": 2})
    t = at_readout(r) - timedelta(hours=1)
    r2 = run(short, at_step_2, obs(weights={"control": 90, "treatment": 10}), t)
    assert r2.status.phase == "Running" and r2.status.step == 0
    assert [a.as_dict() for a in r2.actions if isinstance(a, SetWeights)] == [{"control": 50, "treatment": 50}]
    assert [a.event for a in r2.actions if isinstance(a, RecordJournal)] == ["RampShortened"]
    # and it goes on: a readout, then the time past the step's duration, with no ramp left to advance
    r3 = run(short, r2.status, obs(weights={"control": 50, "treatment": 50}, analysis=cont()), at_readout(r2))
    r4 = run(short, r3.status, obs(weights={"control": 50, "treatment": 50}), t + timedelta(days=3))
    assert (r3.status.phase, r3.status.readouts, r4.status.phase, r4.status.step) == ("Running", 1, "Running", 0)
    assert not [a for a in r4.actions if isinstance(a, SetWeights)]


def test_continue_after_awaiting_returns_to_running():
    sp, r = running(spec(policy="manual"))
    r2 = run(sp, r.status, obs(analysis=promote()), at_readout(r))
    r3 = run(sp, r2.status, obs(analysis=cont(600)), at_readout(r2))
    assert r3.status.phase == "Running" and r3.status.recommendation is None


def test_finalize_restores_control():
    acts = R.finalize(META, spec(), SERVING)
    assert isinstance(acts[0], SetWeights) and acts[0].as_dict() == {"control": 100, "treatment": 0}
    assert isinstance(acts[1], ClearWeights)
    assert sorted(a.arm for a in acts if isinstance(a, DeleteArm)) == ["control", "treatment"]
    never_routed = R.finalize(META, spec(), SERVING, routed=False)
    assert not [a for a in never_routed if isinstance(a, SetWeights)] and isinstance(never_routed[0], ClearWeights)


def test_readout_due():
    sp, r = running()
    assert not R.readout_due(r.status, r.status.next_readout_at - timedelta(seconds=1))
    assert R.readout_due(r.status, r.status.next_readout_at)
    assert not R.readout_due(api.RolloutStatus(), T0)


def test_a_released_rollout_removes_the_arms_and_router_entry_it_kept():
    """Concluded, a Rollout keeps its control (and a winner's) arm and its router entry while production may still
    reach them. Released by its Evolution (A_RELEASED) they go, once, and are not set up again. Before: kept (and
    re-deployed) until the Rollout was deleted."""
    sp, r = running()
    won = run(sp, r.status, obs(weights={"control": 90, "treatment": 10}, analysis=promote()), at_readout(r))
    assert won.status.phase == "Promoted"
    kept = {"control": 0, "treatment": 100}
    released = RolloutObservation(arms(), kept, released="h1")
    res = run(sp, won.status, released, at_readout(r) + timedelta(hours=1))
    assert sorted(a.arm for a in res.actions if isinstance(a, DeleteArm)) == ["control", "treatment"]
    assert [type(a) for a in res.actions if not isinstance(a, DeleteArm)] == [ClearWeights]
    assert res.status.phase == "Promoted" and not any(a.ready for a in res.status.arms)
    # applied: nothing is left, nothing is deployed or routed again
    gone = run(sp, res.status, RolloutObservation({}, None, released="h1"), at_readout(r) + timedelta(hours=2))
    assert gone.actions == [] and gone.status.phase == "Promoted"
