"""The narrow interface between the pure reconcile core and the world it acts on.

Two implementations: `kubernetes.KubernetesPlatform` (Jobs, Deployments, ConfigMaps, HTTPRoutes,
the Prometheus HTTP API) and the local driver's (processes, local servers, a Prometheus process).
The core never calls a platform; `apply_actions` feeds it the core's actions, and the handler or
driver gathers observations through the read methods before calling the core.

Rules every implementation keeps:
- creates are idempotent by name: "already exists" is success (names are deterministic);
- deletes are idempotent: "not found" is success;
- reads never raise for a missing object: they return None / leave it out;
- `prometheus_readout` raises MetricsUnavailable when Prometheus cannot answer, and the caller
  then passes analysis=None to the core (which decides nothing);
- a create or change the platform refuses for good raises ActionRefused(permanent=True) (see
  `refusal_is_permanent`); one that may pass later without a spec change raises it with
  permanent=False; anything else (network, 5xx) raises as it is and is retried;
- observations say why a child cannot start when the platform can tell (JobObservation.blocked,
  ArmObservation.blocked); None when it cannot tell.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from cambrian.errors import CambrianError
from cambrian.operator.reconcile.actions import (
    Action,
    ClearWeights,
    CreateRollout,
    CreateTrainingJob,
    DeleteArm,
    RetireRollout,
    Mark,
    DeleteJob,
    DeployArm,
    Owner,
    ProposeHypotheses,
    RecordJournal,
    SetWeights,
    RouteChampion,
    UpdateChampion,
)
from cambrian.operator.reconcile.observations import (ArmObservation, ChampionObservation, JobObservation,
                                                      RouteObservation)

if TYPE_CHECKING:
    from cambrian.online.prometheus import PromClient


class MetricsUnavailable(CambrianError):
    """Prometheus (or the local metrics store) did not answer: make no decision."""


class MetricQueryRefused(CambrianError):
    """Prometheus' parser refused a PromQL template of the spec: a definition error, not an outage."""


class ActionRefused(CambrianError):
    """The platform refused to create or change a child (the API server's 4xx, a local check).

    `permanent`: the same spec can only be refused again (an invalid field, a name or label the API
    does not accept); the caller marks the parent Failed until its spec changes. Otherwise the refusal
    depends on something outside the spec (RBAC, a quota, a missing HTTPRoute): the parent says so
    and the next reconcile tries again."""

    def __init__(self, what: str, message: str, permanent: bool, code: int | None = None,
                 namespace_terminating: bool = False):
        super().__init__(f"{what} was refused: {message}")
        self.what, self.detail, self.permanent, self.code = what, message, permanent, code
        # The namespace is being deleted: the object goes with it, there is nothing to report or retry.
        self.namespace_terminating = namespace_terminating


def refusal_is_permanent(http_status: int) -> bool:
    """An HTTP refusal that only a different request can cure: 400 Bad Request, 422 Invalid, 413, ...
    Not: 404 (not there yet), 408/429 (timeouts, throttling), 409 (exists: names are deterministic,
    or a write conflict), 403 (RBAC or a ResourceQuota: can change without the spec changing)."""
    return 400 <= http_status < 500 and http_status not in (403, 404, 408, 409, 429)


class Readout(Protocol):
    """Per-arm sums of one experiment at one instant (cambrian.online.prometheus.ExperimentReadout)."""

    stats: Mapping[str, Mapping[str, Any]]
    exposures: Mapping[str, int]
    cohorts: Mapping[int, Mapping[str, int]]
    values: Mapping[str, Mapping[str, float]]  # arm -> guardrail -> the value of its PromQL query


@runtime_checkable
class Platform(Protocol):
    # --- training ---------------------------------------------------------------------------
    def submit_training_job(self, action: CreateTrainingJob) -> None:
        """Start `cambrian train` for Φ = baseline + delta; idempotent by action.name."""

    def training_jobs(self, owner: Owner) -> list[JobObservation]:
        """Every training run owned by `owner`, with state, exit code/reason and (on success) metrics."""

    def delete_job(self, action: DeleteJob) -> None: ...

    # --- serving ----------------------------------------------------------------------------
    def deploy_arm(self, action: DeployArm) -> None:
        """A model server for one arm (Deployment + Service, or a local process); idempotent."""

    def arms(self, owner: Owner) -> dict[str, ArmObservation]:
        """The rollout's arms by arm name: exists, ready."""

    def delete_arm(self, action: DeleteArm) -> None: ...

    def set_weights(self, action: SetWeights) -> None:
        """Make the router send each arm its percentage (user-sticky by hash(user, salt))."""

    def clear_weights(self, action: ClearWeights) -> None: ...

    def router_weights(self, owner: Owner, serving: Mapping[str, Any]) -> dict[str, int] | None:
        """What the router has now for this rollout (None: no entry)."""

    def router_ready(self, owner: Owner) -> bool:
        """The rollout's router has a ready pod (spec.serving.httpRoute goes to it only then)."""

    def http_route(self, owner: Owner, serving: Mapping[str, Any]) -> RouteObservation | None:
        """serving.httpRoute as it is now: its holder, backends and version (reconcile/httproute.py); None on a
        platform without routes. A route that cannot be read is one held by nobody at version "", so that
        the write the core then asks for reports why."""

    def router_services(self, owner: Owner, serving: Mapping[str, Any]) -> dict[str, str] | None:
        """Arm -> the Service (SetWeights' ArmWeight.service) whose model the router serves that arm's users now
        (None: no entry)."""

    # --- metrics ----------------------------------------------------------------------------
    def prometheus_readout(self, rollout: str, gauges: Mapping[str, Mapping[str, str]] | None = None) -> Readout:
        """Per-arm sufficient statistics of the experiment, and in `values` the value of each arm's PromQL over
        the user's own series (`gauges`: arm -> key -> PromQL, from reconcile.promql.queries; a query without
        exactly one finite value has none); raises MetricsUnavailable, or MetricQueryRefused for a query
        Prometheus' parser refuses."""

    def check_promql(self, rollout: str, queries: Mapping[str, str]) -> None:
        """Have the Prometheus that will run them parse `queries` (where in the spec -> PromQL); raises
        MetricQueryRefused naming the first it refuses, MetricsUnavailable when it cannot be asked."""

    # --- the loop ---------------------------------------------------------------------------
    def create_rollout(self, action: CreateRollout) -> None: ...

    def retire_rollout(self, action: RetireRollout) -> None:
        """Roll a live Rollout back (every user to control, treatment arms removed); idempotent."""

    def mark(self, action: Mark) -> None:
        """Annotate a child with what its Evolution did with it (actions.Mark)."""

    def update_champion(self, action: UpdateChampion) -> None:
        """Create the Evolution's production model server for action.bundle, or switch it there with a
        rolling update (the old servers keep serving until new ones are ready); idempotent."""

    def champion_serving(self, owner: Owner, serving: Mapping[str, Any]) -> ChampionObservation | None:
        """The Evolution's production model server (None: there is none), and whether serving's
        httpRoute sends everything to it (`routed`)."""

    def route_champion(self, action: RouteChampion) -> None:
        """Point serving.httpRoute at the champion's Service alone (its default between rollouts)."""

    def propose(self, action: ProposeHypotheses) -> None:
        """Run the offline agent once; it creates Hypotheses named `{prefix}-{i}` (idempotent)."""

    def record(self, action: RecordJournal) -> None:
        """Journal entry and a user-visible event (Kubernetes Event / log line)."""


def apply_actions(platform: Platform, actions: Iterable[Action]) -> None:
    """Apply in order. An exception stops the rest: the caller must not persist the new status then,
    so the next reconcile replays from the old one (deterministic names make that safe).
    Journal entries (events) go last, once everything else was applied: a reconcile that is refused
    or retried reports what happened once, not each time it is replayed."""
    actions = list(actions)
    journal = [x for x in actions if isinstance(x, RecordJournal)]
    record_step = getattr(type(platform), "record_step", None)  # the platform's own way to record a step's entries
    for a in [*[x for x in actions if not isinstance(x, RecordJournal)], *([] if record_step else journal)]:
        if isinstance(a, CreateTrainingJob):
            platform.submit_training_job(a)
        elif isinstance(a, DeleteJob):
            platform.delete_job(a)
        elif isinstance(a, DeployArm):
            platform.deploy_arm(a)
        elif isinstance(a, DeleteArm):
            platform.delete_arm(a)
        elif isinstance(a, SetWeights):
            platform.set_weights(a)
        elif isinstance(a, ClearWeights):
            platform.clear_weights(a)
        elif isinstance(a, CreateRollout):
            platform.create_rollout(a)
        elif isinstance(a, RetireRollout):
            platform.retire_rollout(a)
        elif isinstance(a, Mark):
            platform.mark(a)
        elif isinstance(a, UpdateChampion):
            platform.update_champion(a)
        elif isinstance(a, RouteChampion):
            platform.route_champion(a)
        elif isinstance(a, ProposeHypotheses):
            platform.propose(a)
        elif isinstance(a, RecordJournal):
            platform.record(a)
        else:  # pragma: no cover - a new action type without an adapter method
            raise TypeError(f"no platform method for {type(a).__name__}")
    if record_step and journal:
        record_step(platform, journal)


def read_gauges(client, promql_url: str | None, gauges: Mapping[str, Mapping[str, str]] | None, at: float,
                timeout: float = 5.0) -> dict[str, dict[str, float]]:
    """Both platforms' PromQL statistics and guardrail queries: from the user's own Prometheus when the operator
    is configured with one (prometheus.promqlUrl), else from the experiment's (`client`)."""
    from cambrian.online.prometheus import PromClient

    if not gauges:
        return {}
    if not promql_url:
        return client.gauges(gauges, at=at)
    own = PromClient(promql_url, timeout)
    try:
        return own.gauges(gauges, at=at)
    finally:
        own.close()


@contextmanager
def prometheus(url: str, timeout: float = 5.0) -> Iterator["PromClient"]:
    """A client of the Prometheus at `url` whose failures are the platforms' errors (a query it refuses:
    MetricQueryRefused; one it cannot answer: MetricsUnavailable), closed after; both platforms read through it."""
    from cambrian.online.prometheus import PromClient, PrometheusUnavailable, PromQLRejected

    client = PromClient(url, timeout)
    try:
        yield client
    except PromQLRejected as exc:
        raise MetricQueryRefused(str(exc)) from None
    except PrometheusUnavailable as exc:
        raise MetricsUnavailable(str(exc)) from None
    finally:
        client.close()


def check_queries(url: str, queries: Mapping[str, str], timeout: float = 5.0) -> None:
    """Both platforms' check_promql: each query parsed by the Prometheus at `url`, which runs them later."""
    from cambrian.online.prometheus import PromQLRejected

    with prometheus(url, timeout) as client:
        for where, expr in queries.items():
            try:
                client.check(expr)
            except PromQLRejected as exc:
                raise MetricQueryRefused(f"spec.{where}: Prometheus refuses the query: {exc}") from None
