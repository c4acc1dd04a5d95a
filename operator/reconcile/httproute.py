"""spec.serving.httpRoute, pure: one route, held by one Rollout at a time.

Exclusive, not composed: a Gateway splits an HTTPRoute's traffic per request over its backendRefs; it keeps
no user on one backend and records no exposure. Composed on one route (the champion plus a slice per live
Rollout), every user of one Rollout would also be served by the other Rollouts' treatments, and no analysis
(which counts the users its own router exposed) would measure its arms alone. So the route carries one
Rollout's arms, at that Rollout's weights:

- the first live Rollout to write it holds it: annotation A_ROUTE_HOLDER, written in the same request as the
  backends (so the two never disagree) and read back from the cluster after a restart;
- the others wait before their ramp starts, their clocks with them (condition RouteHeld=False,
  WaitingForRoute), and a concluded or deleted Rollout writes the route only while it still holds it;
- once the holder is no longer live, its Evolution points the route back at the champion, holding it for
  nobody, as soon as the champion serves what was decided (champion.route); the next live Rollout takes it.

Each write is conditional on the metadata.resourceVersion its decision read: of two writers deciding on the
same reading, the second gets 409 Conflict and replays its step from the persisted status.
Local mode has no route: each live Rollout plays its own simulated users (platform/local.py), so nothing is
shared and nothing waits.
"""

from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping

from cambrian.operator.reconcile.actions import ArmWeight
from cambrian.operator.reconcile.observations import RouteObservation

HELD = "RouteHeld"  # a Rollout's condition, only under spec.serving.httpRoute
WAITING = "WaitingForRoute"

Backends = tuple[tuple[str, int, int], ...]


def port(serving: Mapping[str, Any]) -> int:
    """The port of the Services in the route's backendRefs."""
    return int((serving.get("httpRoute") or {}).get("port", serving.get("port", 8080)))


def backends(weights: Iterable[ArmWeight], serving: Mapping[str, Any]) -> Backends:
    """(Service, port, weight) of each arm, as the route's backendRefs list them."""
    p = port(serving)
    return tuple((w.service, p, w.weight) for w in weights)


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
