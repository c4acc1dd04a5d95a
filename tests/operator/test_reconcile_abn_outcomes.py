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
from cambrian.operator.reconcile.observations import ArmObservation, RolloutObservation
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


def sums(lift_b: float) -> dict:
    """Arm b moves the north star by `lift_b`; arm c leaves it and triples the hate rate (its guardrail fails)."""
    rng = np.random.default_rng(0)
    out = {}
    for arm, n in ARMS.items():
        x = rng.normal(10, 3, n)
        y = x * 0.8 + rng.normal(2 + (lift_b if arm == "b" else 0.0), 1, n)
        hate = rng.binomial(1, 0.3 if arm == "c" else 0.1, n).astype(float)
        out[arm] = {"minutes": SufficientStats.from_arrays(y, x), "hate": SufficientStats.from_arrays(hate)}
    return out


def conclude(lift_b: float, days: float) -> dict:
    """One readout of the Rollout through the core; the Rollout object as stored after it."""
    sp, now = spec(), T0 + timedelta(days=days)
    st = api.RolloutStatus(phase="Running", started_at=T0, step_history=[T0], next_readout_at=now)
    a = RD.analyse(sp, st, sums(lift_b), now, exposures=ARMS)
    seen = {n: ArmObservation(n, True, True) for n in ARMS}
    r = R.reconcile(Meta("ro", "u"), sp, st, api.Serving(), None,
                    RolloutObservation(seen, {"control": 34, "b": 33, "c": 33}, a), now)
    return {"metadata": {"name": "ro"}, "spec": sp.wire(), "status": r.status.wire()}


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


def test_an_arm_undecided_when_a_harmful_sibling_rolls_the_rollout_back_is_inconclusive():
    ro = conclude(0.0, days=7)    # c is cut at once; b had no verdict yet
    assert ro["status"]["phase"] == "RolledBack" and ro["status"]["decision"] == "rollback"
    assert outcomes(ro) == {"control": None, "b": "inconclusive", "c": "rollback"}
    assert recorded(ro, "hyp-c").online.decision == "rollback"
    b = recorded(ro, "hyp-b").online
    assert b.decision == "inconclusive" and b.reason.startswith("no verdict on this arm when the rollout concluded")


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
