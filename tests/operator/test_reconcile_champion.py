"""The launched champion serves (pure core + the Kubernetes builders): production follows the champion,
switching is a rolling update, and no Rollout starts with a bundle no model server can load."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cambrian.operator import api
from cambrian.operator.platform import kubernetes as K
from cambrian.operator.reconcile import champion as CH
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import (A_ROUTE_HOLDER, CreateRollout, DeployArm, RecordJournal,
                                                UpdateChampion)
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import (ChampionObservation, HypothesisView, JobObservation,
                                                      RolloutObservation, RolloutView, RouteObservation, Spend)

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
META = Meta("feed", "uid-feed", "ns", 1)


def spec(**over):
    data = {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100}}, "topK": 2,
            "cadence": {"offline": "1h", "online": "1m"}, "launchPolicy": "auto", **over}
    return api.EvolutionSpec.model_validate(data)


def step(sp, st, hyps=(), ros=(), job=None, serving=None, now=T0, meta=META):
    return E.reconcile(meta, sp, st, list(hyps), list(ros), job, Spend(), now, champion_serving=serving)


def served(a: UpdateChampion, ready: bool = True) -> ChampionObservation:
    return ChampionObservation(a.name, a.revision, a.bundle, ready)


def updates(r) -> list[UpdateChampion]:
    return [a for a in r.actions if isinstance(a, UpdateChampion)]


def events(r, event: str) -> list[RecordJournal]:
    return [a for a in r.actions if isinstance(a, RecordJournal) and a.event == event]


def conditions(st) -> dict:
    return {c.type: c for c in st.conditions}


def trained(sp, bundle: str, meta=META):
    r = step(sp, api.EvolutionStatus(), meta=meta)
    done = [JobObservation(name, "Succeeded", 0, metrics={"val_loss": 0.5}, bundle_uri=bundle)
            for name in N.baseline_job_names(meta, sp)]  # every seed of the baseline: its noise floor
    return step(sp, r.status, job=done, now=T0 + timedelta(seconds=1), meta=meta)


def hv(name, bundle, score=0.4):
    return HypothesisView(name, "Scored", "optimizer", "val_loss", score, bundle, verdict="better")


@pytest.mark.parametrize("uri, ok", [("pvc://bundles/a/bundle", True), ("file:///srv/b", True), ("b/o2", True),
                                     ("job://feed-baseline-1/bundle", False), ("s3://bucket/b", False)])
def test_which_bundles_a_model_server_can_load(uri, ok):
    assert (CH.unservable(uri) is None) is ok
    if uri.startswith("job://"):
        assert "spec.storage.claimName" in CH.unservable(uri)


def test_production_follows_the_champion_with_one_update_per_change():
    sp = spec(storage={"claimName": "bundles"})
    r = trained(sp, "pvc://bundles/feed/baseline/bundle")
    (up,) = updates(r)
    assert (up.name, up.champion, up.bundle, up.hypothesis) == ("feed-champion", "baseline",
                                                                "pvc://bundles/feed/baseline/bundle", None)
    assert conditions(r.status)[CH.SERVING].reason == "Updating"
    # applied, pods rolling: nothing more to ask; then ready
    r2 = step(sp, r.status, serving=served(up, ready=False), now=T0 + timedelta(seconds=2))
    assert not updates(r2) and conditions(r2.status)[CH.SERVING].status == "False"
    r3 = step(sp, r2.status, serving=served(up), now=T0 + timedelta(seconds=3))
    assert not updates(r3) and conditions(r3.status)[CH.SERVING].status == "True"
    # a promoted rollout: production switches to the winner's bundle (the same server, a new revision)
    ro = RolloutView("ro-h1", "Promoted", ("h1",), "promote", "h1", "pvc://bundles/h1/bundle", "dau +2%")
    r4 = step(sp, r3.status, [HypothesisView("h1", "Launched", "optimizer")], [ro], serving=served(up),
              now=T0 + timedelta(seconds=4))
    (up2,) = updates(r4)
    assert (up2.name, up2.champion, up2.bundle, up2.rollout) == ("feed-champion", "h1", "pvc://bundles/h1/bundle", "ro-h1")
    assert up2.revision != up.revision
    # a serving spec change (more replicas) rolls the server too; a collector URL does not
    more = spec(storage={"claimName": "bundles"}, serving={"replicas": 3})
    (up3,) = updates(step(more, r4.status, serving=served(up2), now=T0 + timedelta(seconds=5)))
    assert up3.bundle == up2.bundle and up3.revision != up2.revision and up3.serving["replicas"] == 3
    other = spec(storage={"claimName": "bundles"}, serving={"collectorUrl": "http://collector:8080"})
    assert not updates(step(other, r4.status, serving=served(up2), now=T0 + timedelta(seconds=5)))
    # the server gone (deleted by hand): created again
    assert updates(step(sp, r4.status, serving=None, now=T0 + timedelta(seconds=6)))


def test_a_blocked_production_server_is_reported_once():
    sp = spec(storage={"claimName": "bundles"})
    r = trained(sp, "pvc://bundles/b")
    (up,) = updates(r)
    stuck = ChampionObservation(up.name, up.revision, up.bundle, False, "pod x cannot be scheduled: 0/3 nodes")
    r2 = step(sp, r.status, serving=stuck, now=T0 + timedelta(seconds=2))
    r3 = step(sp, r2.status, serving=stuck, now=T0 + timedelta(seconds=3))
    assert conditions(r3.status)[CH.SERVING].reason == "Blocked" and "cannot be scheduled" in conditions(r3.status)[CH.SERVING].message
    assert len(events(r2, "Blocked")) == 1 and not events(r3, "Blocked") and not updates(r3)


def test_without_a_claim_no_rollout_starts_and_the_evolution_says_why_once():
    """Before: the job://... bundles of an Evolution without spec.storage.claimName went into a Rollout."""
    sp = spec()
    r = trained(sp, "job://feed-baseline-abc/bundle")
    assert not updates(r)  # nothing to serve it with
    cond = conditions(r.status)[CH.SERVING]
    assert (cond.status, cond.reason) == ("False", CH.NOT_SERVABLE) and "spec.storage.claimName" in cond.message
    assert len(events(r, CH.NOT_SERVABLE)) == 1
    hyps = [hv("h1", "job://h1-train-1/bundle")]
    st, seen = r.status, []
    for i in range(1, 5):  # four reviews
        ri = step(sp, st, hyps, now=T0 + timedelta(minutes=i))
        assert not [a for a in ri.actions if isinstance(a, CreateRollout)] and not updates(ri)
        seen += events(ri, CH.NOT_SERVABLE)
        st = ri.status
    assert st.counters.reviews >= 4 and st.counters.live == 0
    cond = conditions(st)[CH.ROLLOUTS]
    assert (cond.status, cond.reason) == ("False", CH.NOT_SERVABLE) and "job://" in cond.message
    assert len(seen) == 1 and seen[0].warning  # said once, not at every review


def test_only_hypotheses_with_a_servable_bundle_get_a_rollout():
    sp = spec(storage={"claimName": "bundles"})
    r = trained(sp, "pvc://bundles/b")
    hyps = [hv("h1", "job://h1-train-1/bundle", 0.3), hv("h2", "pvc://bundles/h2", 0.4)]
    r2 = step(sp, r.status, hyps, serving=served(updates(r)[0]), now=T0 + timedelta(minutes=2))
    (ro,) = [a for a in r2.actions if isinstance(a, CreateRollout)]
    assert ro.hypothesis == "h2"
    cond = conditions(r2.status)[CH.ROLLOUTS]
    assert cond.status == "False" and "h1" in cond.message and "h2" not in cond.message
    # once nothing unservable is left to choose from, the condition clears
    r3 = step(sp, r2.status, [hv("h3", "pvc://bundles/h3")], [RolloutView(ro.name, "Running", ("h2",))],
              serving=served(updates(r)[0]), now=T0 + timedelta(minutes=4))
    assert conditions(r3.status)[CH.ROLLOUTS].status == "True"


def rollout_spec(control: str, treatment: str) -> api.RolloutSpec:
    return api.RolloutSpec.model_validate({
        "control": {"name": "control", "bundle": control},
        "treatments": [{"name": "t", "hypothesisRef": {"name": "h"}, "bundle": treatment}],
        "salt": "s", "ramp": {"steps": [{"weights": [50, 50]}]}, "metrics": {"northStar": [{"name": "dau"}]}})


def test_a_rollout_of_an_unservable_bundle_fails_until_its_spec_changes():
    meta = Meta("ro", "uid-ro", "ns", 1)
    bad = rollout_spec("pvc://b/base", "job://h-train-1/bundle")
    r = R.reconcile(meta, bad, api.RolloutStatus(), api.Serving(), None, RolloutObservation(), T0)
    assert not [a for a in r.actions if isinstance(a, DeployArm)]
    assert r.status.phase == "Failed" and "job://" in r.status.reason
    assert conditions(r.status)["Ready"].reason == "InvalidSpec"
    again = R.reconcile(meta, bad, r.status, api.Serving(), None, RolloutObservation(), T0 + timedelta(seconds=1))
    assert again.actions == []  # no retry loop
    fixed = R.reconcile(Meta("ro", "uid-ro", "ns", 2), rollout_spec("pvc://b/base", "pvc://b/h"), r.status,
                        api.Serving(), None, RolloutObservation(), T0 + timedelta(seconds=2))
    assert {a.arm for a in fixed.actions if isinstance(a, DeployArm)} == {"control", "t"}


# ---- the Kubernetes side --------------------------------------------------------------------------


def test_the_production_deployment_rolls_safely_behind_its_readiness_probe():
    sp = spec(storage={"claimName": "bundles"}, serving={"replicas": 2, "port": 9000})
    (up,) = updates(trained(sp, "pvc://bundles/feed/baseline/bundle"))
    dep, svc = K.champion_manifests(up)
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "feed-champion"
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["args"][:5] == ["cambrian", "serve", "--bundle", "/var/lib/cambrian/feed/baseline/bundle", "--arm"]
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": "bundles", "readOnly": True}} in pod["volumes"]
    assert pod["automountServiceAccountToken"] is False
    assert dep["metadata"]["annotations"][K.A_REVISION] == up.revision
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] == {
        K.L_EVOLUTION: "feed", K.L_ARM: "champion"}
    assert svc["spec"]["ports"][0]["port"] == 9000
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-feed"


def _dep(generation=2, observed=2, replicas=1, updated=1, available=1, total=1, conditions=()):
    return {"metadata": {"name": "feed-champion", "generation": generation,
                         "annotations": {K.A_REVISION: "r2", K.A_BUNDLE: "pvc://b/x"}},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available,
                       "replicas": total, "conditions": list(conditions)}}


def test_the_production_deployment_is_ready_only_once_its_rollout_completed():
    assert K.parse_champion(_dep(), []) == ChampionObservation("feed-champion", "r2", "pvc://b/x", True)
    assert not K.parse_champion(_dep(observed=1), []).ready  # the controller has not seen the new spec yet
    assert not K.parse_champion(_dep(updated=1, available=1, total=2), []).ready  # an old pod still serves
    assert not K.parse_champion(_dep(updated=0), []).ready
    failing = _dep(updated=0, available=0, total=0, conditions=[
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota exceeded"}])
    assert "quota exceeded" in K.parse_champion(failing, []).blocked


def test_between_rollouts_the_http_route_sends_everything_to_the_champion():
    """Before: after a promotion the route kept pointing at the winner's arm, a child of a concluded Rollout
    (and at a deleted control arm once the Rollout was deleted); nothing pointed it at production."""
    from cambrian.operator.reconcile.actions import RouteChampion

    sp = spec(storage={"claimName": "bundles"}, serving={"port": 80, "httpRoute": {"name": "feed"}})
    r = trained(sp, "pvc://bundles/b")
    (up,) = updates(r)
    off = ChampionObservation(up.name, up.revision, up.bundle, True, routed=False)

    def routes(res):
        return [a for a in res.actions if isinstance(a, RouteChampion)]

    r2 = step(sp, r.status, serving=off, now=T0 + timedelta(seconds=2))
    (rc,) = routes(r2)
    assert rc.service == "feed-champion" and rc.serving["httpRoute"]["name"] == "feed"
    read = {"metadata": {"resourceVersion": "3"}, "spec": {"rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/rank"}}], "backendRefs": [{"name": "old", "port": 80}]}]}}
    assert K.champion_route_patch(rc, read) == {  # no version decided on: the one read is the condition
        "metadata": {"annotations": {A_ROUTE_HOLDER: None}, "resourceVersion": "3"}, "spec": {"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/rank"}}],
             "backendRefs": [{"name": "feed-champion", "port": 80, "weight": 100}]}]}}
    on = ChampionObservation(up.name, up.revision, up.bundle, True, routed=True)
    assert not routes(step(sp, r2.status, serving=on, now=T0 + timedelta(seconds=3)))
    # a live rollout holding the route owns its weights; a rolling switch waits until the new champion is ready
    live = [RolloutView("ro-h1", "Running", ("h1",))]
    held = ChampionObservation(up.name, up.revision, up.bundle, True, routed=False,
                               route=RouteObservation("ro-h1", (("ro-h1-arm-control", 80, 90),), "5"))
    assert not routes(step(sp, r2.status, [HypothesisView("h1", "Live", "optimizer")], live, serving=held,
                           now=T0 + timedelta(seconds=4)))
    ro = RolloutView("ro-h1", "Promoted", ("h1",), "promote", "h1", "pvc://bundles/h1", "dau +2%")
    r5 = step(sp, r2.status, [HypothesisView("h1", "Launched", "optimizer")], [ro], serving=off,
              now=T0 + timedelta(seconds=5))
    assert updates(r5) and not routes(r5)  # production still on the old revision
    (up2,) = updates(r5)
    done = ChampionObservation(up2.name, up2.revision, up2.bundle, True, routed=False)
    assert routes(step(sp, r5.status, [HypothesisView("h1", "Launched", "optimizer")], [ro], serving=done,
                       now=T0 + timedelta(seconds=6)))


def test_which_http_routes_send_everything_to_the_champion():
    route = lambda *refs: {"spec": {"rules": [{"backendRefs": list(refs)}]}}  # noqa: E731
    assert K.routes_only_to(route({"name": "c", "weight": 100}), "c")
    assert K.routes_only_to(route({"name": "c", "weight": 100}, {"name": "arm", "weight": 0}), "c")
    assert not K.routes_only_to(route({"name": "c", "weight": 95}, {"name": "arm", "weight": 5}), "c")
    assert not K.routes_only_to(route({"name": "arm"}), "c")  # weight defaults to 1
    assert not K.routes_only_to({"spec": {}}, "c")


def test_concluded_rollouts_are_released_once_production_is_on_the_champion():
    """Before: nothing ever released a concluded Rollout's control (and winner's) arm and router entry in the
    cluster; they served no one until the Rollout was deleted. Now its Evolution marks it A_RELEASED once its
    decision is applied, the champion's server is ready on the current champion and the route (if any) is on it."""
    from dataclasses import replace

    from cambrian.operator.reconcile.actions import A_RELEASED, Mark

    sp = spec(storage={"claimName": "bundles"}, serving={"httpRoute": {"name": "feed"}})
    r = trained(sp, "pvc://bundles/b")
    (up,) = updates(r)
    on = ChampionObservation(up.name, up.revision, up.bundle, True, routed=True)
    r = step(sp, r.status, serving=on, now=T0 + timedelta(seconds=2))
    hyps = [HypothesisView("h1", "Launched", "optimizer"), HypothesisView("h2", "Retired", "optimizer")]
    won = RolloutView("ro-h1", "Promoted", ("h1",), "promote", "h1", "pvc://bundles/h1", "dau +2%",
                      control_bundle="pvc://bundles/b")
    lost = RolloutView("ro-h2", "RolledBack", ("h2",), "rollback", control_bundle="pvc://bundles/b")

    def released(res):
        return sorted(a.name for a in res.actions if isinstance(a, Mark) and a.annotation == A_RELEASED)

    launch = step(sp, r.status, hyps, [won, lost], serving=on, now=T0 + timedelta(seconds=3))
    (up2,) = updates(launch)
    assert up2.bundle == "pvc://bundles/h1" and released(launch) == []  # decisions not applied (marked) yet
    marked = [replace(won, applied="final"), replace(lost, applied="final")]
    rolling = ChampionObservation(up2.name, up2.revision, up2.bundle, False, routed=True)
    # production still rolls to the winner (and the route still on the old server's arms): nothing released
    assert released(step(sp, launch.status, hyps, marked, serving=rolling, now=T0 + timedelta(seconds=4))) == []
    ready = ChampionObservation(up2.name, up2.revision, up2.bundle, True, routed=False)
    assert released(step(sp, launch.status, hyps, marked, serving=ready, now=T0 + timedelta(seconds=5))) == []
    routed = replace(ready, routed=True)
    done = step(sp, launch.status, hyps, marked, serving=routed, now=T0 + timedelta(seconds=6))
    assert released(done) == ["ro-h1", "ro-h2"]
    # once marked, asked no more; a live rollout is never released
    again = [replace(x, released="h1") for x in marked] + [RolloutView("ro-h3", "Running", ("h3",))]
    assert released(step(sp, done.status, hyps, again, serving=routed, now=T0 + timedelta(seconds=7))) == []
    # without an HTTPRoute (routed None) the champion's server being ready is enough
    plain = spec(storage={"claimName": "bundles"})
    (p_up,) = updates(step(plain, launch.status, hyps, marked, serving=None, now=T0 + timedelta(seconds=8)))
    assert released(step(plain, launch.status, hyps, marked, serving=served(p_up),
                         now=T0 + timedelta(seconds=9))) == ["ro-h1", "ro-h2"]
