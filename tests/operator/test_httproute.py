"""spec.serving.httpRoute with several live Rollouts of one Evolution (reconcile/httproute.py): one Rollout at a time
holds the route, the others wait before their ramp starts, nobody else writes it, and the champion takes it back
once its holder concluded. Before: every Rollout's SetWeights replaced the route's backends (last writer won), so
one Rollout's users were served by another's arms while both analyses believed their weights held; and a
concluded or deleted Rollout wrote its control arm over the champion's route.

The holder's route goes to its router, never its arms (before: the arms at the ramp's weights, which a Gateway
splits per request: no user stayed on one arm and none was logged as exposed); only the forwarding rules'
backendRefs are written (before: spec.rules was replaced by one rule, the user's matches and filters and other
rules lost); a deleted holder hands the route back to the champion itself (before: the route pointed at its
deleted Services until its Evolution's next tick)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cambrian.operator import api
from cambrian.operator.platform import kubernetes as K
from cambrian.operator.reconcile import champion as CH
from cambrian.operator.reconcile import httproute as HR
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import (A_ROUTE_HOLDER, ClearWeights, DeleteArm, Owner, RecordJournal,
                                                 RouteChampion, SetWeights)
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import (ArmObservation, ChampionObservation, RolloutObservation,
                                                      RouteObservation)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SERVING = api.Serving(port=80, http_route=api.HTTPRouteRef(name="feed"))
CHAMPION = RouteObservation(None, (("e-champion", 80, 100),), "7")
R1, R2 = Meta("r1", "u1", "ns", 1), Meta("r2", "u2", "ns", 1)


def spec() -> api.RolloutSpec:
    return api.RolloutSpec.model_validate({
        "control": {"bundle": "pvc://b/champion"},
        "treatments": [{"name": "treatment", "hypothesisRef": {"name": "h"}, "bundle": "pvc://b/h"}],
        "salt": "s", "ramp": {"steps": [{"weights": [90, 10], "duration": "1d"}]},
        "metrics": {"northStar": [{"name": "dau"}], "readout": {"interval": "6h"}}, "decisionPolicy": "manual"})


def seen(meta, route, weights=None, approval=None, router_ready=True) -> RolloutObservation:
    arms = {n: ArmObservation(R.arm_name(meta, n), True, True) for n in ("control", "treatment")}
    return RolloutObservation(arms, weights, approval=approval, route=route, router_ready=router_ready)


def run(meta, st, o, now=T0):
    return R.reconcile(meta, spec(), st, SERVING, None, o, now)


def writes(r) -> list[SetWeights]:
    return [a for a in r.actions if isinstance(a, SetWeights)]


def held(sw: SetWeights, version: str) -> RouteObservation:
    """The route as the API server keeps it after the rollout's write went through."""
    return RouteObservation(sw.rollout, sw.route, version)


def router(meta) -> HR.Backends:
    """All of the route to the rollout's router Service."""
    return ((R.router_name(R.owner_of(meta)), 80, 100),)


def route_held(st) -> tuple[str, str]:
    c = next(c for c in st.conditions if c.type == HR.HELD)
    return c.status, c.reason


def test_two_live_rollouts_take_turns_on_one_route():
    # r1 starts first: it takes the free route, on the version it read, for its router
    r1 = run(R1, run(R1, api.RolloutStatus(), seen(R1, CHAMPION)).status, seen(R1, CHAMPION), T0 + timedelta(1))
    (sw,) = writes(r1)
    assert r1.status.phase == "Running" and sw.route_version == "7" and route_held(r1.status) == ("True", "Held")
    assert sw.route == router(R1)
    by_r1 = held(sw, "8")
    # r2's arms are ready, but the route is r1's: it waits, its ramp and clocks not started, no router, no write
    r2 = run(R2, api.RolloutStatus(), seen(R2, by_r1))
    assert r2.status.phase == "Deploying" and r2.status.started_at is None and not writes(r2)
    assert route_held(r2.status) == ("False", HR.WAITING) and "rollout r1" in r2.status.conditions[-1].message
    assert [a.event for a in r2.actions if isinstance(a, RecordJournal)] == ["Created", HR.WAITING]
    again = run(R2, r2.status, seen(R2, by_r1), T0 + timedelta(2))
    assert again.status.phase == "Deploying" and not again.actions  # said once
    # r1 goes on without writing: its weights are in its router
    assert not writes(run(R1, r1.status, seen(R1, by_r1, {"control": 90, "treatment": 10}), T0 + timedelta(1, 60)))
    # r1 concludes: its router sends every user to control; the route stays on that router; r2 still waits
    done = run(R1, r1.status, seen(R1, by_r1, {"control": 90, "treatment": 10}, "rollback"), T0 + timedelta(2))
    (back,) = writes(done)
    assert done.status.phase == "RolledBack" and back.route_version is None and back.as_dict()["control"] == 100
    assert "back at the champion" in next(c.message for c in done.status.conditions if c.type == HR.HELD)
    assert run(R2, again.status, seen(R2, by_r1), T0 + timedelta(3)).status.phase == "Deploying"
    # the champion takes it back (champion.route), holding it for nobody; a concluded rollout never takes it again
    free = RouteObservation(None, CHAMPION.backends, "10")
    drifted = run(R1, done.status, seen(R1, free, None), T0 + timedelta(4))
    assert [w.route_version for w in writes(drifted)] == [None]  # its router again, never the route
    assert route_held(drifted.status) == ("False", "Released")
    # and r2 starts now, on the champion's version of the route
    r2 = run(R2, again.status, seen(R2, free), T0 + timedelta(4))
    (sw2,) = writes(r2)
    assert r2.status.phase == "Running" and sw2.route_version == "10" and r2.status.started_at == T0 + timedelta(4)
    assert sw2.route == router(R2)


def test_the_route_goes_to_the_holders_router_once_it_serves_never_to_its_arms():
    """Defect: the route carried the arms at the ramp's weights. A Gateway picks a backend per request, so a user
    met both arms and no exposure was logged: users through the Gateway never entered the analysis. Now all of
    the route goes to the router, which keeps each user on one arm (salted hash) and logs the exposure."""
    first = run(R1, api.RolloutStatus(), seen(R1, CHAMPION))
    # the router is created by this very step: until it has a ready pod the route is taken but keeps the champion
    r1 = run(R1, first.status, seen(R1, CHAMPION, router_ready=False), T0 + timedelta(1))
    (sw,) = writes(r1)
    assert r1.status.phase == "Running" and sw.route_version == "7" and sw.route == CHAMPION.backends
    assert r1.requeue_after <= R.POLL_SECONDS  # not a day away at the next readout: the route follows soon
    assert "once that has a ready pod" in next(c.message for c in r1.status.conditions if c.type == HR.HELD)
    taken = RouteObservation("r1", CHAMPION.backends, "8")
    weights = {"control": 90, "treatment": 10}
    assert not writes(run(R1, r1.status, seen(R1, taken, weights, router_ready=False), T0 + timedelta(1, 5)))
    ready = run(R1, r1.status, seen(R1, taken, weights), T0 + timedelta(1, 20))
    (sw,) = writes(ready)
    assert sw.route_version == "8" and sw.route == router(R1) and sw.as_dict() == weights  # the split: the router's
    patch = K.httproute_patch(sw, {"metadata": {"resourceVersion": "8"}, "spec": {"rules": [
        {"backendRefs": [{"name": "e-champion", "port": 80, "weight": 100}]}]}})
    assert patch == {"metadata": {"annotations": {A_ROUTE_HOLDER: "r1"}, "resourceVersion": "8"}, "spec": {"rules": [
        {"backendRefs": [{"name": R.router_name(R.owner_of(R1)), "port": 80, "weight": 100}]}]}}
    # the ramp moves the router's weights, never the route
    by_r1 = held(sw, "9")
    step2 = api.RolloutSpec.model_validate({**spec().wire(), "ramp": {"steps": [
        {"weights": [90, 10], "duration": "1h"}, {"weights": [50, 50], "duration": "1d"}]}})
    st = R.reconcile(R1, step2, api.RolloutStatus(), SERVING, None, seen(R1, CHAMPION), T0).status
    st = R.reconcile(R1, step2, st, SERVING, None, seen(R1, by_r1), T0).status
    ramped = R.reconcile(R1, step2, st, SERVING, None, seen(R1, by_r1, weights), T0 + timedelta(hours=2))
    (sw,) = writes(ramped)
    assert sw.as_dict() == {"control": 50, "treatment": 50} and sw.route_version is None


def test_only_the_backends_of_the_users_rules_are_written():
    """Defect: the patch replaced spec.rules with one rule of its own: the user's matches, filters and other rules
    were lost. Now every rule that forwards gets the backends, everything else is sent back as it was read."""
    rank = {"name": "rank", "matches": [{"path": {"type": "PathPrefix", "value": "/rank"}}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}],
            "backendRefs": [{"name": "e-champion", "port": 80, "weight": 100}], "timeouts": {"request": "2s"}}
    redirect = {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]}
    api_rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": [{"name": "e-champion"}]}
    read = {"metadata": {"resourceVersion": "5", "annotations": {"keep": "me"}},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["feed.example"], "rules": [rank, redirect, api_rule]}}
    to = [{"name": "r1-router", "port": 80, "weight": 100}]
    patch = K.route_patch(read, (("r1-router", 80, 100),), "r1", "5")
    assert patch == {"metadata": {"annotations": {A_ROUTE_HOLDER: "r1"}, "resourceVersion": "5"},
                     "spec": {"rules": [{**rank, "backendRefs": to}, redirect, {**api_rule, "backendRefs": to}]}}
    assert read["spec"]["rules"][0]["backendRefs"][0]["name"] == "e-champion"  # what was read is not changed
    written = {**read, "spec": {**read["spec"], **patch["spec"]}, "metadata": {
        "resourceVersion": "6", "annotations": {"keep": "me", A_ROUTE_HOLDER: "r1"}}}
    assert K.parse_route(written) == RouteObservation("r1", (("r1-router", 80, 100),), "6")
    # a route with no forwarding rule gets one (the redirect kept)
    assert K.route_patch({"spec": {"rules": [redirect]}}, (("c", 80, 100),), None, "")["spec"]["rules"] == [
        redirect, {"backendRefs": [{"name": "c", "port": 80, "weight": 100}]}]
    # rules that disagree are read as all their backends in a row: never what the core wants, so it writes again
    assert K.parse_route({"spec": {"rules": [rank, {**api_rule, "backendRefs": [{"name": "x", "port": 80}]}]}}).backends \
        == (("e-champion", 80, 100), ("x", 80, 1))


def test_a_deleted_holder_hands_the_route_back_to_the_champion_before_its_router_goes():
    """Defect: deleting the holder deleted its router while the route still pointed at it, until its Evolution's
    next tick. Now its finalizer points the route at the champion's Service first, on the version it read."""
    by_r2 = RouteObservation("r2", router(R2), "11")
    gone = R.finalize(R2, spec(), SERVING, True, by_r2, "e-champion")
    assert [type(a) for a in gone] == [SetWeights, RouteChampion, ClearWeights, DeleteArm, DeleteArm]
    assert gone[0].route_version is None and gone[0].as_dict() == {"control": 100, "treatment": 0}
    assert (gone[1].service, gone[1].route_version) == ("e-champion", "11")
    assert K.champion_route_patch(gone[1], {"spec": {"rules": [{"backendRefs": [{"name": "r2-router"}]}]}}) == {
        "metadata": {"annotations": {A_ROUTE_HOLDER: None}, "resourceVersion": "11"},
        "spec": {"rules": [{"backendRefs": [{"name": "e-champion", "port": 80, "weight": 100}]}]}}
    # deleting a rollout that does not hold the route leaves it alone, router or not
    assert not [a for a in R.finalize(R1, spec(), SERVING, True, by_r2, "e-champion")
                if isinstance(a, RouteChampion) or (isinstance(a, SetWeights) and a.route_version is not None)]
    assert not [a for a in R.finalize(R2, spec(), SERVING, False, by_r2, "e-champion") if isinstance(a, SetWeights)]
    assert [type(a) for a in R.finalize(R2, spec(), SERVING, False, by_r2, "e-champion")][0] is RouteChampion


def test_a_running_rollout_puts_its_router_back_on_a_route_it_holds():
    """Level-based: a holder whose route was edited (or lost its annotation) writes it again."""
    r = run(R1, run(R1, api.RolloutStatus(), seen(R1, CHAMPION)).status, seen(R1, CHAMPION), T0 + timedelta(1))
    (sw,) = writes(r)
    edited = RouteObservation("r1", (("someone-else", 80, 100),), "12")
    assert [w.route_version for w in writes(run(R1, r.status, seen(R1, edited, sw.as_dict()), T0 + timedelta(1, 9)))] \
        == ["12"]
    # without a route (local mode, or no spec.serving.httpRoute) nothing waits and nothing is written there
    plain = R.reconcile(R1, spec(), api.RolloutStatus(), api.Serving(), None, seen(R1, None), T0)
    plain = R.reconcile(R1, spec(), plain.status, api.Serving(), None, seen(R1, None), T0 + timedelta(1))
    assert plain.status.phase == "Running" and [w.route_version for w in writes(plain)] == [None]
    assert not any(c.type == HR.HELD for c in plain.status.conditions)


def evolution_spec() -> api.EvolutionSpec:
    return api.EvolutionSpec.model_validate({
        "objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100}}, "topK": 2,
        "storage": {"claimName": "b"}, "serving": {"port": 80, "httpRoute": {"name": "feed"}}})


def test_the_champion_takes_the_route_back_only_from_a_holder_that_is_no_longer_live():
    sp = evolution_spec()
    st = api.EvolutionStatus()
    st.champion.name, st.champion.bundle = "baseline", "pvc://b/champion"
    rev = CH.revision(st.champion.bundle, sp.serving.wire())
    owner = Owner("Evolution", "e", "ue", "ns")

    def route(route, routed, live=("r1", "r2")):
        return CH.route(owner, sp, st, ChampionObservation("e-champion", rev, st.champion.bundle, True, routed=routed,
                                                           route=route), list(live), lambda *a, **k: None)

    by_r1 = RouteObservation("r1", router(R1), "8")
    assert route(by_r1, False) == []  # r1 is live: its experiment
    (rc,) = route(by_r1, False, live=("r2",))  # r1 concluded: back to the champion, on the version read
    assert rc.route_version == "8" and K.champion_route_patch(rc, {})["metadata"] == {
        "annotations": {A_ROUTE_HOLDER: None}, "resourceVersion": "8"}
    assert route(CHAMPION, True) == []  # the champion's already
    assert route(CHAMPION, None) == []  # unknown: nothing is decided
    # the champion's backends, but still named for a rollout gone since: the name is cleared
    assert [a.route_version for a in route(RouteObservation("gone", CHAMPION.backends, "3"), True)] == ["3"]
    # a route someone pointed elsewhere while no live rollout holds it goes back to the champion
    assert len(route(RouteObservation(None, (("elsewhere", 80, 100),), "4"), False)) == 1


def test_the_route_port_is_the_serving_port():
    """The route's backends are Services that serve on spec.serving.port: httpRoute.port defaults to it (setting
    only serving.port used to leave the route on 8080, a port those Services do not have), and differs never."""
    alone = api.parse_spec("Evolution", {**evolution_spec().wire(), "serving": {"port": 9000, "httpRoute": {"name": "feed"}}})
    assert HR.to("e-champion", alone.serving.wire()) == (("e-champion", 9000, 100),)
    same = api.Serving(port=9000, http_route=api.HTTPRouteRef(name="feed", port=9000))
    assert HR.to("r", same.wire()) == (("r", 9000, 100),)


def test_the_route_read_back_from_the_cluster():
    route = {"metadata": {"resourceVersion": "42", "annotations": {A_ROUTE_HOLDER: "r1", "other": "x"}},
             "spec": {"rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": 90}, {"name": "b", "port": 80}]}]}}
    assert K.parse_route(route) == RouteObservation("r1", (("a", 80, 90), ("b", 80, 1)), "42")  # Gateway API: weight 1
    assert K.parse_route({"spec": {}}) == RouteObservation(None, (), "")

