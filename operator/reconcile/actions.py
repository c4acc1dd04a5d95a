"""Actions: what the pure core asks a platform adapter to do. Small, frozen, comparable values.

Every action that creates something carries a deterministic name, so applying it twice (after a
crash between "apply" and "persist status") finds the object already there instead of duplicating it.
Adapters must treat "already exists" on create and "not found" on delete as success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Owner:
    kind: str
    name: str
    uid: str
    namespace: str | None = None


@dataclass(frozen=True)
class CreateTrainingJob:
    """Train Φ = baseline (+ delta) on the evolution's data; write metrics and a bundle under `bundle_path`."""

    name: str
    owner: Owner
    hypothesis: str | None  # None for the evolution's baseline run
    attempt: int
    baseline: dict[str, Any] = field(hash=False, compare=True)
    delta: dict[str, Any] | None = field(default=None, hash=False)  # trainer Delta JSON (component, patch, code)
    training: dict[str, Any] = field(default_factory=dict, hash=False)  # api.Training, wire form
    data: dict[str, Any] = field(default_factory=dict, hash=False)  # api.Data, wire form
    storage_claim: str | None = None
    bundle_path: str = ""  # path relative to the storage root
    # a first look (reconcile/fidelity.py): {epochFraction, sampleFraction} for the trainer's --fidelity; None: full
    fidelity: dict[str, float] | None = field(default=None, hash=False)
    # spec.data.source: the Evolution's one snapshot, relative to its storage (common.data_snapshot); None otherwise
    data_snapshot: str | None = None


@dataclass(frozen=True)
class DeleteJob:
    name: str
    owner: Owner


@dataclass(frozen=True)
class DeployArm:
    """One serving Deployment + Service for an arm (`name` is both), serving `bundle`."""

    name: str
    owner: Owner
    rollout: str
    arm: str
    bundle: str
    serving: dict[str, Any] = field(default_factory=dict, hash=False)  # api.Serving, wire form
    storage_claim: str | None = None


@dataclass(frozen=True)
class DeleteArm:
    name: str
    owner: Owner
    rollout: str
    arm: str


@dataclass(frozen=True)
class ArmWeight:
    arm: str
    service: str
    weight: int


# On spec.serving.httpRoute: the Rollout whose router it carries (reconcile/httproute.py); absent: the champion's
A_ROUTE_HOLDER = "cambrian.dev/route-holder"


@dataclass(frozen=True)
class SetWeights:
    """Point the router at the arms with these percentages; with `route_version`, spec.serving.httpRoute too:
    its backends become `route` (the rollout's router Service, reconcile/httproute.py), held for this rollout
    (annotation A_ROUTE_HOLDER), written only if the route is still at that metadata.resourceVersion
    ("" : unconditionally; None: the route is left alone)."""

    owner: Owner
    rollout: str
    salt: str
    weights: tuple[ArmWeight, ...]
    serving: dict[str, Any] = field(default_factory=dict, hash=False)
    phase: int = 0  # weights_phase: the router stamps it on exposures (online/aggregate.py)
    route_version: str | None = None
    route: tuple[tuple[str, int, int], ...] = ()  # (Service, port, weight) of each of its forwarding rules' backendRefs

    def as_dict(self) -> dict[str, int]:
        return {w.arm: w.weight for w in self.weights}


@dataclass(frozen=True)
class ClearWeights:
    """Remove the rollout's entry from the router once no traffic depends on it."""

    owner: Owner
    rollout: str
    serving: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class CreateRollout:
    name: str
    owner: Owner
    spec: dict[str, Any] = field(hash=False)  # api.RolloutSpec, wire form
    hypothesis: str = ""
    annotations: tuple[tuple[str, str], ...] = ()  # e.g. the surrogate's prediction (views.A_PREDICTED)


# A human decision on a Rollout: promote (honoured only while it awaits approval) or rollback (at any time)
A_APPROVE = "cambrian.dev/approve"
# On a Rollout its Evolution retired: why (the platforms set it beside cambrian.dev/approve: rollback, which does it)
A_RETIRED = "cambrian.dev/retired"


@dataclass(frozen=True)
class RetireRollout:
    """End a live experiment whose hypothesis dropped out of the Online Agent's top K (rolled back to control)."""

    name: str
    owner: Owner
    reason: str = ""


# What an Evolution did with a child, carried by the child for good (Mark), so that the Evolution's status only
# remembers what is on its way: on a concluded Rollout, that its decision was applied and what it made of it
# (APPLIED_*); on a failed Hypothesis, the wake-up that asked the proposer to repair it.
A_APPLIED = "cambrian.dev/decision-applied"
APPLIED_FINAL, APPLIED_SUPERSEDED = "final", "superseded"  # superseded: it decided nothing about its treatment
A_REPAIR_ASKED = "cambrian.dev/repair-asked"
# On a Hypothesis: the spend its Evolution's ledger holds of it, as JSON {"evolution": uid, "tokens", "dollars",
# "gpuHours", "evaluations"} (reconcile/ledger.py): what it spent beyond that is still to count.
A_SPEND_COUNTED = "cambrian.dev/spend-counted"
# On a concluded Rollout, by its Evolution: production no longer reaches its arms (champion.release), so its
# Rollout removes them and its router entry. Without it (no Evolution) the arms it kept serve on, until deleted.
A_RELEASED = "cambrian.dev/released"


@dataclass(frozen=True)
class Mark:
    """Annotate the Evolution's child `kind`/`name` with `annotation: value` (idempotent; a deleted child is left).
    `value` None removes the annotation (a Rollout clearing an approval given before there was anything to approve;
    `owner` is then the Rollout itself)."""

    kind: str  # Rollout or Hypothesis
    name: str
    owner: Owner
    annotation: str
    value: str | None


@dataclass(frozen=True)
class ProposeHypotheses:
    """Wake the offline agent: it creates Hypothesis objects named `{name_prefix}-{i}` (i = 0..count-1),
    the repairs of `repairs` among them (spec.origin.repairOf names the failed one).
    `allocation`: what each persona is asked for, (persona, ((category, n), ...)), the core's schedule
    (reconcile/scheduling.py); `order`: the persona of each proposal in naming (= training) order. Empty
    (an action from before scheduling): every persona of `personas` is asked for `quotas`, in that order."""

    owner: Owner
    wakeup: int
    name_prefix: str
    quotas: tuple[tuple[str, int], ...]
    personas: tuple[str, ...]
    evolution_spec: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # wire form
    baseline: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # Φ the deltas apply to
    repairs: tuple[str, ...] = ()  # failed Hypotheses to send back to the proposer with their error, once each
    allocation: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    order: tuple[str, ...] = ()
    # LLM spend so far (the core's Spend, with what wake-ups without Hypotheses spent): the proposer stops
    # asking within the wake-up once the token or dollar budget is reached
    tokens_spent: int = 0
    dollars_spent: float = 0.0
    charged_through: int = 0  # the last wake-up whose spend the Evolution carries itself (views.A_UNATTRIBUTED)

    def asks(self) -> tuple[tuple[str, dict[str, int]], ...]:
        """(persona, category quotas) to ask, in priority order."""
        if self.allocation:
            return tuple((p, dict(q)) for p, q in self.allocation)
        return tuple((p, dict(self.quotas)) for p in self.personas)


@dataclass(frozen=True)
class UpdateChampion:
    """Make the Evolution's production model server (`name`: Deployment and Service, or a local process)
    serve `bundle`: created if missing, else a rolling update that keeps the old pods serving until new
    ones are ready. `revision` is a digest of what is served; the platform reports it back
    (ChampionObservation) so the core updates only when it differs."""

    owner: Owner
    name: str
    champion: str  # baseline, or the promoted hypothesis
    bundle: str
    hypothesis: str | None
    rollout: str | None
    revision: str = ""
    serving: dict[str, Any] = field(default_factory=dict, hash=False)  # api.Serving, wire form


@dataclass(frozen=True)
class RouteChampion:
    """Make spec.serving.httpRoute send all its traffic to the champion's Service `service` and hold it for
    nobody (the route's default while no live rollout holds it); written only if the route is still at
    metadata.resourceVersion `route_version` ("": unconditionally)."""

    owner: Owner
    service: str
    serving: dict[str, Any] = field(default_factory=dict, hash=False)
    route_version: str = ""


@dataclass(frozen=True)
class RecordJournal:
    """An entry for the journal and for Kubernetes events: what happened to whom, and why."""

    owner: Owner
    event: str  # e.g. Validated, TrainingStarted, Scored, Failed, Promoted
    message: str
    data: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    warning: bool = False


Action = (
    CreateTrainingJob
    | DeleteJob
    | DeployArm
    | DeleteArm
    | SetWeights
    | ClearWeights
    | CreateRollout
    | RetireRollout
    | Mark
    | ProposeHypotheses
    | UpdateChampion
    | RouteChampion
    | RecordJournal
)
