"""spec.serving.httpRoute with several live Rollouts of one Evolution (reconcile/httproute.py): one Rollout at a time
holds the route, the others wait before their ramp starts, nobody else writes it, and the champion takes it back
once its holder concluded. Before: every Rollout's SetWeights replaced the route's backends (last writer won), so
one Rollout's users were served by another's arms while both analyses believed their weights held; and a
concluded or deleted Rollout wrote its control arm over the champion's route."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cambrian.operator import api
from cambrian.operator.platform import kubernetes as K
from cambrian.operator.reconcile import champion as CH
from cambrian.operator.reconcile import httproute as HR
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import A_ROUTE_HOLDER, Owner, RecordJournal, SetWeights
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import (ArmObservation, ChampionObservation, RolloutObservation,
                                                      RouteObservation)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SERVING = api.Serving(http_route=api.HTTPRouteRef(name="feed", port=80))
CHAMPION = RouteObservation(None, (("e-champion", 80, 100),), "7")
R1, R2 = Meta("r1", "u1", "ns", 1), Meta("r2", "u2", "ns", 1)


def spec() -> api.RolloutSpec:
    return api.RolloutSpec.model_validate({
        "control": {"bundle": "pvc://b/champion"},
        "treatments": [{"name": "treatment", "hypothesisRef": {"name": "h"}, "bundle": "pvc://b/h"}],
        "salt": "s", "ramp": {"steps": [{"weights": [90, 10], "duration": "1d"}]},
        "metrics": {"northStar": [{"name": "dau"}], "readout": {"interval": "6h"}}, "decisionPolicy": "manual"})


def seen(meta, route, weights=None, approval=None) -> RolloutObservation:
    arms = {n: ArmObservation(R.arm_name(meta, n), True, True) for n in ("control", "treatment")}
    return RolloutObservation(arms, weights, approval=approval, route=route)


def run(meta, st, o, now=T0):
    return R.reconcile(meta, spec(), st, SERVING, None, o, now)


def writes(r) -> list[SetWeights]:
    return [a for a in r.actions if isinstance(a, SetWeights)]


def held(sw: SetWeights, version: str) -> RouteObservation:
    """The route as the API server keeps it after the rollout's write went through."""
    return RouteObservation(sw.rollout, HR.backends(sw.weights, sw.serving), version)


def route_held(st) -> tuple[str, str]:
    c = next(c for c in st.conditions if c.type == HR.HELD)
    return c.status, c.reason


def test_two_live_rollouts_take_turns_on_one_route():
    # r1 starts first: it takes the free route, on the version it read
    r1 = run(R1, run(R1, api.RolloutStatus(), seen(R1, CHAMPION)).status, seen(R1, CHAMPION), T0 + timedelta(1))
    (sw,) = writes(r1)
    assert r1.status.phase == "Running" and sw.route_version == "7" and route_held(r1.status) == ("True", "Held")
    patch = K.httproute_patch(sw)
    assert patch["metadata"] == {"annotations": {A_ROUTE_HOLDER: "r1"}, "resourceVersion": "7"}
    assert patch["spec"]["rules"][0]["backendRefs"] == [{"name": R.arm_name(R1, "control"), "port": 80, "weight": 90},
                                                        {"name": R.arm_name(R1, "treatment"), "port": 80, "weight": 10}]
    by_r1 = held(sw, "8")
    # r2's arms are ready, but the route is r1's: it waits, its ramp and clocks not started, no router, no write
    r2 = run(R2, api.RolloutStatus(), seen(R2, by_r1))
    assert r2.status.phase == "Deploying" and r2.status.started_at is None and not writes(r2)
    assert route_held(r2.status) == ("False", HR.WAITING) and "rollout r1" in r2.status.conditions[-1].message
    assert [a.event for a in r2.actions if isinstance(a, RecordJournal)] == ["Created", HR.WAITING]
    again = run(R2, r2.status, seen(R2, by_r1), T0 + timedelta(2))
    assert again.status.phase == "Deploying" and not again.actions  # said once
    # r1 goes on without writing: its weights are there
    assert not writes(run(R1, r1.status, seen(R1, by_r1, {"control": 90, "treatment": 10}), T0 + timedelta(1, 60)))
    # r1 concludes: it still holds the route, and puts its final weights there; r2 still waits
    done = run(R1, r1.status, seen(R1, by_r1, {"control": 90, "treatment": 10}, "rollback"), T0 + timedelta(2))
    (back,) = writes(done)
    assert done.status.phase == "RolledBack" and back.route_version == "8" and back.as_dict()["control"] == 100
    assert "back at the champion" in next(c.message for c in done.status.conditions if c.type == HR.HELD)
    final = held(back, "9")
    assert run(R2, again.status, seen(R2, final), T0 + timedelta(3)).status.phase == "Deploying"
    # the champion takes it back (champion.route), holding it for nobody; a concluded rollout never takes it again
    free = RouteObservation(None, CHAMPION.backends, "10")
    drifted = run(R1, done.status, seen(R1, free, None), T0 + timedelta(4))
    assert [w.route_version for w in writes(drifted)] == [None]  # its router again, never the route
    assert route_held(drifted.status) == ("False", "Released")
    # and r2 starts now, on the champion's version of the route
    r2 = run(R2, again.status, seen(R2, free), T0 + timedelta(4))
    (sw2,) = writes(r2)
    assert r2.status.phase == "Running" and sw2.route_version == "10" and r2.status.started_at == T0 + timedelta(4)
    # deleting r1 leaves r2's route alone; deleting the holder moves it (its Evolution takes it back next)
    by_r2 = held(sw2, "11")
    assert [w.route_version for w in R.finalize(R1, spec(), SERVING, True, by_r2) if isinstance(w, SetWeights)] == [None]
    assert [w.route_version for w in R.finalize(R2, spec(), SERVING, True, by_r2) if isinstance(w, SetWeights)] == ["11"]


def test_a_running_rollout_puts_its_weights_back_on_a_route_it_holds():
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
        "storage": {"claimName": "b"}, "serving": {"httpRoute": {"name": "feed", "port": 80}}})


def test_the_champion_takes_the_route_back_only_from_a_holder_that_is_no_longer_live():
    sp = evolution_spec()
    st = api.EvolutionStatus()
    st.champion.name, st.champion.bundle = "baseline", "pvc://b/champion"
    rev = CH.revision(st.champion.bundle, sp.serving.wire())
    owner = Owner("Evolution", "e", "ue", "ns")

    def route(route, routed, live=("r1", "r2")):
        return CH.route(owner, sp, st, ChampionObservation("e-champion", rev, st.champion.bundle, True, routed=routed,
                                                           route=route), list(live), lambda *a, **k: None)

    by_r1 = RouteObservation("r1", (("r1-arm-control", 80, 90), ("r1-arm-treatment", 80, 10)), "8")
    assert route(by_r1, False) == []  # r1 is live: its experiment
    (rc,) = route(by_r1, False, live=("r2",))  # r1 concluded: back to the champion, on the version read
    assert rc.route_version == "8" and K.champion_route_patch(rc)["metadata"] == {
        "annotations": {A_ROUTE_HOLDER: None}, "resourceVersion": "8"}
    assert route(CHAMPION, True) == []  # the champion's already
    assert route(CHAMPION, None) == []  # unknown: nothing is decided
    # the champion's backends, but still named for a rollout gone since: the name is cleared
    assert [a.route_version for a in route(RouteObservation("gone", CHAMPION.backends, "3"), True)] == ["3"]
    # a route someone pointed elsewhere while no live rollout holds it goes back to the champion
    assert len(route(RouteObservation(None, (("elsewhere", 80, 100),), "4"), False)) == 1


def test_the_route_read_back_from_the_cluster():
    route = {"metadata": {"resourceVersion": "42", "annotations": {A_ROUTE_HOLDER: "r1", "other": "x"}},
             "spec": {"rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": 90}, {"name": "b", "port": 80}]}]}}
    assert K.parse_route(route) == RouteObservation("r1", (("a", 80, 90), ("b", 80, 1)), "42")  # Gateway API: weight 1
    assert K.parse_route({"spec": {}}) == RouteObservation(None, (), "")

