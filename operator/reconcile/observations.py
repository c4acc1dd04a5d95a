"""Observations: the actual state a reconcile sees, as plain data gathered by a platform adapter.

Nothing here performs I/O; adapters fill these from the API server, pods and Prometheus (cluster)
or from processes and local servers (local driver).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

JobState = Literal["Pending", "Suspended", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobObservation:
    """A training run as seen by the platform. `metrics` is the trainer's metrics.json (on success)."""

    name: str
    state: JobState
    exit_code: int | None = None
    reason: str | None = None  # pod/container reason: OOMKilled, DeadlineExceeded, Error, Evicted, ...
    message: str | None = None  # error.json reason (trainer) or the pod's message
    stage: str | None = None  # error.json stage (parse, static, reward_sql, forward_backward, training)
    metrics: dict[str, Any] | None = None
    bundle_uri: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Why a Pending/Suspended run cannot start, when the platform can tell: a missing PriorityClass,
    # PVC or Kueue queue, no node matching the selector, an image that cannot be pulled.
    blocked: str | None = None
    reused: str | None = None  # a baseline run not trained again: its key in the run store (trainer/runstore.py)


@dataclass(frozen=True)
class ArmObservation:
    name: str  # the Deployment/Service name
    exists: bool
    ready: bool
    blocked: str | None = None  # why an arm that is not ready cannot become ready (as JobObservation.blocked)


@dataclass(frozen=True)
class RouteObservation:
    """spec.serving.httpRoute as read from the cluster (reconcile/httproute.py says who may write it)."""

    holder: str | None  # the Rollout whose router it carries (annotation actions.A_ROUTE_HOLDER); None: nobody's
    # (Service, port, weight) of its forwarding rules' backendRefs, in order: those of one rule when every
    # forwarding rule has the same (as Cambrian writes them), else all of them one after the other
    backends: tuple[tuple[str, int, int], ...] = ()
    # metadata.resourceVersion: a write decided on this reading is sent with it, so it fails (409) if another
    # writer changed the route since; "" when it could not be read (the write then reports why)
    version: str = ""


@dataclass(frozen=True)
class ChampionObservation:
    """The Evolution's production model server as the platform sees it."""

    name: str  # the Deployment/Service (or local process) name
    revision: str | None  # what it was last told to serve (UpdateChampion.revision); None: unknown
    bundle: str | None
    ready: bool  # every replica serves `revision` (a rolling update has finished)
    blocked: str | None = None  # why it cannot become ready, when the platform can tell
    # spec.serving.httpRoute sends all its traffic to this server's Service; None: no route, or unknown
    routed: bool | None = None
    route: RouteObservation | None = None  # that route, when it was read


@dataclass(frozen=True)
class Effect:
    arm: str
    metric: str
    estimate: float
    ci_low: float
    ci_high: float
    relative: bool = False
    p_value: float | None = None
    planned_effect: float | None = None     # stats.ArmDecision's, group-sequential designs only


@dataclass(frozen=True)
class Analysis:
    """One readout of a rollout from Prometheus plus the statistics package's decision.

    `outcome` is promote | rollback | continue | inconclusive; `winner` the arm to promote.
    An adapter that cannot reach Prometheus passes analysis=None: the core then decides nothing.
    """

    outcome: str
    reason: str
    n: dict[str, int] = field(default_factory=dict)
    winner: str | None = None
    effects: tuple[Effect, ...] = ()
    srm_p_value: float | None = None
    srm_mismatch: bool = False
    state: dict[str, Any] | None = None  # the statistics package's running test state, kept in status
    guardrails: tuple[tuple[str, str, bool], ...] = ()  # (arm, metric, breached) at this readout
    # the statistics package's per-arm decision (effect, interval, guardrail estimates), JSON-safe: for reports
    detail: dict[str, Any] | None = None
    # (treatment arm, its own outcome, why): A/B/n arms can differ from `outcome` (one harmful, one inconclusive)
    arm_outcomes: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class RolloutObservation:
    arms: dict[str, ArmObservation] = field(default_factory=dict)  # by arm name
    weights: dict[str, int] | None = None  # what the router currently has for this rollout (None = no entry)
    analysis: Analysis | None = None  # only looked at when a readout is due (see rollout.readout_due)
    approval: str | None = None  # cambrian.dev/approve annotation: promote | rollback
    retired: str | None = None  # actions.A_RETIRED: the rollback is its Evolution's, and why
    released: str | None = None  # actions.A_RELEASED: concluded, and production no longer reaches its arms
    unavailable: str | None = None  # why a due readout gave no analysis (Prometheus or the warehouse said so)
    refused: str | None = None  # the Prometheus that runs them refuses a PromQL template of this spec generation
    route: RouteObservation | None = None  # spec.serving.httpRoute; None without one (or on a platform without routes)
    router_ready: bool = False  # its router has a ready pod (the route goes to it then); read only with a route
    # arm -> the Service (rollout.arm_name) the router sends that arm's users to: a stopped A/B/n arm's is control's
    # (None = no entry, or not known: the core then takes every arm to be served by its own)
    services: dict[str, str] | None = None


@dataclass(frozen=True)
class RolloutView:
    """A rollout as seen by its Hypotheses and its Evolution."""

    name: str
    phase: str | None
    hypotheses: tuple[str, ...] = ()  # treatment hypotheses
    decision: str | None = None
    winner_hypothesis: str | None = None
    winner_bundle: str | None = None
    reason: str | None = None
    effects: tuple[dict[str, Any], ...] = ()  # status.effects: one per (treatment arm, metric)
    arms: tuple[tuple[str, str], ...] = ()  # (treatment hypothesis, its arm's name)
    control_bundle: str | None = None  # what its control arm serves: the champion's bundle when it started
    retired: str | None = None  # why its Evolution ended it (status.retired), when that, not a decision, ended it
    applied: str | None = None  # actions.A_APPLIED: its Evolution applied its decision (final or superseded)
    released: str | None = None  # actions.A_RELEASED: its Evolution released its arms
    started_at: datetime | None = None  # when its ramp started (status.startedAt)
    outcomes: tuple[tuple[str, str, str], ...] = ()  # (treatment arm, its own outcome, why): status.arms

    def arm_of(self, hypothesis: str) -> str | None:
        return next((arm for h, arm in self.arms if h == hypothesis), None)

    def effects_of(self, hypothesis: str | None) -> tuple[dict[str, Any], ...]:
        """The effects its own arm measured (one per metric): in an A/B/n Rollout the others are its siblings'."""
        if hypothesis not in self.hypotheses:
            return ()
        if len(self.hypotheses) == 1:  # its only treatment: every effect is its arm's
            return self.effects
        arm = self.arm_of(hypothesis)
        return tuple(e for e in self.effects if e.get("arm") == arm)

    def outcome_of(self, hypothesis: str) -> tuple[str | None, str | None]:
        """(decision, reason) of this hypothesis's own arm; the Rollout's when its status has no per-arm outcome
        (concluded before arms had one)."""
        arm = self.arm_of(hypothesis)
        return next(((o, why) for a, o, why in self.outcomes if a == arm), (self.decision, self.reason))

    @property
    def concluded(self) -> bool:
        return self.phase in ("Promoted", "RolledBack", "Inconclusive", "Failed")


@dataclass(frozen=True)
class Spend:
    tokens: int = 0
    dollars: float = 0.0
    gpu_hours: float = 0.0
    evaluations: int = 0


@dataclass(frozen=True)
class HypothesisView:
    name: str
    phase: str | None
    component: str
    offline_metric: str | None = None
    offline_score: float | None = None
    bundle_uri: str | None = None
    attempts: int = 0
    created: str = ""  # creation timestamp, for a stable order
    delta: dict[str, Any] | None = None  # trainer Delta JSON (component, patch, code)
    verdict: str | None = None  # better | promising | not_better against the noise floor (stats/noise.py)
    failure_stage: str | None = None  # where a Failed hypothesis failed (parse, static, training, ...)
    repair_of: str | None = None  # the failed hypothesis this one repairs
    persona: str | None = None  # spec.origin.persona: who proposed it (None: a human, or not recorded)
    gain: float | None = None  # offline gain over the champion as judged (status.gain), positive when better
    noise_floor: float | None = None  # the gain a real improvement must exceed (status.noiseFloor)
    evaluations: int = 0  # training runs it cost: attempts, confirmations and their retries
    confirmations: int = 0  # confirmation seeds started (status.confirmations)
    wakeup: int | None = None  # spec.origin.wakeup: the Evolution's wake-up that proposed it (None: a human)
    baseline: dict[str, Any] | None = None  # status.baseline: the champion's Φ it was validated against (and trained)
    undecided_tests: tuple[str, ...] = ()  # status.undecidedTests: its rollouts that decided nothing about it
    repair_asked: str | None = None  # actions.A_REPAIR_ASKED: its Evolution asked the proposer to repair it
    proxy_metrics: Mapping[str, Any] | None = None  # status.proxyMetrics: its offline metrics over its seeds
    spent: Spend = Spend()  # what it cost: its wake-up's LLM spend (if it carries it), GPU hours, evaluations
    # actions.A_SPEND_COUNTED: (the Evolution's uid, the spend its ledger holds of it) (reconcile/ledger.py)
    counted: tuple[str, Spend] | None = None


@dataclass(frozen=True)
class TopK:
    """The Online Agent's choice at a review: hypotheses to start (best first) and live ones to retire."""

    start: tuple[str, ...] = ()
    retire: tuple[str, ...] = ()
    ranked_by: str = "builtin"
    note: str = ""
    # the surrogate's predicted online effect of each candidate it ranked: (hypothesis, mean, sd)
    predictions: tuple[tuple[str, float, float], ...] = ()

    def predicted(self, hypothesis: str) -> tuple[float, float] | None:
        return next(((m, s) for h, m, s in self.predictions if h == hypothesis), None)
