"""The Evolution loop through the pure core: baseline champion, wake-ups, top-K rollouts, launches, budgets."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from cambrian.operator import api
import pytest

from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile.actions import (CreateRollout, CreateTrainingJob, ProposeHypotheses, RecordJournal,
                                                RetireRollout, UpdateChampion)
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import (ChampionObservation, HypothesisView, JobObservation, RolloutView,
                                                      Spend)

T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)
META = Meta("evo", "uid-evo", "ns", 2)


def spec(**over):
    data = {
        "objective": {"northStar": [{"name": "dau"}, {"name": "minutes"}]},
        "guardrails": [{"metric": "hate_rate", "margin": 0.01}],
        "data": {"world": {"users": 100}},
        "topK": 2,
        "cadence": {"offline": "5m", "online": "1d"},
        "launchPolicy": "auto",
    }
    data.update(over)
    return api.EvolutionSpec.model_validate(data)


def run(sp, st, hyps=(), ros=(), job=None, spend=Spend(), now=T0, serving=None):
    return E.reconcile(META, sp, st, list(hyps), list(ros), job, spend, now, champion_serving=serving)


def served(action: UpdateChampion) -> ChampionObservation:
    """What a platform reports once it applied `action` and the new servers are ready."""
    return ChampionObservation(action.name, action.revision, action.bundle, True)


def with_champion(sp):
    """The baseline trains with three seeds (val_loss 0.50, 0.52, 0.54); the first seed's bundle is the champion."""
    r = run(sp, api.EvolutionStatus())
    jobs = [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    assert [j.name for j in jobs] == N.baseline_job_names(META, sp) and jobs[0].name == E.baseline_job_name(META)
    assert all(j.delta is None for j in jobs) and r.status.champion.bundle is None
    assert [j.baseline.get("training", {}).get("seed") for j in jobs] == [None, 1, 2]  # seed 0 is Φ's own
    done = [JobObservation(j.name, "Succeeded", 0, metrics={"val_loss": 0.5 + 0.02 * i}, bundle_uri="pvc://x/baseline" if i == 0 else f"pvc://x/b{i}")
            for i, j in enumerate(jobs)]
    partial = run(sp, r.status, job=[done[0], done[1], JobObservation(jobs[2].name, "Running")],
                  now=T0 + timedelta(seconds=30))
    assert partial.status.champion.bundle is None and not partial.kinds().count("CreateTrainingJob")
    r2 = run(sp, r.status, job=done, now=T0 + timedelta(minutes=1))
    assert r2.status.champion.bundle == "pvc://x/baseline" and r2.status.champion.name == "baseline"
    base = r2.status.baseline_metrics["val_loss"]
    assert base.value == pytest.approx(0.52) and base.std == pytest.approx(0.02) and base.seeds == 3
    return r, r2


def test_baseline_then_wakeups_on_cadence():
    sp = spec()
    r, r2 = with_champion(sp)
    wake = [a for a in r.actions if isinstance(a, ProposeHypotheses)]
    assert len(wake) == 1 and wake[0].wakeup == 1 and dict(wake[0].quotas) == {"explore": 1, "exploit": 1, "innovate": 1}
    assert r.status.next_wakeup_at == T0 + timedelta(minutes=5)
    assert not [a for a in r2.actions if isinstance(a, ProposeHypotheses)]  # not due yet
    proposed = [HypothesisView("w1-0", "Proposed", "optimizer", wakeup=1)]  # what wake-up 1 created
    r3 = run(sp, r2.status, proposed, now=T0 + timedelta(minutes=5))
    assert [a.wakeup for a in r3.actions if isinstance(a, ProposeHypotheses)] == [2]
    assert r3.status.counters.wakeups == 2 and r3.status.counters.empty_wakeups == 0


def test_wakeups_that_create_nothing_back_off_until_one_does():
    """A proposer that keeps failing is asked after 1, 2, 4, ... cadences (up to 64), not every 5 minutes; the
    first wake-up that creates a Hypothesis brings the cadence back. Each longer wait is journalled once."""
    sp = spec()
    _, r = with_champion(sp)
    asked, times, backoffs, now = [1], [T0], [], T0 + timedelta(minutes=1)
    for _ in range(400):  # simulated time, as the LocalDriver moves it: to the next due moment
        now = max(now, r.status.next_wakeup_at)
        r = run(sp, r.status, now=now)
        asked += [a.wakeup for a in r.actions if isinstance(a, ProposeHypotheses)]
        times += [now for a in r.actions if isinstance(a, ProposeHypotheses)]
        backoffs += [a.data["streak"] for a in r.actions if isinstance(a, RecordJournal) and a.event == "WakeupsBackedOff"]
        if now - T0 > timedelta(days=2):
            break
    st = r.status
    assert st.counters.wakeups == len(asked) and asked == list(range(1, len(asked) + 1))
    # 2 days of 5-minute cadence would be 576 wake-ups; backed off, the gaps double up to 64 cadences
    gaps = [(b - a) / timedelta(minutes=5) for a, b in zip(times, times[1:])]
    assert gaps == [2, 4, 8, 16, 32] + [64] * (len(gaps) - 5) and len(asked) == 15
    # the latest wake-up's outcome is read once its cadence has passed (its Hypotheses exist by then)
    assert st.counters.empty_wakeups == len(asked) - 1
    assert backoffs == list(range(1, len(asked)))  # once per longer wait
    quiet = run(sp, st, now=st.last_wakeup_at + timedelta(minutes=5))  # the latest one created nothing either
    assert not [a for a in quiet.actions if isinstance(a, ProposeHypotheses)]
    assert quiet.status.next_wakeup_at - st.last_wakeup_at == timedelta(minutes=5 * 64)
    cond = next(c for c in st.conditions if c.type == "Proposing")
    assert cond.status == "False" and cond.reason == "NothingProposed"
    # a spec change (a fixed provider, say) is asked at once, and the earlier wake-ups no longer count
    edited = E.reconcile(Meta("evo", "uid-evo", "ns", 3), sp, quiet.status, [], [], None, Spend(),
                         st.last_wakeup_at + timedelta(minutes=6))
    assert [a.wakeup for a in edited.actions if isinstance(a, ProposeHypotheses)] == [st.counters.wakeups + 1]
    assert edited.status.counters.empty_wakeups == 0 and edited.status.backoff_counts_after == st.counters.wakeups
    # a wake-up that creates something resets the cadence from that wake-up on
    last = st.counters.wakeups
    made = [HypothesisView(f"w{last}-0", "Proposed", "reward", wakeup=last)]
    r2 = run(sp, st, made, now=st.last_wakeup_at + timedelta(minutes=5))
    assert [a.wakeup for a in r2.actions if isinstance(a, ProposeHypotheses)] == [last + 1]
    assert r2.status.counters.empty_wakeups == 0
    assert next(c for c in r2.status.conditions if c.type == "Proposing").status == "True"


def test_baseline_runs_keep_each_seeds_metrics():
    """The status keeps what each baseline seed reported, not only the mean and std (benchmarks read the
    seed-to-seed values; a user sees which run gave which metric)."""
    sp = spec()
    _, r2 = with_champion(sp)
    runs = r2.status.baseline_runs
    assert [(r.seed, r.job) for r in runs] == list(zip([0, 1, 2], N.baseline_job_names(META, sp)))
    assert [r.metrics["val_loss"] for r in runs] == pytest.approx([0.50, 0.52, 0.54])
    wire = r2.status.wire()
    assert api.parse_status("Evolution", wire).baseline_runs == runs and wire["baselineRuns"][1]["seed"] == 1


def test_baseline_failure_fails_the_evolution():
    sp = spec()
    r = run(sp, api.EvolutionStatus())
    bad = JobObservation(N.baseline_job_name(META, 2), "Failed", 4, "Error", "loss is NaN")
    r2 = run(sp, r.status, job=[JobObservation(E.baseline_job_name(META), "Succeeded", 0, bundle_uri="b"), bad])
    assert r2.status.phase == "Failed" and "loss is NaN" in r2.status.reason


def hv(name, comp, score, phase="Scored", verdict="better"):
    return HypothesisView(name, phase, comp, "val_loss" if comp != "reward" else "top_watch_share", score, f"b/{name}",
                          delta={"component": comp, "patch": {"lr": 0.01}} if comp == "optimizer" else None,
                          verdict=verdict)


def test_review_starts_top_k_rollouts_ranked_per_component():
    sp = spec()
    _, r2 = with_champion(sp)
    hyps = [hv("o1", "optimizer", 0.45), hv("o2", "optimizer", 0.40), hv("r1", "reward", 0.2), hv("r2", "reward", 0.3),
            hv("a1", "architecture", 0.1, phase="Training")]
    assert r2.status.next_review_at == T0 + timedelta(days=1, minutes=1)  # reviewed (nothing scored) with the champion
    assert not [a for a in run(sp, r2.status, hyps, now=T0 + timedelta(hours=2)).actions if isinstance(a, CreateRollout)]
    r3 = run(sp, r2.status, hyps, now=T0 + timedelta(days=1, minutes=1))
    ros = [a for a in r3.actions if isinstance(a, CreateRollout)]
    assert [a.hypothesis for a in ros] == ["o2", "r2"]  # best optimizer (min loss), best reward (max corr)
    ro = api.RolloutSpec.model_validate(ros[0].spec)
    assert ro.control.bundle == "pvc://x/baseline" and ro.treatments[0].bundle == "b/o2"
    assert ro.decision_policy == "auto" and [m.name for m in ro.metrics.north_star] == ["dau", "minutes"]
    assert ro.salt == ros[0].name == E.rollout_name(META, "o2")
    assert r3.status.counters.live == 2
    # next review: both still live, no free slot
    live = [RolloutView(a.name, "Running", (a.hypothesis,)) for a in ros]
    r4 = run(sp, r3.status, hyps, live, now=T0 + timedelta(days=2, minutes=3))
    assert r4.status.counters.reviews == 3
    assert not [a for a in r4.actions if isinstance(a, CreateRollout)]


def test_promotion_updates_champion_once():
    sp = spec()
    _, r2 = with_champion(sp)
    hyps = [hv("o2", "optimizer", 0.40, phase="Launched")]
    ro = RolloutView("ro-o2", "Promoted", ("o2",), "promote", "o2", "b/o2", "dau +2%")
    r3 = run(sp, r2.status, hyps, [ro], now=T0 + timedelta(days=2))
    ups = [a for a in r3.actions if isinstance(a, UpdateChampion)]
    assert len(ups) == 1 and ups[0].bundle == "b/o2"
    c = r3.status.champion
    assert c.name == "o2" and c.config["optimizer"]["lr"] == 0.01
    assert r3.status.last_decision.outcome == "promote" and r3.status.counters.launched == 1
    r4 = run(sp, r3.status, hyps, [ro], now=T0 + timedelta(days=2, minutes=1), serving=served(ups[0]))
    assert not [a for a in r4.actions if isinstance(a, UpdateChampion)]
    assert E.effective_baseline(sp, r4.status)["optimizer"]["lr"] == 0.01


def test_of_two_winners_against_one_champion_the_larger_effect_is_launched_and_the_other_superseded():
    # both beat the baseline in rollouts concluded at the same readout; the names sort the weaker one last, which
    # was the champion before: launched without ever being compared with the stronger one
    sp = spec()
    _, r2 = with_champion(sp)
    hyps = [hv("o1", "optimizer", 0.40, phase="Live"), hv("o2", "optimizer", 0.41, phase="Live")]
    effect = lambda arm, est: ({"arm": arm, "metric": "dau", "estimate": est, "ciLow": est / 2, "ciHigh": est * 2,
                                "relative": True, "plannedEffect": 0.054},)
    strong = RolloutView("ro-a", "Promoted", ("o1",), "promote", "o1", "b/o1", "dau +25%", effect("t", 0.25),
                         control_bundle="pvc://x/baseline")
    weak = RolloutView("ro-b", "Promoted", ("o2",), "promote", "o2", "b/o2", "dau +8%", effect("t", 0.08),
                       control_bundle="pvc://x/baseline")
    running = RolloutView("ro-e", "Running", ("o5",), control_bundle="pvc://x/baseline")
    r3 = run(sp, r2.status, [*hyps, hv("o5", "optimizer", 0.42, phase="Live")], [weak, strong, running],
             now=T0 + timedelta(days=2))
    assert r3.status.champion.name == "o1" and r3.status.champion.bundle == "b/o1"
    # the rollout still measuring against the replaced champion ends: its control arm serves an old model
    ends = [a for a in r3.actions if isinstance(a, RetireRollout)]
    assert [a.name for a in ends] == ["ro-e"] and "no longer the champion: o1 was launched by rollout ro-a" in ends[0].reason
    assert r3.status.counters.live == 0 and r3.status.live_rollouts == []
    assert [a.bundle for a in r3.actions if isinstance(a, UpdateChampion)] == ["b/o1"]
    assert r3.status.superseded == ["ro-b"] and set(r3.status.handled_decisions) == {"ro-a", "ro-b"}
    events = {a.event: a for a in r3.actions if isinstance(a, RecordJournal)}
    assert events["PromotionSuperseded"].warning and "never compared" in events["PromotionSuperseded"].message
    assert [a.message for a in r3.actions if isinstance(a, RecordJournal) and a.event == "ChampionChanged"] == [
        "o1 launched by rollout ro-a (dau read +25%; its design was sized for +5.4%)"]
    # a later promotion over the old champion is superseded too; one over the new champion is launched
    late = RolloutView("ro-c", "Promoted", ("o3",), "promote", "o3", "b/o3", "", effect("t", 0.5),
                       control_bundle="pvc://x/baseline")
    r4 = run(sp, r3.status, [*hyps, hv("o3", "optimizer", 0.3, phase="Live")], [weak, strong, late],
             now=T0 + timedelta(days=3))
    assert r4.status.champion.name == "o1" and r4.status.superseded == ["ro-b", "ro-c"]
    fresh = RolloutView("ro-d", "Promoted", ("o4",), "promote", "o4", "b/o4", "", effect("t", 0.01),
                        control_bundle="b/o1")
    r5 = run(sp, r4.status, [hv("o4", "optimizer", 0.3, phase="Live")], [weak, strong, late, fresh],
             now=T0 + timedelta(days=4))
    assert r5.status.champion.name == "o4" and r5.status.superseded == ["ro-b", "ro-c"]


def test_of_two_winners_on_a_north_star_to_minimize_the_larger_fall_is_launched():
    # before, the launch order sorted the raw estimates: of -5% and -1% on a metric to minimize, -1% was launched
    sp = spec(objective={"northStar": [{"name": "latency_ms", "direction": "minimize"}]})
    _, r2 = with_champion(sp)
    hyps = [hv("o1", "optimizer", 0.40, phase="Live"), hv("o2", "optimizer", 0.41, phase="Live")]
    effect = lambda est: ({"arm": "t", "metric": "latency_ms", "estimate": est, "ciLow": est * 2, "ciHigh": est / 2,
                           "relative": True},)
    strong = RolloutView("ro-b", "Promoted", ("o1",), "promote", "o1", "b/o1", "", effect(-0.05),
                         control_bundle="pvc://x/baseline")
    weak = RolloutView("ro-a", "Promoted", ("o2",), "promote", "o2", "b/o2", "", effect(-0.01),
                       control_bundle="pvc://x/baseline")
    r3 = run(sp, r2.status, hyps, [weak, strong], now=T0 + timedelta(days=2))
    assert r3.status.champion.name == "o1" and r3.status.superseded == ["ro-a"]


def test_a_failed_rollout_is_applied_as_undecided_so_its_hypothesis_is_tested_again():
    sp = spec()
    _, r2 = with_champion(sp)
    failed = RolloutView("ro-a", "Failed", ("o1",), None, None, None, "InvalidSpec: bad PromQL",
                         control_bundle="pvc://x/baseline")
    r3 = run(sp, r2.status, [hv("o1", "optimizer", 0.40, phase="Live")], [failed], now=T0 + timedelta(days=2))
    assert r3.status.superseded == ["ro-a"] and r3.status.handled_decisions == ["ro-a"]
    assert r3.status.champion.name == "baseline"


def test_a_decision_is_applied_once_then_marked_on_its_rollout_and_forgotten_by_the_evolution():
    # handledDecisions is bounded (256): before, an Evolution that had concluded more Rollouts than that applied
    # the oldest again at every reconcile (a PromotionSuperseded warning each time, lastDecision pointing back)
    from cambrian.operator.reconcile.actions import Mark

    sp = spec(topK=1)
    _, r2 = with_champion(sp)
    effect = ({"arm": "t", "metric": "dau", "estimate": 0.1, "ciLow": 0.05, "ciHigh": 0.2, "relative": True},)
    old = [RolloutView(f"ro-{i:03}", "Promoted", (f"h{i}",), "promote", f"h{i}", f"b/h{i}", "", effect,
                       control_bundle="pvc://x/old-champion") for i in range(300)]
    hyps = [hv(f"h{i}", "optimizer", 0.4, phase="Retired") for i in range(300)]
    now, st, marks, applied = T0 + timedelta(days=2), r2.status, {}, Counter()
    for batch in (old[:150], old[150:]):  # 300 in all, in two waves
        for step in range(3):
            seen = [replace(r, applied=marks.get(r.name)) for r in [*old[:len(marks)], *batch]]
            r = run(sp, st, hyps, seen, now=now)
            applied.update(a.data["rollout"] for a in r.actions if isinstance(a, RecordJournal) and a.event == "PromotionSuperseded")
            acks = [a for a in r.actions if isinstance(a, Mark)]
            # only what the persisted status applied is marked, as what it was
            assert {a.name for a in acks} <= set(st.handled_decisions) and {a.value for a in acks} <= {"superseded"}
            marks.update({a.name: a.value for a in acks})
            st, now = r.status, now + timedelta(minutes=1)
    assert set(marks) == {r.name for r in old} and set(applied) == {r.name for r in old}
    assert max(applied.values()) == 1  # each decision applied once
    assert st.handled_decisions == [] and st.superseded == []  # forgotten once marked
    # a decision still on its way is acknowledged as what it was: a launch is final
    marked = [replace(r, applied=marks[r.name]) for r in old]
    fresh = RolloutView("ro-new", "Promoted", ("hn",), "promote", "hn", "b/hn", "", effect,
                        control_bundle=st.champion.bundle)
    launched = run(sp, st, [*hyps, hv("hn", "optimizer", 0.4, phase="Live")], [*marked, fresh], now=now)
    assert launched.status.champion.name == "hn" and launched.status.handled_decisions == ["ro-new"]
    after = run(sp, launched.status, [*hyps, hv("hn", "optimizer", 0.4, phase="Launched")], [*marked, fresh],
                now=now + timedelta(minutes=1))
    assert [(a.name, a.value) for a in after.actions if isinstance(a, Mark)] == [("ro-new", "final")]


def test_a_winner_validated_against_an_earlier_champion_is_launched_with_the_phi_it_trained():
    # o2 was validated (and trained) on the baseline; o1 is launched meanwhile. o2 may still go online, against o1,
    # and when it wins there the champion's Φ is the baseline with o2's delta, the model that won, not o1's Φ with
    # o2's delta, which nobody trained and which the next proposals would be applied to
    from dataclasses import replace

    sp = spec()
    _, r2 = with_champion(sp)
    ro1 = RolloutView("ro-o1", "Promoted", ("o1",), "promote", "o1", "b/o1", "", control_bundle="pvc://x/baseline")
    o1 = replace(hv("o1", "optimizer", 0.4, phase="Launched"), baseline=sp.baseline)
    r3 = run(sp, r2.status, [o1], [ro1], now=T0 + timedelta(days=2))
    assert r3.status.champion.config["optimizer"]["lr"] == 0.01
    o2 = replace(hv("o2", "architecture", 0.3), delta={"component": "architecture", "patch": {"hidden": [128, 64]}},
                 baseline=sp.baseline)
    review = run(sp, r3.status, [o1, o2], [ro1], now=r3.status.next_review_at)
    (start,) = [a for a in review.actions if isinstance(a, CreateRollout)]
    assert start.hypothesis == "o2" and api.RolloutSpec.model_validate(start.spec).control.bundle == "b/o1"
    ro2 = RolloutView(start.name, "Promoted", ("o2",), "promote", "o2", "b/o2", "", control_bundle="b/o1")
    r4 = run(sp, review.status, [o1, replace(o2, phase="Launched")], [ro1, ro2], now=T0 + timedelta(days=9))
    assert r4.status.champion.name == "o2"
    assert r4.status.champion.config["architecture"]["hidden"] == [128, 64]
    assert r4.status.champion.config.get("optimizer", {}).get("lr") != 0.01  # o1's delta is not in the model that won


def test_a_launched_champions_metrics_stay_the_reference_once_its_hypothesis_object_is_deleted():
    """Gains are measured against the champion's metrics over its seeds. Before, they were read from its Hypothesis
    object only, and once that was deleted (kubectl delete hyp) from the ORIGINAL baseline's: a candidate worse than
    the champion but better than the baseline was judged better. They are kept in the Evolution's status at launch."""
    from dataclasses import replace

    from cambrian.operator.reconcile import noise as N

    sp = spec()
    _, r2 = with_champion(sp)
    seeds = {"val_loss": {"value": 0.40, "std": 0.01, "seeds": 3}}
    ro1 = RolloutView("ro-o1", "Promoted", ("o1",), "promote", "o1", "b/o1", "", control_bundle="pvc://x/baseline")
    o1 = replace(hv("o1", "optimizer", 0.4, phase="Launched"), baseline=sp.baseline, proxy_metrics=seeds)
    r3 = run(sp, r2.status, [o1], [ro1], now=T0 + timedelta(days=2))
    assert r3.status.champion.name == "o1" and r3.status.champion.proxy_metrics["val_loss"].value == 0.40
    st = api.EvolutionStatus.model_validate(r3.status.model_dump(by_alias=True, mode="json"))  # as stored
    assert st.baseline_metrics["val_loss"].value != 0.40
    for champion_object in ({"proxyMetrics": seeds}, None):  # the Hypothesis object there, then deleted
        assert N.reference_metrics(st, champion_object)["val_loss"].value == 0.40
    # a launch recorded before the metrics were kept: from the object while it exists, and never the baseline's
    old = st.model_copy(update={"champion": st.champion.model_copy(update={"proxy_metrics": {}})})
    assert N.reference_metrics(old, {"proxyMetrics": seeds})["val_loss"].value == 0.40
    assert N.reference_metrics(old, None) == {}


def test_hypotheses_a_launch_overtook_are_tested_again_against_the_new_champion_and_others_are_not():
    # o1 is launched; o2's promotion (over the baseline) is superseded and o5's live rollout ends. Back in Scored,
    # both get a second rollout whose control is o1; o3, whose rollout rolled back on its own, never does
    sp = spec(topK=3)
    _, r2 = with_champion(sp)
    effect = lambda est: ({"arm": "t", "metric": "dau", "estimate": est, "ciLow": est / 2, "ciHigh": est * 2,
                           "relative": True},)
    base = "pvc://x/baseline"
    ro_a = RolloutView(E.rollout_name(META, "o1"), "Promoted", ("o1",), "promote", "o1", "b/o1", "", effect(0.25),
                       control_bundle=base)
    ro_b = RolloutView(E.rollout_name(META, "o2"), "Promoted", ("o2",), "promote", "o2", "b/o2", "", effect(0.08),
                       control_bundle=base)
    ro_c = RolloutView(E.rollout_name(META, "o3"), "RolledBack", ("o3",), "rollback", None, None, "dau -2%",
                       control_bundle=base)
    ro_e = RolloutView(E.rollout_name(META, "o5"), "Running", ("o5",), control_bundle=base)
    hyps = [hv("o1", "optimizer", 0.40, phase="Live"), hv("o2", "optimizer", 0.41, phase="Live"),
            hv("o3", "optimizer", 0.39, phase="Retired"), hv("o5", "optimizer", 0.42, phase="Live")]
    r3 = run(sp, r2.status, hyps, [ro_a, ro_b, ro_c, ro_e], now=T0 + timedelta(days=2))
    assert r3.status.champion.name == "o1" and r3.status.superseded == [ro_b.name]
    assert [a.name for a in r3.actions if isinstance(a, RetireRollout)] == [ro_e.name]
    # ro-e ends as retired (undecided): superseded when its Evolution applies that; one whose readout decided
    # first (a guardrail at the same instant) is its own decision, final
    up = served(next(a for a in r3.actions if isinstance(a, UpdateChampion)))
    ended = replace(ro_e, phase="RolledBack", decision="rollback", retired="its control is no longer the champion")
    decided = run(sp, r3.status, hyps, [ro_a, ro_b, ro_c, replace(ended, retired=None)], now=T0 + timedelta(days=2, minutes=1),
                  serving=up)
    assert decided.status.superseded == [ro_b.name]
    r3 = run(sp, r3.status, hyps, [ro_a, ro_b, ro_c, ended], now=T0 + timedelta(days=2, minutes=1), serving=up)
    assert r3.status.superseded == [ro_b.name, ro_e.name] and ro_e.name in r3.status.handled_decisions
    # back in Scored, each Hypothesis keeps the test that decided nothing about it (status.undecidedTests); o3
    # Scored too, but its test decided: only that keeps it out
    back = [replace(hyps[0], phase="Launched"), replace(hyps[1], phase="Scored", undecided_tests=(ro_b.name,)),
            replace(hyps[2], phase="Scored"), replace(hyps[3], phase="Scored", undecided_tests=(ro_e.name,))]
    review = run(sp, r3.status, back, [ro_a, ro_b, ro_c, ended], now=r3.status.next_review_at, serving=up)
    starts = {a.hypothesis: a for a in review.actions if isinstance(a, CreateRollout)}
    assert set(starts) == {"o2", "o5"}
    # what the Evolution remembers of superseded rollouts is bounded (the last 256): the Hypothesis's own record
    # is what the review reads, so one that waited while that list moved on is still tested again
    forgot = r3.status.model_copy(update={"superseded": []})
    later = run(sp, forgot, back, [ro_a, ro_b, ro_c, ended], now=r3.status.next_review_at, serving=up)
    assert {a.hypothesis for a in later.actions if isinstance(a, CreateRollout)} == {"o2", "o5"}
    assert {h: a.name for h, a in starts.items()} == {"o2": E.rollout_name(META, "o2", 2), "o5": E.rollout_name(META, "o5", 2)}
    assert E.rollout_name(META, "o2", 2) != ro_b.name
    assert all(api.RolloutSpec.model_validate(a.spec).control.bundle == "b/o1" for a in starts.values())
    # a replayed review (its rollouts now exist) starts nothing twice
    again = [RolloutView(a.name, None, (h,), control_bundle="b/o1") for h, a in starts.items()]
    replay = run(sp, review.status, back, [ro_a, ro_b, ro_c, ended, *again], now=review.status.next_review_at,
                 serving=up)
    assert not [a for a in replay.actions if isinstance(a, CreateRollout)]


def test_budget_exhausted_stops_wakeups_and_recovers():
    sp = spec(agent={"budgets": {"dollars": 1.0}})
    _, r2 = with_champion(sp)
    r3 = run(sp, r2.status, spend=Spend(dollars=1.5), now=T0 + timedelta(minutes=10))
    assert r3.status.phase == "BudgetExhausted" and "dollars" in r3.status.reason
    assert not [a for a in r3.actions if isinstance(a, ProposeHypotheses)]
    raised = spec(agent={"budgets": {"dollars": 5.0}})
    r4 = run(raised, r3.status, spend=Spend(dollars=1.5), now=T0 + timedelta(minutes=11))
    assert r4.status.phase == "Running" and [a for a in r4.actions if isinstance(a, ProposeHypotheses)]


def test_online_agent_selection_starts_its_choice_and_retires_dropouts():
    from cambrian.operator.reconcile.actions import RetireRollout
    from cambrian.operator.reconcile.observations import TopK

    sp = spec(topK=1)
    _, r2 = with_champion(sp)
    hyps = [hv("o1", "optimizer", 0.45, phase="Live"), hv("o2", "optimizer", 0.40)]
    live = [RolloutView("ro-o1", "Running", ("o1",))]
    due = T0 + timedelta(days=1, minutes=1)
    # o2 replaces o1 in the top 1: o1's rollout is retired and o2 gets the freed slot, in one review
    r3 = E.reconcile(META, sp, r2.status, hyps, live, None, Spend(), due, top_k=TopK(start=("o2",), retire=("o1",)))
    assert [(type(a).__name__, a.name) for a in r3.actions if isinstance(a, (RetireRollout, CreateRollout))] == [
        ("RetireRollout", "ro-o1"), ("CreateRollout", E.rollout_name(META, "o2"))]
    assert r3.status.live_rollouts == [E.rollout_name(META, "o2")]
    # the surrogate's prediction travels with the rollout it chose (its report sets it beside the measured effect)
    (created,) = [a for a in r3.actions if isinstance(a, CreateRollout)]
    assert created.annotations == ()
    guessed = E.reconcile(META, sp, r2.status, hyps, live, None, Spend(), due, top_k=TopK(
        start=("o2",), retire=("o1",), ranked_by="surrogate", predictions=(("o1", 0.001, 0.01), ("o2", 0.012, 0.004))))
    (created,) = [a for a in guessed.actions if isinstance(a, CreateRollout)]
    assert json.loads(dict(created.annotations)["cambrian.dev/predicted-effect"]) == {
        "hypothesis": "o2", "mean": 0.012, "sd": 0.004, "by": "surrogate"}
    assert any("surrogate predicts +0.0120 ± 0.0040" in getattr(a, "message", "") for a in guessed.actions)
    # the agent keeps o1: nothing changes (no free slot), and a choice outside the scored pool is ignored
    r4 = E.reconcile(META, sp, r2.status, hyps, live, None, Spend(), due, top_k=TopK(start=("o9",), retire=()))
    assert not [a for a in r4.actions if isinstance(a, (RetireRollout, CreateRollout))]
    # leaving the top K is no verdict on o1: once its rollout ends (undecided) it goes back to the review, and
    # gets a second rollout when the agent chooses it and a slot is free
    ended = RolloutView("ro-o1", "RolledBack", ("o1",), "rollback", retired="o1 left the top 1")
    o2_live = RolloutView(E.rollout_name(META, "o2"), "Running", ("o2",))
    r5 = E.reconcile(META, sp, r3.status, [hv("o1", "optimizer", 0.45, phase="Live"), hv("o2", "optimizer", 0.40,
                     phase="Live")], [ended, o2_live], None, Spend(), due + timedelta(minutes=1))
    assert r5.status.superseded == ["ro-o1"]
    o2_done = RolloutView(o2_live.name, "Inconclusive", ("o2",), "inconclusive")
    back = [replace(hv("o1", "optimizer", 0.45), undecided_tests=("ro-o1",)), hv("o2", "optimizer", 0.40, phase="Retired")]
    r6 = E.reconcile(META, sp, r5.status, back, [ended, o2_done], None, Spend(), r5.status.next_review_at,
                     top_k=TopK(start=("o1",), retire=()))
    assert [a.name for a in r6.actions if isinstance(a, CreateRollout)] == [E.rollout_name(META, "o1", 2)]


def test_a_started_rollout_is_ended_by_re_ranking_only_after_preempt_after():
    """A live test the Online Agent ranks out of the top K keeps its slot (never ended by default; with
    spec.experiment.preemptAfter, only once its ramp has run that long); the newcomer waits for a free slot."""
    from cambrian.operator.reconcile.actions import RetireRollout
    from cambrian.operator.reconcile.observations import TopK

    hyps = [hv("o1", "optimizer", 0.45, phase="Live"), hv("o2", "optimizer", 0.40)]
    due = T0 + timedelta(days=1, minutes=1)
    live = [RolloutView("ro-o1", "Running", ("o1",), started_at=due - timedelta(hours=20))]
    dropped = TopK(start=("o2",), retire=("o1",))

    def ended_and_started(sp, now):
        _, r2 = with_champion(sp)
        r = E.reconcile(META, sp, r2.status, hyps, live, None, Spend(), now, top_k=dropped)
        return [(type(a).__name__, a.name) for a in r.actions if isinstance(a, (RetireRollout, CreateRollout))], r

    kept, r = ended_and_started(spec(topK=1), due + timedelta(days=30))
    assert kept == [] and r.status.live_rollouts == ["ro-o1"]
    preempting = spec(topK=1, experiment={"preemptAfter": "2d"})
    assert ended_and_started(preempting, due)[0] == []  # 20 hours in
    assert ended_and_started(preempting, due + timedelta(hours=28))[0] == [
        ("RetireRollout", "ro-o1"), ("CreateRollout", E.rollout_name(META, "o2"))]


def test_wakeup_carries_the_spec_and_the_champion_config_for_the_proposer():
    sp = spec()
    r = run(sp, api.EvolutionStatus())
    (wake,) = [a for a in r.actions if isinstance(a, ProposeHypotheses)]
    assert api.parse_spec("Evolution", wake.evolution_spec) == sp and wake.baseline == sp.baseline


def test_only_a_better_hypothesis_is_ever_rolled_out():
    """Promising (one seed), not better, or never judged: no rollout, from the built-in ranking or from an
    Online Agent that picks it anyway. A better one with a worse raw score is still the one started."""
    from cambrian.operator.reconcile.observations import TopK

    sp = spec(topK=3)
    _, r2 = with_champion(sp)
    hyps = [hv("tiny", "optimizer", 0.10, verdict="not_better"), hv("one", "optimizer", 0.20, verdict="promising"),
            hv("old", "optimizer", 0.30, verdict=None), hv("real", "optimizer", 0.45)]
    due = T0 + timedelta(days=1, minutes=1)
    started = [a.hypothesis for a in run(sp, r2.status, hyps, now=due).actions if isinstance(a, CreateRollout)]
    assert started == ["real"]
    picked = E.reconcile(META, sp, r2.status, hyps, [], None, Spend(), due, top_k=TopK(start=("tiny", "one", "old")))
    assert not [a for a in picked.actions if isinstance(a, CreateRollout)]


def test_failed_hypotheses_go_back_to_the_proposer_once():
    sp = spec()
    _, r2 = with_champion(sp)
    hyps = [HypothesisView("gate", "Failed", "optimizer", failure_stage="static", wakeup=1),
            HypothesisView("nan", "Failed", "optimizer", failure_stage="training", wakeup=1),
            HypothesisView("fix", "Failed", "optimizer", failure_stage="static", repair_of="gate", wakeup=1),  # a repair: not again
            HypothesisView("dup", "Rejected", "optimizer", failure_stage="duplicate", wakeup=1),
            HypothesisView("oom", "Failed", "optimizer", failure_stage="metrics", wakeup=1)]  # no proposer can fix a missing metric
    r3 = run(sp, r2.status, hyps, now=T0 + timedelta(minutes=5))
    (wake,) = [a for a in r3.actions if isinstance(a, ProposeHypotheses)]
    assert wake.repairs == ("gate", "nan") and r3.status.repairs == ["gate", "nan"]
    # wake-up 2 created nothing (the repairs were not made), so wake-up 3 comes two cadences after it
    r4 = run(sp, r3.status, hyps, now=T0 + timedelta(minutes=15))
    (wake,) = [a for a in r4.actions if isinstance(a, ProposeHypotheses)]
    assert wake.repairs == ()  # asked once, even if the proposer had no fix
    # the reconcile after a wake-up marks each asked Hypothesis, and the names are forgotten once the marks are
    # seen: the list holds only what is on its way, and a marked failure is never asked again
    from cambrian.operator.reconcile.actions import A_REPAIR_ASKED, Mark

    marks = [a for a in r4.actions if isinstance(a, Mark)]
    assert [(a.kind, a.name, a.annotation) for a in marks] == [("Hypothesis", "gate", A_REPAIR_ASKED),
                                                             ("Hypothesis", "nan", A_REPAIR_ASKED)]
    seen = [replace(h, repair_asked="2") if h.name in ("gate", "nan") else h for h in hyps]
    r5 = run(sp, r4.status, seen, now=T0 + timedelta(minutes=16))
    assert r5.status.repairs == [] and not [a for a in r5.actions if isinstance(a, Mark)]
    r6 = run(sp, r5.status, seen, now=T0 + timedelta(hours=2))
    (wake,) = [a for a in r6.actions if isinstance(a, ProposeHypotheses)]
    assert wake.repairs == ()


def test_more_failures_than_the_status_remembers_are_each_sent_for_repair_once():
    # status.repairs is bounded (256): before the marks, the oldest names fell off it and were asked again
    from collections import Counter as Count

    from cambrian.operator.reconcile.actions import Mark

    sp = spec(cadence={"offline": "1m", "online": "1d"})
    _, st = with_champion(sp)
    st = st.status
    failed = {f"f{i:03}": None for i in range(300)}
    asked: Count = Count()
    now = T0 + timedelta(minutes=5)
    for wave in (range(0, 200), range(200, 300)):  # failures arrive in two waves, 300 in all
        for _ in range(4):
            hyps = [HypothesisView(n, "Failed", "optimizer", failure_stage="training", wakeup=1, repair_asked=m)
                    for i, (n, m) in enumerate(failed.items()) if i < wave.stop]
            r = run(sp, st, hyps, now=now)
            for a in r.actions:
                if isinstance(a, ProposeHypotheses):
                    asked.update(a.repairs)
                elif isinstance(a, Mark):
                    failed[a.name] = a.value
            st, now = r.status, now + timedelta(minutes=30)
    assert set(asked) == set(failed) and max(asked.values()) == 1
    assert st.repairs == []


def test_an_objective_metric_that_the_datas_declaration_does_not_define_is_an_invalid_spec():
    """The proxies are the data's declaration's (trainer/schema.py): MovieLens reports auc and rating_corr, not the
    world's top_watch_share (the default reward objective), so an objective naming a metric the trainer will never
    report is refused in one line, which says how to fix a default left in place."""
    from cambrian.errors import ConfigError
    from cambrian.trainer.schema import MOVIELENS_100K

    source = {"source": {"uri": "s3://lake/movielens"}, "declaration": "movielens-100k"}
    assert "top_watch_share" not in {p.name for p in MOVIELENS_100K.proxies}
    raw = spec().model_dump(by_alias=True, exclude_none=True, mode="json")
    assert raw["objective"]["offline"]["reward"] == {"metric": "top_watch_share", "direction": "maximize"}
    # as a cluster's API server stores it (the CRD's defaults written in) and as a user writes it (no offline)
    for objective in (raw["objective"], {"northStar": raw["objective"]["northStar"]}):
        with pytest.raises(ConfigError) as err:
            api.parse_spec("Evolution", {**raw, "objective": objective, "data": source})
        message = str(err.value)
        assert "objective.offline.reward.metric 'top_watch_share'" in message
        assert "known: val_loss, auc, rating_corr (the default" in message
        assert "set objective.offline.reward to one of the declaration's proxies, e.g. {metric: rating_corr" in message
        assert "\n" not in message
    raw["objective"]["offline"]["reward"] = {"metric": "rating_corr", "direction": "maximize"}
    assert api.parse_spec("Evolution", {**raw, "data": source}).data.declared().name == "movielens_100k"
    with pytest.raises(ConfigError) as err:
        api.parse_spec("Evolution", raw)  # the world declares no rating_corr
    assert "'rating_corr' is not a metric of the data's declaration 'world'" in str(err.value)
    assert "(the default" not in str(err.value)  # named by the spec: no hint about a default
    with pytest.raises(ConfigError, match="the simulated world is declared by world"):
        api.parse_spec("Evolution", {**raw, "data": {"world": {}, "declaration": "movielens-100k"}})
    # a team's own declaration without the world's top_watch_share, or with no proxy at all
    from cambrian.trainer.schema import WORLD

    mine = {**WORLD.model_dump(mode="json", exclude_none=True, exclude_defaults=True), "name": "shop"}
    mine["proxies"] = [p for p in mine["proxies"] if p["name"] != "top_watch_share"]
    for proxies, fix in ((mine["proxies"], "e.g. {metric: long_watch_corr, direction: maximize}"),
                         ([], "to {metric: val_loss, direction: minimize} with the reward persona left out of "
                              "spec.agent.personas, or declare a proxy")):
        own = {"source": {"uri": "s3://lake/shop"}, "customDeclaration": {**mine, "proxies": proxies}}
        with pytest.raises(ConfigError) as err:
            api.parse_spec("Evolution", {**raw, "objective": {"northStar": raw["objective"]["northStar"]}, "data": own})
        assert "'top_watch_share' is not a metric of the data's declaration 'shop'" in str(err.value)
        assert fix in str(err.value)


def test_the_default_reward_objective_is_the_worlds_proxy_of_watch_time():
    """An Evolution on the world that names no offline objective scores reward changes by top_watch_share
    (maximize): the best predictor of the online effect on the fidelity benchmark (bench/README.md)."""
    from cambrian.trainer.schema import WORLD

    sp = spec()
    reward = sp.objective.offline.for_component("reward")
    assert (reward.metric, reward.direction) == ("top_watch_share", "maximize")
    assert {c: sp.objective.offline.for_component(c).metric for c in ("optimizer", "architecture", "training")} == \
        dict.fromkeys(("optimizer", "architecture", "training"), "val_loss")
    (proxy,) = [p for p in WORLD.proxies if p.name == reward.metric]
    assert proxy.kind == "top_share"
