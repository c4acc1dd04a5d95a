"""The launched champion serves, pure: which bundle URIs a model server can load, the Evolution's
production model server (kept on the current champion's bundle), and the gate that keeps a Rollout
from starting with a bundle no arm could load.

Level-based: every reconcile compares what the platform reports serving (ChampionObservation.revision)
with what the status' champion asks for, and issues one UpdateChampion when they differ (a missing
server, a new champion, a changed serving spec). Switching is the platform's rolling update: new
servers become ready before old ones stop, so production never has no model.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Callable, Collection, Iterable, Sequence, TypeVar

from cambrian.operator.api import EvolutionSpec, EvolutionStatus
from cambrian.operator.reconcile import httproute as HR
from cambrian.operator.reconcile.actions import A_RELEASED, Mark, Owner, RouteChampion, UpdateChampion
from cambrian.operator.reconcile.common import child_name, set_condition
from cambrian.operator.reconcile.observations import ChampionObservation, RolloutView

SERVING = "ChampionServing"  # condition: the production model server serves the champion
ROLLOUTS = "RolloutsServable"  # condition: the bundles a rollout would serve can be loaded
NOT_SERVABLE = "BundleNotServable"
# Schemes a model server can load: a claim the pod mounts, or a path (file:// or none) in its image or host.
SERVABLE_SCHEMES = ("pvc://", "file://")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Journal = Callable[..., None]
T = TypeVar("T")


def unservable(uri: str | None) -> str | None:
    """Why no model server can load `uri`; None when one can."""
    if not uri or "://" not in uri or uri.startswith(SERVABLE_SCHEMES):
        return None
    if uri.startswith("job://"):
        return (f"bundle {uri} lives only in its training Job's pod, which no model server can read; "
                "set spec.storage.claimName so that bundles are kept on a volume the servers mount")
    return f"bundle {uri}: scheme {uri.split('://', 1)[0]}:// cannot be served (pvc:// or file:// only)"


def first_unservable(uris: Iterable[str | None]) -> str | None:
    return next((why for why in map(unservable, uris) if why), None)


def serving_name(name: str, uid: str) -> str:
    """Deployment and Service of the Evolution's champion: `<evolution>-champion` (a stable address for
    production traffic), or a hashed name when that is no valid Service name."""
    readable = f"{name}-champion"
    return readable if len(readable) <= 63 and _DNS_1035.match(readable) else child_name(name, uid, "champion")


def revision(bundle: str, serving: dict[str, Any]) -> str:
    """Digest of what the production server runs: the bundle and the serving settings a pod depends on
    (a collector URL or an HTTPRoute change does not restart it)."""
    keep = {k: serving.get(k) for k in ("image", "replicas", "port")}
    return hashlib.sha256(json.dumps([bundle, keep], sort_keys=True).encode()).hexdigest()[:16]


def serve(owner: Owner, spec: EvolutionSpec, st: EvolutionStatus, seen: ChampionObservation | None,
          now: datetime, generation: int | None, journal: Journal) -> list[UpdateChampion]:
    """Keep the production server on `st.champion` (mutates st's conditions; journals transitions)."""
    c = st.champion
    if not c.bundle:
        return []

    def cond(ok: bool, reason: str, message: str) -> None:
        before = next((x for x in st.conditions if x.type == SERVING), None)
        if before is None or (before.reason, before.message) != (reason, message):
            if not ok and reason in (NOT_SERVABLE, "Blocked"):
                journal(reason, message, warning=True)
        st.conditions = set_condition(st.conditions, SERVING, ok, reason, message, now, generation)

    why = unservable(c.bundle)
    if why:
        cond(False, NOT_SERVABLE, f"champion {c.name}: {why}")
        return []
    serving = spec.serving.wire()
    name = serving_name(owner.name, owner.uid)
    want = revision(c.bundle, serving)
    if seen is None or seen.revision != want:
        cond(False, "Updating", f"{name}: switching to {c.name} ({c.bundle})")
        return [UpdateChampion(owner, name, c.name or "", c.bundle, c.hypothesis, c.rollout, want, serving)]
    if seen.ready:
        cond(True, "Serving", f"{name} serves {c.name} ({c.bundle})")
    elif seen.blocked:
        cond(False, "Blocked", f"{name}: {seen.blocked}")
    else:
        cond(False, "Updating", f"{name}: switching to {c.name} ({c.bundle})")
    return []


def route(owner: Owner, spec: EvolutionSpec, st: EvolutionStatus, seen: ChampionObservation | None,
          live: Collection[str], journal: Journal) -> list[RouteChampion]:
    """spec.serving.httpRoute's default: while no live rollout of the Evolution (`live`: their names) holds
    the route (httproute.py), all traffic goes to the champion's Service, once it serves the current champion
    (after a promotion the route keeps the winner's arm until then)."""
    if spec.serving.http_route is None or seen is None or not st.champion.bundle:
        return []
    if not HR.champion_takes(seen.route, seen.routed, live):
        return []
    if not seen.ready or seen.revision != revision(st.champion.bundle, spec.serving.wire()):
        return []
    route_name = spec.serving.http_route.name
    was = f" (rollout {seen.route.holder} held it)" if seen.route is not None and seen.route.holder else ""
    journal("Routed", f"HTTPRoute {route_name}: all traffic to {seen.name} ({st.champion.name}){was}")
    return [RouteChampion(owner, seen.name, spec.serving.wire(), seen.route.version if seen.route else "")]


def release(owner: Owner, spec: EvolutionSpec, st: EvolutionStatus, seen: ChampionObservation | None,
            rollouts: Sequence[RolloutView]) -> list[Mark]:
    """Concluded Rollouts whose arms production no longer reaches: their decision is applied (marked), the
    champion's own server is ready on the current champion (after a launch, once the rolling update is done), and
    spec.serving.httpRoute, if any, sends everything to it (`routed` not False: no route, or none to look at).
    Until then a concluded Rollout keeps its control (and a winner's) arm and router entry, which may still serve;
    marked A_RELEASED, its own step removes them (rollout.reconcile)."""
    if seen is None or not seen.ready or seen.routed is False or not st.champion.bundle:
        return []
    if seen.revision != revision(st.champion.bundle, spec.serving.wire()):
        return []
    return [Mark("Rollout", r.name, owner, A_RELEASED, st.champion.name or "champion")
            for r in sorted(rollouts, key=lambda r: r.name) if r.concluded and r.applied and not r.released]


def gate_rollouts(st: EvolutionStatus, candidates: Sequence[T], bundle_of: Callable[[T], str | None],
                  now: datetime, generation: int | None, journal: Journal) -> list[T]:
    """The candidates a rollout may start for: its control serves the champion's bundle and its treatment
    the candidate's, and both must be loadable. The others are left out and the reason goes in the
    condition and in one Warning event per distinct reason; nothing is retried until something changes
    (a new champion, a newly scored hypothesis, a spec edit that sets a claim)."""
    champion = unservable(st.champion.bundle)
    if champion:
        ok, why = [], f"no Rollout is started: {champion}" if candidates else None
    else:
        ok = [c for c in candidates if not unservable(bundle_of(c))]
        left = [f"{getattr(c, 'name', c)}: {unservable(bundle_of(c))}" for c in candidates if unservable(bundle_of(c))]
        why = f"no Rollout is started for {'; '.join(left)}" if left else None
    before = next((x for x in st.conditions if x.type == ROLLOUTS), None)
    if why is None:
        if before is not None and before.status != "True" and not champion:
            st.conditions = set_condition(st.conditions, ROLLOUTS, True, "Servable", "", now, generation)
        return ok
    if before is None or before.message != why[:32768]:
        journal(NOT_SERVABLE, why[:1024], warning=True)
    st.conditions = set_condition(st.conditions, ROLLOUTS, False, NOT_SERVABLE, why, now, generation)
    return ok
