"""Guardrails through the cluster path: Prometheus-shaped per-arm sums -> readout.analyse (the statistics
package's decide) -> the pure rollout reconcile -> router weights. A candidate that breaches a guardrail is
served to no user after the first readout that sees the breach (one readout interval), in A/B (0%) and in A/B/n
(its users served control's model); and no path
reaches Promoted (or a champion change) without a promote from the decision rule.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cambrian.operator import api
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import DeleteArm, DeployArm, SetWeights, UpdateChampion
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import (Analysis, ArmObservation, HypothesisView, JobObservation,
                                                      RolloutObservation, RolloutView, Spend)
from cambrian.operator.reconcile.readout import analyse
from cambrian.stats import RatioStats, SufficientStats

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
INTERVAL = timedelta(hours=6)


def spec(treatments: list[str], weights: list[int], policy: str = "auto") -> api.RolloutSpec:
    return api.RolloutSpec.model_validate({
        "control": {"bundle": "pvc://b/champion"},
        "treatments": [{"name": t, "hypothesisRef": {"name": f"h-{t}"}, "bundle": f"pvc://b/{t}"} for t in treatments],
        "salt": "g", "ramp": {"steps": [{"weights": weights, "duration": "14d"}]},
        "metrics": {"northStar": [{"name": "watch_minutes"}],
                    "guardrails": [{"metric": "hate_rate", "direction": "minimize", "margin": 0.05}],
                    "readout": {"interval": "6h"}},
        "statistics": {"minSamplePerArm": 200, "maxDuration": "14d"}, "decisionPolicy": policy})


def arm_sums(rng, n: int, hate_p: float, minutes: float = 20.0) -> dict:
    y = rng.gamma(4, minutes / 4, n)
    d = np.full(n, 20.0)
    m = rng.binomial(20, hate_p, n).astype(float)
    return {"watch_minutes": SufficientStats.from_arrays(y.tolist()),
            "hate_rate": RatioStats(n=n, sum_m=m.sum(), sum_d=d.sum(), sum_m2=(m * m).sum(), sum_d2=(d * d).sum(),
                                    sum_md=(m * d).sum())}


def served(meta, action: SetWeights) -> dict[str, int]:
    """Percent of users served each arm's own model: an arm the router serves from another's Service has none."""
    return {w.arm: w.weight if w.service == R.arm_name(meta, w.arm) else 0 for w in action.weights}


def run(spec_, meta, stats_at, until_hours=48):
    """Drive the reconcile core on a clock; `stats_at(hours)` -> per-arm sums Prometheus would return then.
    Returns the history of what the router serves [(hours, served)], the final status and the router's last
    SetWeights."""
    status = api.RolloutStatus()
    arms: dict[str, ArmObservation] = {}
    last = None
    history = []
    now = T0
    while now <= T0 + timedelta(hours=until_hours):
        analysis = None
        if R.readout_due(status, now):
            stats = stats_at((now - T0).total_seconds() / 3600)
            n = {a: s["watch_minutes"].n for a, s in stats.items()}
            analysis = analyse(spec_, status, stats, now, exposures=n)
        obs = RolloutObservation(arms, last and last.as_dict(), analysis,
                                 services=last and {w.arm: w.service for w in last.weights})
        res = R.reconcile(meta, spec_, status, api.Serving(), None, obs, now)
        for a in res.actions:
            if isinstance(a, SetWeights):
                last = a
                history.append(((now - T0).total_seconds() / 3600, served(meta, a)))
            elif isinstance(a, DeployArm):
                arms[a.arm] = ArmObservation(a.name, True, True)
            elif isinstance(a, DeleteArm):
                arms.pop(a.arm, None)
        status = res.status
        if status.phase in R.CONCLUDED:
            break
        now += timedelta(minutes=30)
    return history, status, last


def test_ab_guardrail_breach_is_cut_within_one_readout_interval():
    rng = np.random.default_rng(1)
    breach_at = 13.0  # hours: from then on the data Prometheus holds show the breach

    def stats_at(h):
        bad = h >= breach_at
        return {"control": arm_sums(rng, 3000, 0.02), "cand": arm_sums(rng, 3000, 0.20 if bad else 0.02)}

    history, status, _ = run(spec(["cand"], [50, 50]), Meta("ro", "uid-ro", "ns", 1), stats_at)
    cut = next(h for h, w in history if w.get("cand") == 0)
    assert breach_at <= cut <= breach_at + INTERVAL.total_seconds() / 3600, (cut, history)
    assert status.phase == "RolledBack" and "hate_rate" in status.reason
    assert history[-1][1] == {"control": 100, "cand": 0}


def test_abn_one_breaching_arm_is_cut_within_one_readout_interval():
    """A/B/n: one arm breaches while the other is fine. decide() rolls back only that arm and says continue
    overall; from that readout the breaching arm's users are served control's model (same weights, same
    assignment), its Deployment goes once the router serves them from control, and the other arm goes on
    (operator/reconcile/rollout.py _stop_decided_arms)."""
    rng = np.random.default_rng(2)
    breach_at = 7.0

    def stats_at(h):
        return {"control": arm_sums(rng, 3000, 0.02), "good": arm_sums(rng, 3000, 0.02),
                "bad": arm_sums(rng, 3000, 0.20 if h >= breach_at else 0.02)}

    meta = Meta("ro3", "uid-ro3", "ns", 1)
    history, status, last = run(spec(["good", "bad"], [34, 33, 33]), meta, stats_at)
    cut = next(h for h, w in history if w.get("bad") == 0)
    assert breach_at <= cut <= breach_at + INTERVAL.total_seconds() / 3600, (cut, history)
    assert history[-1][1] == {"control": 34, "good": 33, "bad": 0}
    assert last.as_dict() == {"control": 34, "good": 33, "bad": 33} and last.phase == 1   # nobody moved
    assert status.phase == "Running" and {a.name: a.outcome for a in status.arms}["bad"] == "rollback"
    assert "hate_rate" in next(a.reason for a in status.arms if a.name == "bad")
    assert {a.name: a.ready for a in status.arms} == {"control": True, "good": True, "bad": False}  # deleted
    assert all(w.get("bad", 0) < 100 and w.get("good", 0) < 100 for _, w in history)


def test_guardrail_rollback_applies_under_a_manual_policy_too():
    rng = np.random.default_rng(3)
    history, status, _ = run(spec(["cand"], [50, 50], policy="manual"), Meta("rm", "uid-rm", "ns", 1),
                          lambda h: {"control": arm_sums(rng, 3000, 0.02), "cand": arm_sums(rng, 3000, 0.3)})
    assert status.phase == "RolledBack" and history[-1][1]["cand"] == 0
    first_readout = (status.started_at - T0 + INTERVAL).total_seconds() / 3600
    assert history[-1][0] <= first_readout  # cut at the very first readout


# ---- no path promotes without the decision rule ----------------------------------------------------------

NON_PROMOTE = st.one_of(
    st.none(),  # Prometheus down
    st.builds(Analysis, st.sampled_from(["continue"]), st.just("not significant"),
              st.just({"control": 5000, "cand": 5000})),
    # a promote signal the core must refuse: too few users, or no valid winner
    st.builds(Analysis, st.just("promote"), st.just("significant"), st.just({"control": 50, "cand": 50}),
              st.just("cand")),
    st.builds(Analysis, st.just("promote"), st.just("significant"), st.just({"control": 5000, "cand": 5000}),
              st.sampled_from([None, "control", "ghost"])),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(NON_PROMOTE, st.sampled_from([None, None, "promote"])), min_size=1, max_size=30),
       st.sampled_from(["auto", "manual"]))
def test_nothing_promotes_without_a_promote_decision(steps, policy):
    sp = spec(["cand"], [50, 50], policy)
    meta = Meta("ro", "uid", "ns", 1)
    status = api.RolloutStatus()
    arms = {a: ArmObservation(R.arm_name(meta, a), True, True) for a in sp.arm_names()}
    weights = None
    now = T0
    for analysis, approval in steps:
        obs = RolloutObservation(arms, weights, analysis if R.readout_due(status, now) else None, approval)
        res = R.reconcile(meta, sp, status, api.Serving(), None, obs, now)
        for a in res.actions:
            if isinstance(a, SetWeights):
                weights = a.as_dict()
        status = res.status
        assert status.phase != "Promoted", (steps, status.reason)
        assert (weights or {}).get("cand", 0) < 100
        now += INTERVAL


def test_a_human_approval_alone_cannot_promote_but_can_confirm_the_rule():
    sp = spec(["cand"], [50, 50], "manual")
    meta = Meta("ro", "uid", "ns", 1)
    arms = {a: ArmObservation(R.arm_name(meta, a), True, True) for a in sp.arm_names()}
    st_ = R.reconcile(meta, sp, api.RolloutStatus(), api.Serving(), None, RolloutObservation(arms), T0).status
    # approval while Running, no analysis: ignored
    st_ = R.reconcile(meta, sp, st_, api.Serving(), None, RolloutObservation(arms, approval="promote"), T0).status
    assert st_.phase == "Running"
    win = Analysis("promote", "better", {"control": 5000, "cand": 5000}, "cand")
    st_ = R.reconcile(meta, sp, st_, api.Serving(), None, RolloutObservation(arms, analysis=win),
                      T0 + INTERVAL).status
    assert st_.phase == "AwaitingApproval" and st_.recommendation == "promote"
    st_ = R.reconcile(meta, sp, st_, api.Serving(), None, RolloutObservation(arms, approval="promote"),
                      T0 + INTERVAL + timedelta(minutes=1)).status
    assert st_.phase == "Promoted" and st_.winner == "cand"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["Running", "AwaitingApproval", "RolledBack", "Inconclusive", "Failed", None]),
                min_size=1, max_size=6))
def test_the_champion_changes_only_for_a_promoted_rollout(phases):
    meta = Meta("evo", "uid-evo", "ns", 1)
    evo = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}}})
    views = [RolloutView(f"ro{i}", ph, (f"h{i}",), None, None, None, "x") for i, ph in enumerate(phases)]
    hyps = [HypothesisView(f"h{i}", "Live", "optimizer", "val_loss", 0.4, f"b{i}") for i in range(len(phases))]
    base = [JobObservation(n, "Succeeded", 0, metrics={"val_loss": 0.5}, bundle_uri="b0")
            for n in N.baseline_job_names(meta, evo)]
    status = api.EvolutionStatus()
    for k in range(3):
        res = E.reconcile(meta, evo, status, hyps, views, base, Spend(), T0 + timedelta(hours=k))
        assert not [a for a in res.actions if isinstance(a, UpdateChampion) and a.hypothesis is not None]
        status = res.status
