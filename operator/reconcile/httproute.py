"""spec.serving.httpRoute, pure: one route, held by one Rollout at a time.

A Gateway splits an HTTPRoute's traffic per request over its backendRefs; it keeps no user on one backend and
records no exposure. So the route never carries arms: a Rollout that holds it sends all of it to the Rollout's
router Service (`router_name`), which assigns each user to an arm stickily (a salted hash) at the ramp's weights
and logs the exposures its analysis counts. Until that router has a ready pod the route keeps what it carries
(the champion's Service), so the Gateway never sends users to a Service with no endpoint.

Exclusive, not composed: with the champion and several Rollouts' routers on one route, each user would be
served by all of them in turn, and no analysis would measure its arms alone. So:

- the first live Rollout to write it holds it: annotation A_ROUTE_HOLDER, written in the same request as the
  backends (so the two never disagree) and read back from the cluster after a restart;
- the others wait before their ramp starts, their clocks with them (condition RouteHeld=False,
  WaitingForRoute), and a concluded Rollout writes the route only while it still holds it;
- once the holder is no longer live (its router then sends every user to control, or to the winner), its
  Evolution points the route back at the champion, holding it for nobody, as soon as the champion serves what
  was decided (champion.route); a deleted holder does it in its own finalizer, before its router goes
  (`hand_back`); the next live Rollout takes it.

Which rules are Cambrian's: every rule of the route that forwards (has backendRefs) gets the same backends;
the rest of the route (matches, filters, rules without backends such as redirects, parentRefs) is the user's
and is kept as written (platform/kubernetes.py route_patch). A route with no forwarding rule gets one.
Each write is conditional on the metadata.resourceVersion its decision read: of two writers deciding on the
same reading, the second gets 409 Conflict and replays its step from the persisted status.
Local mode has no route: each live Rollout plays its own simulated users (platform/local.py), so nothing is
shared and nothing waits.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

from cambrian.operator.reconcile.actions import Owner, RouteChampion
from cambrian.operator.reconcile.observations import RouteObservation

HELD = "RouteHeld"  # a Rollout's condition, only under spec.serving.httpRoute
WAITING = "WaitingForRoute"

Backends = tuple[tuple[str, int, int], ...]


def port(serving: Mapping[str, Any]) -> int:
    """The port of the Services in the route's backendRefs: the router's and champion's Services serve on
    spec.serving.port (httpRoute.port, when given, equals it: api.Serving)."""
    return int(serving.get("port", 8080))


def to(service: str, serving: Mapping[str, Any]) -> Backends:
    """All of the route to one Service: a Rollout's router, or the champion's."""
    return ((service, port(serving), 100),)


def holder_backends(router: str, router_ready: bool, route: RouteObservation | None,
                    serving: Mapping[str, Any]) -> Backends:
    """What the route carries for the Rollout that holds it: all of it to that Rollout's `router` once it has a
    ready pod; until then what it carries now (the holder is recorded, the backends follow)."""
    return to(router, serving) if router_ready or route is None else route.backends


def held_by_another(rollout: str, route: RouteObservation | None) -> str | None:
    """The other Rollout that holds the route, if one does."""
    return route.holder if route is not None and route.holder not in (None, rollout) else None


def rollout_write(rollout: str, route: RouteObservation | None, want: Backends, live: bool) -> str | None:
    """The resourceVersion to write the route at for `rollout`'s backends `want`; None: leave it alone (no
    route, another Rollout's, already there, or free while this one no longer runs an experiment)."""
    if route is None or held_by_another(rollout, route):
        return None
    if route.holder == rollout:
        return None if route.backends == want else route.version
    return route.version if live else None


def champion_takes(route: RouteObservation | None, routed: bool | None, live: Collection[str]) -> bool:
    """Should the route go back to the champion? Not while a live Rollout holds it, nor when it is the
    champion's already (`routed` and held by nobody) or could not be read (`routed` None)."""
    holder = route.holder if route is not None else None
    if holder in live or routed is None:
        return False
    return not routed or holder is not None


def hand_back(rollout: str, route: RouteObservation | None, champion: str | None, owner: Owner,
              serving: Mapping[str, Any]) -> list[RouteChampion]:
    """A deleted Rollout's route: back to the champion's Service before the Rollout's router goes, when this
    Rollout holds it (its Evolution would only do so on its next tick, the route meanwhile on a deleted
    Service). The champion may still be rolling out a promoted winner: it serves the one before until then."""
    if route is None or route.holder != rollout or not champion:
        return []
    return [RouteChampion(owner, champion, dict(serving), route.version)]
