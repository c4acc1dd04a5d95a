"""The custom resources of cluster mode as pydantic models: Evolution, Hypothesis, Rollout.

These models are the single source of the CRD schemas: `cambrian.operator.crdgen` turns them into
crds/*.yaml (structural OpenAPI v3 plus the CEL rules attached below), and a test checks that the
committed YAML is what the models generate. Every CEL rule has a Python twin in a validator here,
so the local driver (no API server) rejects the same specs with the same messages.

Field names are camelCase on the wire (Kubernetes style) and snake_case in Python.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from cambrian.errors import ConfigError

GROUP = "cambrian.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Component = Literal["optimizer", "architecture", "reward", "training"]
Direction = Literal["maximize", "minimize"]
Quota = Literal["explore", "exploit", "innovate"]
HypothesisPhase = Literal[
    "Proposed", "Validated", "Training", "Scored", "Live", "Launched", "Retired", "Failed", "Rejected"
]
RolloutPhase = Literal[
    "Pending", "Deploying", "Running", "AwaitingApproval", "Promoted", "RolledBack", "Inconclusive", "Failed"
]
EvolutionPhase = Literal["Running", "BudgetExhausted", "Failed"]
Outcome = Literal["promote", "rollback", "continue", "inconclusive"]

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A duration of at least one second (a non-zero s/m/h/d part): a 0s cadence would wake on every tick.
POSITIVE_DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))*0*[1-9][0-9]*(s|m|h|d)([0-9]+(ms|s|m|h|d))*$"
# A Kubernetes resource quantity without sign (the API server refuses negative requests): 2, 500m, 8Gi, 1.5e3.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
# Prometheus metric names: they are put into PromQL queries and label matchers as they are.
METRIC_NAME_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"


def duration_seconds(text: str) -> float:
    """'1h30m' -> 5400.0. Go-style units plus d (days), as in the CRD pattern."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h30m or 7d")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)))


def cel(rule: str, message: str, reason: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if reason:
        out["reason"] = reason
    return out


def _x(
    rules: list[dict] | None = None,
    *,
    list_type: str | None = None,
    map_keys: list[str] | None = None,
    preserve_unknown: bool = False,
) -> dict[str, Any]:
    """Kubernetes schema extensions for a field (copied verbatim into the CRD by crdgen)."""
    out: dict[str, Any] = {}
    if rules:
        out["x-kubernetes-validations"] = rules
    if list_type:
        out["x-kubernetes-list-type"] = list_type
    if map_keys:
        out["x-kubernetes-list-map-keys"] = map_keys
    if preserve_unknown:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


Duration = str  # validated by Field(pattern=DURATION_PATTERN) where used


def _dur(default: str | None, description: str, pattern: str = DURATION_PATTERN) -> Any:
    return Field(default, pattern=pattern, max_length=32, description=description)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Status(_Model):
    model_config = ConfigDict(extra="ignore")


class Condition(_Status):
    """metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field("", max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(None, ge=0)


_CONDITIONS = Field(
    default_factory=list, max_length=16, json_schema_extra=_x(list_type="map", map_keys=["type"])
)


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


class OnlineMetric(_Model):
    name: str = Field(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN,
                      description="metric name as exported to Prometheus")
    direction: Direction = "maximize"
    window: Duration = _dur("1d", "maturity window: a user's value is read only after it has closed")


class Guardrail(_Model):
    """A hard limit: `limit` bounds the metric's value, `margin` its relative regression vs control."""

    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [cel("has(self.limit) || has(self.margin)", "guardrail: give a limit, a margin or both", "FieldValueRequired")]
        ),
    )

    metric: str = Field(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN)
    direction: Direction = Field("minimize", description="which way is good for this metric")
    limit: float | None = Field(None, description="absolute bound on the treatment's value (upper if minimize)")
    margin: float | None = Field(None, ge=0, le=1, description="largest tolerated relative regression vs control")

    @model_validator(mode="after")
    def _limit_or_margin(self) -> "Guardrail":
        if self.limit is None and self.margin is None:
            raise ValueError("guardrail: give a limit, a margin or both")
        return self


class LocalObjectRef(_Model):
    name: str = Field(min_length=1, max_length=253)


# --------------------------------------------------------------------------------------------
# Evolution
# --------------------------------------------------------------------------------------------


class OfflineMetric(_Model):
    metric: str = Field(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN)
    direction: Direction


class OfflineObjective(_Model):
    """The proxy metric each persona optimises (docs/CONTRACTS.md, Trainer)."""

    optimizer: OfflineMetric = Field(default_factory=lambda: OfflineMetric(metric="val_loss", direction="minimize"))
    architecture: OfflineMetric = Field(
        default_factory=lambda: OfflineMetric(metric="val_loss", direction="minimize")
    )
    reward: OfflineMetric = Field(default_factory=lambda: OfflineMetric(metric="return_corr", direction="maximize"))
    training: OfflineMetric = Field(default_factory=lambda: OfflineMetric(metric="val_loss", direction="minimize"))

    def for_component(self, component: str) -> OfflineMetric:
        return getattr(self, component)


class Objective(_Model):
    offline: OfflineObjective = Field(default_factory=OfflineObjective)
    north_star: list[OnlineMetric] = Field(
        min_length=1,
        max_length=8,
        description="online metrics in order of importance; the first decides promotion",
        json_schema_extra=_x(list_type="map", map_keys=["name"]),
    )


class Quotas(_Model):
    explore: int = Field(1, ge=0, le=64)
    exploit: int = Field(1, ge=0, le=64)
    innovate: int = Field(1, ge=0, le=64)


class Budgets(_Model):
    """Hard caps; the loop stops proposing (phase BudgetExhausted) when one is spent. Absent = no cap."""

    tokens: int | None = Field(None, ge=0)
    dollars: float | None = Field(None, ge=0)
    gpu_hours: float | None = Field(None, ge=0)
    evaluations: int | None = Field(None, ge=0, description="training runs (attempts) in total")


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


_AGENT_RULES = [
    cel(
        "self.quotas.explore + self.quotas.exploit + self.quotas.innovate == self.proposalsPerWakeup",
        "spec.agent.quotas: explore + exploit + innovate must equal spec.agent.proposalsPerWakeup",
    ),
    cel(
        "self.provider == 'builtin' || (has(self.model) && size(self.model) > 0)",
        "spec.agent.model is required when spec.agent.provider is gemini or openai",
        "FieldValueRequired",
    ),
]


class Agent(_Model):
    model_config = ConfigDict(json_schema_extra=_x(_AGENT_RULES))

    provider: Literal["gemini", "openai", "builtin"] = "builtin"
    model: str | None = Field(None, max_length=256, description="e.g. gemini-2.5-flash")
    base_url: str | None = Field(None, max_length=2048, description="OpenAI-compatible endpoint")
    api_key_secret_ref: SecretKeyRef | None = None
    personas: list[Literal["optimizer", "architecture", "reward"]] = Field(
        default_factory=lambda: ["optimizer", "architecture", "reward"],
        min_length=1,
        max_length=3,
        json_schema_extra=_x(list_type="set"),
    )
    proposals_per_wakeup: int = Field(3, ge=1, le=64)
    quotas: Quotas = Field(default_factory=Quotas)
    budgets: Budgets = Field(default_factory=Budgets)

    @model_validator(mode="after")
    def _rules(self) -> "Agent":
        q = self.quotas
        if q.explore + q.exploit + q.innovate != self.proposals_per_wakeup:
            raise ValueError(_AGENT_RULES[0]["message"])
        if self.provider != "builtin" and not self.model:
            raise ValueError(_AGENT_RULES[1]["message"])
        if len(set(self.personas)) != len(self.personas):
            raise ValueError("spec.agent.personas: each persona may appear once")
        return self


class Cadence(_Model):
    offline: Duration = _dur("5m", "offline agent wake-up interval", POSITIVE_DURATION_PATTERN)
    online: Duration = _dur("24h", "online agent review interval (ranks the journal, starts rollouts)",
                            POSITIVE_DURATION_PATTERN)


class Toleration(_Model):
    key: str | None = Field(None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=256)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Gpu(_Model):
    resource: str = Field("nvidia.com/gpu", min_length=1, max_length=253, description="extended resource name")
    count: int = Field(1, ge=0, le=64, description="0 trains on CPU")


class Training(_Model):
    image: str = Field("ghcr.io/cambrian-dev/trainer:latest", min_length=1, max_length=1024)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpu: Gpu = Field(default_factory=Gpu)
    cpu: str = Field("2", max_length=32, pattern=QUANTITY_PATTERN, description="CPU request")
    memory: str = Field("8Gi", max_length=32, pattern=QUANTITY_PATTERN, description="memory request and limit")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict, json_schema_extra={"maxProperties": 32})
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    priority_class_name: str | None = Field(None, max_length=253)
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, description="added to the training pods", json_schema_extra={"maxProperties": 32}
    )
    queue_name: str | None = Field(
        None, max_length=253, description="Kueue LocalQueue; the Job is created suspended and labelled for Kueue"
    )
    active_deadline: Duration = _dur("6h", "a training run longer than this is killed and marked failed",
                                     POSITIVE_DURATION_PATTERN)
    max_attempts: int = Field(2, ge=1, le=10, description="attempts per hypothesis (infrastructure failures)")


class WorldData(_Model):
    users: int = Field(2000, ge=10, le=10_000_000)
    days: int = Field(14, ge=2, le=3650)
    seed: int = Field(0, ge=0)


class VolumeData(_Model):
    claim_name: str = Field(min_length=1, max_length=253)
    path: str = Field("", max_length=1024, description="folder inside the claim holding the world data")


class Data(_Model):
    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [
                cel(
                    "has(self.world) != has(self.persistentVolumeClaim)",
                    "spec.data: give exactly one of world or persistentVolumeClaim",
                )
            ]
        ),
    )

    world: WorldData | None = Field(None, description="generate the simulated world in the training pod")
    persistent_volume_claim: VolumeData | None = Field(None, description="prepared world data on a volume")

    @model_validator(mode="after")
    def _one(self) -> "Data":
        if (self.world is None) == (self.persistent_volume_claim is None):
            raise ValueError("spec.data: give exactly one of world or persistentVolumeClaim")
        return self


class Storage(_Model):
    claim_name: str | None = Field(
        None, max_length=253, description="ReadWriteMany claim for bundles; without it bundles live in the Job only"
    )


class HTTPRouteRef(_Model):
    name: str = Field(min_length=1, max_length=253)
    port: int = Field(8080, ge=1, le=65535)


class Serving(_Model):
    image: str = Field("ghcr.io/cambrian-dev/cambrian:latest", min_length=1, max_length=1024)
    replicas: int = Field(1, ge=1, le=100)
    port: int = Field(8080, ge=1, le=65535)
    collector_url: str | None = Field(None, max_length=2048, description="event collector the routers report exposures to")
    http_route: HTTPRouteRef | None = Field(None, description="also set Gateway API HTTPRoute backend weights")


class EvolutionSpec(_Model):
    """One self-evolving loop: baseline Φ, objectives, guardrails, agents, budgets, top-K, cadence."""

    baseline: dict[str, Any] = Field(
        default_factory=dict,
        description="the baseline model config Φ (trainer/config.py); {} is the built-in baseline",
    )
    objective: Objective
    guardrails: list[Guardrail] = Field(
        default_factory=list, max_length=16, json_schema_extra=_x(list_type="map", map_keys=["metric"])
    )
    agent: Agent = Field(default_factory=Agent)
    top_k: int = Field(2, ge=1, le=16, description="most treatments live at once")
    cadence: Cadence = Field(default_factory=Cadence)
    launch_policy: Literal["auto", "manual"] = Field(
        "manual", description="manual: a promotion waits for a human (cambrian.dev/approve annotation)"
    )
    training: Training = Field(default_factory=Training)
    serving: Serving = Field(default_factory=Serving)
    storage: Storage = Field(default_factory=Storage)
    experiment: "ExperimentTemplate" = Field(
        default_factory=lambda: ExperimentTemplate(), description="how the rollouts this loop starts are run"
    )
    data: Data

    @field_validator("baseline")
    @classmethod
    def _baseline_is_phi(cls, v: dict[str, Any]) -> dict[str, Any]:
        from cambrian.trainer.config import parse_config

        try:
            parse_config(v, "spec.baseline")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v


class Champion(_Status):
    name: str | None = None
    config: dict[str, Any] | None = Field(None, description="Φ")
    hypothesis: str | None = None
    bundle: str | None = None
    rollout: str | None = None
    since: datetime | None = None


class Counters(_Status):
    wakeups: int = 0
    reviews: int = 0
    proposed: int = 0
    trained: int = 0
    failed: int = 0
    rejected: int = 0
    live: int = 0
    launched: int = 0


class Spend(_Status):
    tokens: int = 0
    dollars: float = 0.0
    gpu_hours: float = 0.0
    evaluations: int = 0


class LastDecision(_Status):
    rollout: str
    outcome: Outcome
    winner: str | None = None
    reason: str = ""
    time: datetime | None = None


class EvolutionStatus(_Status):
    observed_generation: int | None = None
    phase: EvolutionPhase | None = None
    reason: str | None = None
    champion: Champion = Field(default_factory=Champion)
    counters: Counters = Field(default_factory=Counters)
    spend: Spend = Field(default_factory=Spend)
    last_decision: LastDecision | None = None
    next_wakeup_at: datetime | None = None
    next_review_at: datetime | None = None
    live_rollouts: list[str] = Field(default_factory=list, max_length=64)
    handled_decisions: list[str] = Field(
        default_factory=list, max_length=256, description="rollouts whose decision has been applied"
    )
    conditions: list[Condition] = _CONDITIONS


# --------------------------------------------------------------------------------------------
# Hypothesis
# --------------------------------------------------------------------------------------------


class HypothesisDelta(_Model):
    """A change against Φ[component]: a JSON merge patch and/or plugin code (trainer/delta.py)."""

    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [
                cel(
                    "has(self.patch) || has(self.code)",
                    "spec.delta: a delta must change something: give a non-empty patch or code",
                    "FieldValueRequired",
                ),
            ]
        ),
    )

    # CEL cannot look inside free-form JSON, so "non-empty" is minProperties / minLength here.
    patch: dict[str, Any] | None = Field(
        None,
        min_length=1,
        description="RFC 7386 JSON merge patch of the component's settings",
        json_schema_extra={"maxProperties": 64},
    )
    code: str | None = Field(None, min_length=1, max_length=20_000, description="plugin code (optimizer or architecture)")

    @model_validator(mode="after")
    def _rules(self) -> "HypothesisDelta":
        if not self.patch and not self.code:
            raise ValueError("spec.delta: a delta must change something: give a non-empty patch or code")
        if self.patch and "code" in self.patch:
            raise ValueError("spec.delta.patch.code: put plugin code in spec.delta.code")
        return self


class PredictedEffect(_Model):
    metric: str | None = Field(None, max_length=128)
    direction: Literal["increase", "decrease", "unknown"] = "unknown"
    relative_change: float | None = Field(None, description="e.g. -0.01 for a 1% drop")
    description: str | None = Field(None, max_length=4096)


class Origin(_Model):
    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [cel("self.kind != 'persona' || has(self.persona)", "spec.origin.persona is required when kind is persona", "FieldValueRequired")]
        ),
    )

    kind: Literal["persona", "human"] = "human"
    persona: Literal["optimizer", "architecture", "reward"] | None = None
    category: Quota | None = None
    author: str | None = Field(None, max_length=256)
    wakeup: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _persona(self) -> "Origin":
        if self.kind == "persona" and self.persona is None:
            raise ValueError("spec.origin.persona is required when kind is persona")
        return self


_HYP_RULES = [
    cel("self.delta == oldSelf.delta", "spec.delta is immutable: propose a new Hypothesis instead"),
    cel("self.component == oldSelf.component", "spec.component is immutable"),
    cel("self.evolutionRef == oldSelf.evolutionRef", "spec.evolutionRef is immutable"),
    cel(
        "!has(self.delta.code) || self.component in ['optimizer', 'architecture']",
        "spec.delta.code is only accepted for optimizer and architecture; a reward or training delta is a patch",
    ),
]


class HypothesisSpec(_Model):
    """One proposed change: a delta against the champion's Φ, with its explanation and origin."""

    model_config = ConfigDict(json_schema_extra=_x(_HYP_RULES))

    evolution_ref: LocalObjectRef
    component: Component
    explanation: str = Field(min_length=1, max_length=8192)
    predicted_effect: PredictedEffect = Field(default_factory=PredictedEffect)
    delta: HypothesisDelta
    origin: Origin = Field(default_factory=Origin)

    @model_validator(mode="after")
    def _code_component(self) -> "HypothesisSpec":
        if self.delta.code is not None and self.component not in ("optimizer", "architecture"):
            raise ValueError(_HYP_RULES[3]["message"])
        return self

    def trainer_delta(self):  # -> cambrian.trainer.delta.Delta
        from cambrian.trainer.delta import parse_delta

        data: dict[str, Any] = {"component": self.component, "patch": self.delta.patch or {}}
        if self.delta.code is not None:
            data["code"] = self.delta.code
        return parse_delta(data, "spec.delta")


class ProxyMetric(_Status):
    value: float
    stderr: float | None = Field(None, description="noise estimate (seed-to-seed or bootstrap)")


class ArmEffect(_Status):
    arm: str
    metric: str
    estimate: float
    ci_low: float
    ci_high: float
    relative: bool = False
    p_value: float | None = None


class OnlineResult(_Status):
    rollout: str
    decision: Outcome | None = None
    reason: str | None = None
    effects: list[ArmEffect] = Field(default_factory=list, max_length=64)


class HypothesisStatus(_Status):
    observed_generation: int | None = None
    phase: HypothesisPhase | None = None
    reason: str | None = Field(None, max_length=8192)
    failure_stage: str | None = None
    attempts: int = 0
    job_name: str | None = None
    training_started_at: datetime | None = None
    gpu_hours: float = Field(0.0, description="GPU time of finished attempts (wall time × GPUs)")
    config_fingerprint: str | None = None
    offline_metric: str | None = None
    offline_score: float | None = None
    proxy_metrics: dict[str, ProxyMetric] = Field(default_factory=dict)
    bundle_uri: str | None = None
    rollout: str | None = None
    online: OnlineResult | None = None
    conditions: list[Condition] = _CONDITIONS


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


class ControlArm(_Model):
    name: str = Field("control", min_length=1, max_length=40, pattern=NAME_PATTERN)
    bundle: str = Field(min_length=1, max_length=2048, description="model bundle URI the arm serves")
    hypothesis_ref: LocalObjectRef | None = None


class TreatmentArm(_Model):
    name: str = Field(min_length=1, max_length=40, pattern=NAME_PATTERN)
    hypothesis_ref: LocalObjectRef
    bundle: str = Field(min_length=1, max_length=2048)


class RampStep(_Model):
    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [
                cel("self.weights.all(w, w >= 0 && w <= 100)", "spec.ramp.steps[].weights: each weight must be within 0..100"),
                cel("self.weights.sum() == 100", "spec.ramp.steps[].weights must sum to 100"),
            ]
        ),
    )

    weights: list[int] = Field(
        min_length=2, max_length=5, description="traffic percent per arm: control first, then treatments in order"
    )
    duration: Duration = _dur("1d", "time on this step before the next one (the last step lasts until maxDuration)")

    @model_validator(mode="after")
    def _weights(self) -> "RampStep":
        if any(w < 0 or w > 100 for w in self.weights):
            raise ValueError("spec.ramp.steps[].weights: each weight must be within 0..100")
        if sum(self.weights) != 100:
            raise ValueError("spec.ramp.steps[].weights must sum to 100")
        return self


_RAMP_RULES = [
    cel(
        "self.steps.map(s, 100 - s.weights[0]).isSorted() && "
        "self.steps.all(a, self.steps.exists_one(b, b.weights[0] == a.weights[0]))",
        "spec.ramp.steps: the treatment share (100 - control weight) must strictly increase from step to step",
    )
]


class Ramp(_Model):
    model_config = ConfigDict(json_schema_extra=_x(_RAMP_RULES))

    steps: list[RampStep] = Field(min_length=1, max_length=10)

    @model_validator(mode="after")
    def _increasing(self) -> "Ramp":
        shares = [100 - s.weights[0] for s in self.steps]
        if any(b <= a for a, b in zip(shares, shares[1:])):
            raise ValueError(_RAMP_RULES[0]["message"])
        return self


class Readout(_Model):
    interval: Duration = _dur("1h", "how often the analysis reads Prometheus", POSITIVE_DURATION_PATTERN)


class RolloutMetrics(_Model):
    north_star: list[OnlineMetric] = Field(
        min_length=1, max_length=8, json_schema_extra=_x(list_type="map", map_keys=["name"])
    )
    guardrails: list[Guardrail] = Field(
        default_factory=list, max_length=16, json_schema_extra=_x(list_type="map", map_keys=["metric"])
    )
    readout: Readout = Field(default_factory=Readout)


class Statistics(_Model):
    alpha: float = Field(0.05, gt=0, lt=0.5)
    method: Literal["msprt", "cs"] = "cs"
    cuped: bool = True
    min_sample_per_arm: int = Field(1000, ge=1)
    planned_sample_per_arm: int | None = Field(
        None, ge=1, description="users per arm the confidence sequence is tuned for (default 4 × minSamplePerArm)"
    )
    max_duration: Duration = _dur("14d", "stop as inconclusive after this long without a decision")
    srm_alpha: float = Field(0.001, gt=0, lt=0.5, description="sample-ratio-mismatch threshold")


def _default_ramp() -> "Ramp":
    return Ramp(steps=[RampStep(weights=[95, 5], duration="1d"), RampStep(weights=[50, 50], duration="1d")])


class ExperimentTemplate(_Model):
    """Settings of the A/B rollouts (one treatment each) that an Evolution starts for its top-K."""

    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [cel("self.ramp.steps.all(s, size(s.weights) == 2)",
                 "spec.experiment.ramp.steps[].weights: give two weights (control, treatment)")]
        ),
    )

    ramp: Ramp = Field(default_factory=_default_ramp)
    readout: Readout = Field(default_factory=Readout)
    statistics: Statistics = Field(default_factory=Statistics)

    @model_validator(mode="after")
    def _two_arms(self) -> "ExperimentTemplate":
        if any(len(s.weights) != 2 for s in self.ramp.steps):
            raise ValueError("spec.experiment.ramp.steps[].weights: give two weights (control, treatment)")
        return self


_ROLLOUT_RULES = [
    cel(
        "self.ramp.steps.all(s, size(s.weights) == size(self.treatments) + 1)",
        "spec.ramp.steps[].weights: give one weight per arm (control first, then each treatment)",
    ),
    cel(
        "self.treatments.all(t, t.name != self.control.name)",
        "spec.treatments[].name: a treatment may not share the control arm's name",
    ),
    cel("self.salt == oldSelf.salt", "spec.salt is immutable: changing it would reshuffle users between arms"),
    cel("self.control == oldSelf.control", "spec.control is immutable"),
    cel("self.treatments == oldSelf.treatments", "spec.treatments is immutable"),
]


class RolloutSpec(_Model):
    """One online experiment: control and treatment arms, ramp, metrics, statistics, decision policy."""

    model_config = ConfigDict(json_schema_extra=_x(_ROLLOUT_RULES))

    evolution_ref: LocalObjectRef | None = None
    control: ControlArm
    treatments: list[TreatmentArm] = Field(
        min_length=1, max_length=4, json_schema_extra=_x(list_type="map", map_keys=["name"])
    )
    salt: str = Field(min_length=1, max_length=128, description="hash salt: assignment = hash(user id, salt)")
    ramp: Ramp
    metrics: RolloutMetrics
    statistics: Statistics = Field(default_factory=Statistics)
    decision_policy: Literal["auto", "manual"] = "manual"

    @model_validator(mode="after")
    def _arms(self) -> "RolloutSpec":
        for s in self.ramp.steps:
            if len(s.weights) != len(self.treatments) + 1:
                raise ValueError(_ROLLOUT_RULES[0]["message"])
        if any(t.name == self.control.name for t in self.treatments):
            raise ValueError(_ROLLOUT_RULES[1]["message"])
        if len({t.name for t in self.treatments}) != len(self.treatments):
            raise ValueError("spec.treatments[].name: arm names must be unique")
        return self

    def arm_names(self) -> list[str]:
        return [self.control.name] + [t.name for t in self.treatments]


class ArmStatus(_Status):
    name: str
    weight: int = 0
    n: int = 0
    ready: bool = False


class SRM(_Status):
    p_value: float
    mismatch: bool


class RolloutStatus(_Status):
    observed_generation: int | None = None
    phase: RolloutPhase | None = None
    step: int = 0
    weights_summary: str | None = None
    arms: list[ArmStatus] = Field(default_factory=list, max_length=5)
    effects: list[ArmEffect] = Field(default_factory=list, max_length=64)
    srm: SRM | None = None
    decision: Outcome | None = None
    recommendation: Outcome | None = Field(None, description="what the analysis proposes while awaiting approval")
    winner: str | None = None
    reason: str | None = Field(None, max_length=8192)
    started_at: datetime | None = None
    step_started_at: datetime | None = None
    next_readout_at: datetime | None = None
    concluded_at: datetime | None = None
    readouts: int = 0
    step_history: list[datetime] = Field(
        default_factory=list, max_length=10, description="start time of each ramp step so far (SRM expectations)"
    )
    decision_state: dict[str, Any] | None = Field(None, description="running always-valid test state")
    conditions: list[Condition] = _CONDITIONS


# --------------------------------------------------------------------------------------------
# Whole objects and parsing helpers
# --------------------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None


class _Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["cambrian.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    metadata: ObjectMeta


class Evolution(_Resource):
    kind: Literal["Evolution"] = "Evolution"
    spec: EvolutionSpec
    status: EvolutionStatus = Field(default_factory=EvolutionStatus)


class Hypothesis(_Resource):
    kind: Literal["Hypothesis"] = "Hypothesis"
    spec: HypothesisSpec
    status: HypothesisStatus = Field(default_factory=HypothesisStatus)


class Rollout(_Resource):
    kind: Literal["Rollout"] = "Rollout"
    spec: RolloutSpec
    status: RolloutStatus = Field(default_factory=RolloutStatus)


EvolutionSpec.model_rebuild()
Evolution.model_rebuild()

KINDS: dict[str, type[_Resource]] = {"Evolution": Evolution, "Hypothesis": Hypothesis, "Rollout": Rollout}
SPECS: dict[str, type[_Model]] = {"Evolution": EvolutionSpec, "Hypothesis": HypothesisSpec, "Rollout": RolloutSpec}
STATUSES: dict[str, type[_Status]] = {
    "Evolution": EvolutionStatus,
    "Hypothesis": HypothesisStatus,
    "Rollout": RolloutStatus,
}


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "") or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_spec(kind: str, spec: Any) -> Any:
    """Validate a spec dict; raises ConfigError whose message names every offending field."""
    try:
        return SPECS[kind].model_validate(spec or {})
    except ValidationError as exc:
        raise ConfigError(f"{kind} spec is invalid: {format_errors(exc, 'spec')}") from None


def parse_status(kind: str, status: Any) -> Any:
    return STATUSES[kind].model_validate(status or {})


def parse_resource(obj: dict[str, Any]) -> _Resource:
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    try:
        return KINDS[kind].model_validate(obj)
    except ValidationError as exc:
        raise ConfigError(f"{kind} {obj.get('metadata', {}).get('name', '?')} is invalid: {format_errors(exc)}") from None
