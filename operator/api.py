"""The custom resources of cluster mode as pydantic models: Evolution, Hypothesis, Rollout.

These models are the single source of the CRD schemas: `cambrian.operator.crdgen` turns them into
crds/*.yaml (structural OpenAPI v3 plus the CEL rules attached below), and a test checks that the
committed YAML is what the models generate. Every CEL rule has a Python twin in a validator here,
so the local driver (no API server) rejects the same specs with the same messages.

Field names are camelCase on the wire (Kubernetes style) and snake_case in Python.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit
from datetime import datetime
from typing import Annotated, Any, Literal, Mapping

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
# A data source outside the cluster: a scheme and the rest (trainer/sources.py reads it); a folder is a volume.
SOURCE_URI_PATTERN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^\s]+$"
GUARDRAIL_QUERY_RULE = ("guardrail query: give a limit and no margin (a PromQL value has no confidence interval to "
                        "judge a relative regression by)")
GUARDRAIL_QUERY_ARM = "guardrail query: select each arm's series with {{arm}}"
# A PromQL template: {{arm}} and {{window}} are its only placeholders (PromQL itself never writes "{{").
PROMQL_TEMPLATE_PATTERN = r"^([^{]|[{][^{]|[{][{](arm|window)[}][}])*[{]?$"
PROMQL_PLACEHOLDERS = "promql: the only placeholders are {{arm}} and {{window}}"
PROMQL_STATS = {  # kind -> (stats every arm needs, optional stats that come together: the CUPED covariate)
    "mean": (("n", "sum_y", "sum_y2"), ("sum_x", "sum_x2", "sum_xy")),
    "ratio": (("n", "sum_m", "sum_d", "sum_m2", "sum_d2", "sum_md"), ()),
    "proportion": (("n", "sum_y"), ()),
}
DATA_ONE_OF = "spec.data: give exactly one of world, persistentVolumeClaim or source"


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
    """One aspect of the object's state (metav1.Condition)."""

    type: str = Field(max_length=316, description="what the condition is about, in CamelCase, e.g. Ready or Training")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown")
    reason: str = Field("", max_length=1024, description="CamelCase reason of the last transition, for machines")
    message: str = Field("", max_length=32768, description="details of the last transition, for people")
    last_transition_time: datetime | None = Field(None, description="when the status last changed")
    observed_generation: int | None = Field(None, ge=0, description="the metadata.generation the condition was set for")


_CONDITIONS = Field(
    default_factory=list, max_length=16, description="the latest observations of the object's state, one per type",
    json_schema_extra=_x(list_type="map", map_keys=["type"]),
)


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


class OnlineMetric(_Model):
    """An online metric read from Prometheus."""

    name: str = Field(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN,
                      description="metric name as exported to Prometheus")
    direction: Direction = Field("maximize", description="which way is good for this metric: maximize or minimize")
    window: Duration = _dur("1d", "maturity window: a user's value is read only after it has closed")


class Guardrail(_Model):
    """A hard limit: `limit` bounds the metric's value, `margin` its relative regression vs control. With
    `query`, the value is your own PromQL over your own series, read at each readout for each arm (as an
    Argo Rollouts analysis template's)."""

    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [cel("has(self.limit) || has(self.margin)", "guardrail: give a limit, a margin or both", "FieldValueRequired"),
             cel("!has(self.query) || (has(self.limit) && !has(self.margin))", GUARDRAIL_QUERY_RULE),
             cel("!has(self.query) || self.query.contains('{{arm}}')", GUARDRAIL_QUERY_ARM)]
        ),
    )

    metric: str = Field(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN,
                        description="metric name as exported to Prometheus (with query: the name the guardrail reports)")
    direction: Direction = Field("minimize", description="which way is good for this metric")
    limit: float | None = Field(None, description="absolute bound on the treatment's value (upper if minimize)")
    margin: float | None = Field(None, ge=0, le=1, description="largest tolerated relative regression vs control")
    query: str | None = Field(None, min_length=1, max_length=4096, description=(
        "PromQL over your own Prometheus series giving one number per arm: each readout runs it once per arm "
        "with {{arm}} replaced by the arm's name (e.g. a label matcher arm=\"{{arm}}\") and {{window}} by the "
        "time since the rollout started; the value is checked "
        "against limit. An arm whose query returns nothing, several series or NaN is not verified: never promoted"),
        json_schema_extra=_x([cel(f"self.matches('{PROMQL_TEMPLATE_PATTERN}')", PROMQL_PLACEHOLDERS)]))

    @model_validator(mode="after")
    def _limit_or_margin(self) -> "Guardrail":
        if self.limit is None and self.margin is None:
            raise ValueError("guardrail: give a limit, a margin or both")
        if self.query is not None and (self.limit is None or self.margin is not None):
            raise ValueError(GUARDRAIL_QUERY_RULE)
        if self.query is not None and "{{arm}}" not in self.query:
            raise ValueError(GUARDRAIL_QUERY_ARM)
        check_template(self.query, "query")
        return self


def _template_field(description: str, required: bool = False) -> Any:
    return Field(... if required else None, min_length=1, max_length=4096, description=description,
                 json_schema_extra=_x([cel(f"self.matches('{PROMQL_TEMPLATE_PATTERN}')", PROMQL_PLACEHOLDERS),
                                       cel("self.contains('{{arm}}')", "promql: select each arm's series with {{arm}}")]))


def check_template(text: str | None, where: str) -> None:
    """The static part of a PromQL template's check (the CEL rules' twin); the PromQL itself is parsed by the
    Prometheus that runs it (cambrian.online.prometheus.PromClient.check) before the Rollout starts."""
    if text is None:
        return
    if not re.fullmatch(PROMQL_TEMPLATE_PATTERN, text):
        raise ValueError(f"{where}: {PROMQL_PLACEHOLDERS}")
    if "{{arm}}" not in text:
        raise ValueError(f"{where}: promql: select each arm's series with {{{{arm}}}}")


_STAT_HELP = ("PromQL template of one per-arm sum over users ({{arm}}: the arm's name, {{window}}: the time since "
              "the rollout started as a PromQL duration); one series or a scalar per arm")


class PromQLQueries(_Model):
    """One PromQL template per sufficient statistic, named as Cambrian's own export (`cambrian_arm_stat`'s
    `stat` label). Second moments are raw (about 0)."""

    users: str | None = _template_field("n, the users (randomisation units) in the arm: " + _STAT_HELP)
    sum_y: str | None = _template_field("Σ over users of the user's value Y (proportion: users with the outcome): "
                                        + _STAT_HELP)
    sum_y2: str | None = _template_field("Σ over users of Y²: " + _STAT_HELP)
    sum_x: str | None = _template_field("Σ of the user's pre-experiment value X (CUPED covariate): " + _STAT_HELP)
    sum_x2: str | None = _template_field("Σ of X²: " + _STAT_HELP)
    sum_xy: str | None = _template_field("Σ of X·Y: " + _STAT_HELP)
    sum_m: str | None = _template_field("ratio: Σ of the user's numerator M: " + _STAT_HELP)
    sum_d: str | None = _template_field("ratio: Σ of the user's denominator D: " + _STAT_HELP)
    sum_m2: str | None = _template_field("ratio: Σ of M²: " + _STAT_HELP)
    sum_d2: str | None = _template_field("ratio: Σ of D²: " + _STAT_HELP)
    sum_md: str | None = _template_field("ratio: Σ of M·D: " + _STAT_HELP)

    def given(self) -> dict[str, str]:
        """stat (the sums contract's name: n, sum_y, ...) -> template, for those given."""
        return {("n" if k == "users" else k): v for k, v in self.model_dump().items() if v is not None}


def stat_wire_name(stat: str) -> str:
    """A statistic's field name in the spec: `n` is `users` there (YAML 1.1 reads a key n as false)."""
    return "users" if stat == "n" else to_camel(stat)


def _promql_kind_rules() -> list[dict[str, str]]:
    rules = []
    for kind, (need, together) in PROMQL_STATS.items():
        cam = [stat_wire_name(s) for s in need]
        allowed = set(need) | set(together)
        extra = [stat_wire_name(s) for s in ("n", *PromQLQueries.model_fields) if s not in allowed and s != "users"]
        rule = " && ".join([f"has(self.queries.{c})" for c in cam] + [f"!has(self.queries.{c})" for c in extra])
        if together:
            opt = [f"has(self.queries.{stat_wire_name(s)})" for s in together]
            rule += f" && (({' && '.join(opt)}) || !({' || '.join(opt)}))"
        rules.append(cel(f"self.kind != '{kind}' || ({rule})", _promql_kind_message(kind)))
    return rules


def _promql_kind_message(kind: str) -> str:
    need, together = PROMQL_STATS[kind]
    msg = f"promql metric of kind {kind}: give queries {', '.join(stat_wire_name(s) for s in need)}"
    if together:
        msg += f" (and, for CUPED, all of {', '.join(stat_wire_name(s) for s in together)} or none)"
    return msg + " and no others"


class PromQLMetric(_Model):
    """A decision metric defined in PromQL over your own series: per arm, the sufficient statistics the analysis
    reads (README: Metrics in PromQL over your own series). Prometheus holds no per-user values, so these must
    be sums over users that your service keeps (as Cambrian's collector does); counts of events alone cannot
    give a variance, except for a proportion of users (Σy² = Σy when y is 0 or 1)."""

    model_config = ConfigDict(json_schema_extra=_x(_promql_kind_rules()))

    name: str = Field(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN, description=(
        "the metric's name, as northStar[].name or guardrails[].metric use it (replaces a collector metric of "
        "that name)"))
    kind: Literal["mean", "ratio", "proportion"] = Field(description=(
        "mean: Y per user (users, sumY, sumY2; sumX, sumX2, sumXy for CUPED); ratio: M/D per user (users, sumM, "
        "sumD, sumM2, sumD2, sumMd); proportion: a 0/1 outcome per user (users, sumY of them with the outcome)"))
    queries: PromQLQueries = Field(description="one PromQL template per statistic")

    @model_validator(mode="after")
    def _queries(self) -> "PromQLMetric":
        need, together = PROMQL_STATS[self.kind]
        given = self.queries.given()
        allowed = set(need) | set(together)
        have_opt = [s for s in together if s in given]
        if any(s not in given for s in need) or set(given) - allowed or 0 < len(have_opt) < len(together):
            raise ValueError(_promql_kind_message(self.kind))
        for stat, text in given.items():
            check_template(text, f"queries.{stat_wire_name(stat)}")
        return self


def _check_promql_names(promql: list[PromQLMetric], guardrails: list[Guardrail]) -> None:
    names = [m.name for m in promql]
    if len(set(names)) != len(names):
        raise ValueError("promql: metric names must be unique")
    clash = sorted({g.metric for g in guardrails if g.query is not None} & set(names))
    if clash:
        raise ValueError(f"guardrail {clash[0]}: defined both by its own query and as a promql metric; keep one")


class LocalObjectRef(_Model):
    """A reference to an object in the same namespace."""

    name: str = Field(min_length=1, max_length=253, description="name of the object, in the same namespace")


# --------------------------------------------------------------------------------------------
# Evolution
# --------------------------------------------------------------------------------------------


class OfflineMetric(_Model):
    """A metric the trainer reports for a training run."""

    metric: str = Field(min_length=1, max_length=128, pattern=METRIC_NAME_PATTERN,
                        description="metric name as the trainer reports it, e.g. val_loss or top_watch_share")
    direction: Direction = Field(description="which way is better: maximize or minimize")


# The reward's default offline objective: the world's offline proxy of watch time (each user's share of held-out
# watch seconds in the model's top 6% of that user's rows), the best predictor of the online effect on the
# fidelity benchmark (Spearman 0.65 / 0.70 / 0.57 on world seeds 0, 2, 3; return_corr, the default before
# issue 18: -0.38 / -0.03 / -0.58). Data declared otherwise must define it or name its own proxy.
DEFAULT_REWARD_METRIC = "top_watch_share"


class OfflineObjective(_Model):
    """The proxy metric each persona optimises (docs/CONTRACTS.md, Trainer)."""

    optimizer: OfflineMetric = Field(default_factory=lambda: OfflineMetric(metric="val_loss", direction="minimize"),
                                     description="scores hypotheses that change the optimizer")
    architecture: OfflineMetric = Field(
        default_factory=lambda: OfflineMetric(metric="val_loss", direction="minimize"),
        description="scores hypotheses that change the model architecture",
    )
    reward: OfflineMetric = Field(
        default_factory=lambda: OfflineMetric(metric=DEFAULT_REWARD_METRIC, direction="maximize"),
        description=("scores hypotheses that change the reward (the training label); by default the world's "
                     "top_watch_share, which another data declaration must define or replace"),
    )
    training: OfflineMetric = Field(default_factory=lambda: OfflineMetric(metric="val_loss", direction="minimize"),
                                    description="scores hypotheses that change the training settings")

    def for_component(self, component: str) -> OfflineMetric:
        return getattr(self, component)


class Objective(_Model):
    """What the loop optimises: an offline proxy metric per component, then the online north stars."""

    offline: OfflineObjective = Field(
        default_factory=OfflineObjective,
        description="the offline metric that scores and ranks a hypothesis after training, per component it changes",
    )
    north_star: list[OnlineMetric] = Field(
        min_length=1,
        max_length=8,
        description="online metrics in order of importance; the first decides promotion",
        json_schema_extra=_x(list_type="map", map_keys=["name"]),
    )
    promql: list[PromQLMetric] = Field(
        default_factory=list, max_length=16, description=(
            "decision metrics defined in PromQL over your own series, copied into every rollout the loop starts "
            "(README: Metrics in PromQL over your own series)"),
        json_schema_extra=_x(list_type="map", map_keys=["name"]),
    )


class Quotas(_Model):
    """How each persona's proposals of one wake-up divide between the three kinds of proposal."""

    explore: int = Field(1, ge=0, le=64, description="proposals per persona per wake-up that try a different region")
    exploit: int = Field(1, ge=0, le=64,
                         description="proposals per persona per wake-up that refine the best results so far")
    innovate: int = Field(1, ge=0, le=64, description="proposals per persona per wake-up that write new logic "
                                                      "(new structures, new reward signals), not a numeric tweak")


class Budgets(_Model):
    """Hard caps; the loop stops proposing (phase BudgetExhausted) when one is spent. Absent = no cap."""

    tokens: int | None = Field(None, ge=0, description="LLM tokens (input and output) in total")
    dollars: float | None = Field(None, ge=0, description="LLM cost in US dollars in total")
    gpu_hours: float | None = Field(None, ge=0, description="GPU time of training runs in total (wall time × GPUs)")
    evaluations: int | None = Field(None, ge=0, description="training runs (attempts) in total")


class Scheduling(_Model):
    """How a wake-up's proposals (personas × proposalsPerWakeup) are shared among the personas."""

    policy: Literal["yield", "fixed"] = Field(
        "yield", description="yield: by each persona's measured yield (offline gain in noise floors per evaluation), "
                             "highest first, the personas' proposals interleaved in training order; an equal split "
                             "until something was evaluated. fixed: proposalsPerWakeup each, in the listed order")
    exploration_floor: int = Field(
        1, ge=0, le=64, description="with yield: the fewest proposals every persona gets at a wake-up, so a persona "
                                    "with a poor start is still tried (at most proposalsPerWakeup)")


class SecretKeyRef(_Model):
    """A key of a Secret."""

    name: str = Field(min_length=1, max_length=253, description="name of the Secret")
    key: str = Field(min_length=1, max_length=253, description="key inside the Secret")


_AGENT_RULES = [
    cel(
        "self.quotas.explore + self.quotas.exploit + self.quotas.innovate == self.proposalsPerWakeup",
        "spec.agent.quotas: explore + exploit + innovate must equal spec.agent.proposalsPerWakeup",
    ),
    cel(
        "!has(self.scheduling) || !has(self.scheduling.explorationFloor) || "
        "self.scheduling.explorationFloor <= self.proposalsPerWakeup",
        "spec.agent.scheduling.explorationFloor must not exceed spec.agent.proposalsPerWakeup",
    ),
    cel(
        "self.provider == 'builtin' || (has(self.model) && size(self.model) > 0)",
        "spec.agent.model is required when spec.agent.provider is gemini or openai",
        "FieldValueRequired",
    ),
]


class Agent(_Model):
    """The offline agents: who proposes hypotheses, how many per wake-up, within which budgets."""

    model_config = ConfigDict(json_schema_extra=_x(_AGENT_RULES))

    provider: Literal["gemini", "openai", "builtin"] = Field(
        "builtin", description="who writes the proposals: builtin (rules, no API key), gemini, or openai "
                               "(any OpenAI-compatible endpoint)")
    model: str | None = Field(None, max_length=256,
                              description="LLM model, e.g. gemini-2.5-flash; required with gemini and openai")
    base_url: str | None = Field(None, max_length=2048, description="OpenAI-compatible endpoint")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="the Secret holding the provider's API key; the operator never reads Secrets: the chart "
                          "passes this Secret to it as GEMINI_API_KEY or OPENAI_API_KEY (agents.*.existingSecret)")
    personas: list[Literal["optimizer", "architecture", "reward"]] = Field(
        # reward first: the listed order is the priority while no yield is measured (the first wake-up), and the
        # paper's lesson L4 is that the highest leverage is in changes a numeric search cannot reach (the reward)
        default_factory=lambda: ["reward", "architecture", "optimizer"],
        min_length=1,
        max_length=3,
        description="the personas asked at each wake-up, each proposing changes to its own component; with "
                    "scheduling.policy yield, the listed order is the priority while nothing is measured yet",
        json_schema_extra=_x(list_type="set"),
    )
    proposals_per_wakeup: int = Field(
        3, ge=1, le=64,
        description="hypotheses each persona proposes per wake-up (per persona: a wake-up proposes up to this many "
                    "times the number of personas); equals quotas.explore + quotas.exploit + quotas.innovate")
    quotas: Quotas = Field(default_factory=Quotas,
                           description="how each persona's proposalsPerWakeup divide into explore, exploit and innovate")
    budgets: Budgets = Field(default_factory=Budgets)
    scheduling: Scheduling = Field(default_factory=Scheduling,
                                   description="how each wake-up's proposals are shared among the personas")

    @model_validator(mode="after")
    def _rules(self) -> "Agent":
        q = self.quotas
        if q.explore + q.exploit + q.innovate != self.proposals_per_wakeup:
            raise ValueError(_AGENT_RULES[0]["message"])
        if self.scheduling.exploration_floor > self.proposals_per_wakeup:
            raise ValueError(_AGENT_RULES[1]["message"])
        if self.provider != "builtin" and not self.model:
            raise ValueError(_AGENT_RULES[2]["message"])
        if len(set(self.personas)) != len(self.personas):
            raise ValueError("spec.agent.personas: each persona may appear once")
        return self


class Cadence(_Model):
    """How often the agents run."""

    offline: Duration = _dur("5m", "offline agent wake-up interval", POSITIVE_DURATION_PATTERN)
    online: Duration = _dur("24h", "online agent review interval (ranks the journal, starts rollouts)",
                            POSITIVE_DURATION_PATTERN)


class Toleration(_Model):
    """A toleration of the training pods (as in a pod spec)."""

    key: str | None = Field(None, max_length=316, description="taint key to tolerate; empty with Exists: every taint")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (the default): how key and value match")
    value: str | None = Field(None, max_length=256, description="taint value to match with Equal")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="taint effect to tolerate; empty: every effect")
    toleration_seconds: int | None = Field(None, description="how long a NoExecute taint is tolerated before eviction")


class Gpu(_Model):
    """The GPUs of one training pod."""

    resource: str = Field("nvidia.com/gpu", min_length=1, max_length=253, description="extended resource name")
    count: int = Field(1, ge=0, le=64, description="0 trains on CPU")


class Training(_Model):
    """The training Jobs: image, resources, scheduling, queue, deadline and attempts. Fields left unset
    take the operator's defaults (the chart's training values)."""

    image: str = Field("ghcr.io/cambrian-dev/trainer:latest", min_length=1, max_length=1024,
                       description="trainer image; left at this default, the chart's training.image is used")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="pull policy of the trainer image (the chart's applies with the chart's image)")
    gpu: Gpu = Field(default_factory=Gpu, description="GPUs per training pod; count 0 trains on CPU")
    cpu: str | None = Field(
        None, max_length=32, pattern=QUANTITY_PATTERN,
        description="CPU request (default: the chart's training.resources, else 2)")
    memory: str | None = Field(
        None, max_length=32, pattern=QUANTITY_PATTERN,
        description="memory request and limit (default: the chart's training.resources requests and limits, else 8Gi)")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="node labels the training pods require (default: the chart's training.nodeSelector)",
        json_schema_extra={"maxProperties": 32})
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32,
                                          description="tolerations of the training pods (default: the chart's)")
    priority_class_name: str | None = Field(
        None, max_length=253, description="PriorityClass of the training pods (default: the chart's); it must exist")
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, description="added to the training pods", json_schema_extra={"maxProperties": 32}
    )
    queue_name: str | None = Field(
        None, max_length=253, description="Kueue LocalQueue; the Job is created suspended and labelled for Kueue"
    )
    active_deadline: Duration | None = _dur(
        None, "a training run longer than this is killed and marked failed "
              "(default: the chart's training.activeDeadlineSeconds, else 6h)", POSITIVE_DURATION_PATTERN)
    max_attempts: int = Field(2, ge=1, le=10, description="attempts per hypothesis (infrastructure failures)")
    workers: int = Field(1, ge=1, le=64, description=(
        "training pods per run; above 1, a data-parallel gang (torchrun, DDP): an Indexed Job whose pods meet "
        "at a Service of pod 0 (a cluster IP), admitted by Kueue as one workload when queueName is set, failed "
        "as a whole when one pod fails"))
    gpus_per_worker: int | None = Field(None, ge=0, le=64, description=(
        "GPUs of each training pod, one torchrun worker process each (default: gpu.count); 0 trains on CPU, "
        "one process per pod"))


class WorldData(_Model):
    """The built-in simulated world, generated inside each training pod."""

    users: int = Field(2000, ge=10, le=10_000_000, description="simulated users")
    days: int = Field(14, ge=2, le=3650, description="days of logged interactions")
    seed: int = Field(0, ge=0, description="random seed: the same seed generates the same world")


class VolumeData(_Model):
    """Prepared world data on a PersistentVolumeClaim."""

    claim_name: str = Field(min_length=1, max_length=253, description="the claim, mounted read-only in training pods")
    path: str = Field("", max_length=1024, description="folder inside the claim holding the world data")


class SourceData(_Model):
    """Your own tables: a warehouse or object storage holding the world declaration's tables (README: Bring your
    own data). A trusted step copies them into each training run's data directory, checked (`cambrian data
    fetch`); only that step sees the Secret, never the steps that run candidate code."""

    uri: str = Field(min_length=3, max_length=2048, pattern=SOURCE_URI_PATTERN, description=(
        "s3://bucket/prefix, gs://bucket/prefix, postgresql://user@host:port/db or duckdb:///path: no password "
        "in it (credentials come from secretRef)"))
    secret_ref: LocalObjectRef | None = Field(None, description=(
        "a Secret whose keys become the fetch step's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_ENDPOINT_URL, PGPASSWORD, GOOGLE_APPLICATION_CREDENTIALS, ...); locally the driver's own environment"))

    @field_validator("uri")
    @classmethod
    def _no_password(cls, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.password is not None or any(k.lower() in ("password", "secret", "token")
                                             for k, _ in parse_qsl(parts.query)):
            raise ValueError("spec.data.source.uri must not carry a password: put it in the Secret of secretRef "
                             "(PGPASSWORD, AWS_SECRET_ACCESS_KEY)")
        return uri


class Data(_Model):
    """Where the training data comes from: exactly one of world, persistentVolumeClaim or source."""

    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [
                cel(
                    "[has(self.world), has(self.persistentVolumeClaim), has(self.source)].filter(x, x).size() == 1",
                    DATA_ONE_OF,
                )
            ]
        ),
    )

    world: WorldData | None = Field(None, description="generate the simulated world in the training pod")
    persistent_volume_claim: VolumeData | None = Field(None, description="prepared world data on a volume")
    source: SourceData | None = Field(None, description="your own tables in a warehouse or object storage")
    declaration: Literal["world", "movielens-100k"] | None = Field(None, description=(
        "the declaration of the data's tables (trainer/schema.py): its features, label and proxy metrics, which the "
        "offline objective must name; default world. A source is fetched through it; a volume's world.json names "
        "its own"))
    custom_declaration: dict[str, Any] | None = Field(None, description=(
        "your own declaration of a source's tables, instead of a built-in one: the YAML of `cambrian data check "
        "--schema FILE` (name, tables and their columns, interactions, ids, features, signals, label, proxies; "
        "README: Bring your own data), checked by the operator"), json_schema_extra={"maxProperties": 16})

    @model_validator(mode="after")
    def _one(self) -> "Data":
        if sum(x is not None for x in (self.world, self.persistent_volume_claim, self.source)) != 1:
            raise ValueError(DATA_ONE_OF)
        if self.world is not None and self.declaration not in (None, "world"):
            raise ValueError(f"spec.data.declaration {self.declaration!r}: the simulated world is declared by world")
        if self.custom_declaration is not None:
            if self.source is None:
                raise ValueError("spec.data.customDeclaration declares a source's tables: give spec.data.source")
            if self.declaration is not None:
                raise ValueError("spec.data: give declaration (a built-in one) or customDeclaration, not both")
            self.declared()  # refused here, in one line, rather than by every training run
        return self

    def declared(self):
        """The data's declaration (trainer/schema.py): the custom one, checked, or a built-in one."""
        from cambrian.trainer.schema import declaration_of

        return declaration_of(self.declaration, self.custom_declaration, compile=False)

    def declared_label(self) -> str | None:
        """The label its declaration gives a row's `label` column (agents/canonical.declared_label), which
        de-duplication reads reward SQL by; None when the declaration is invalid (the Evolution reports that)."""
        from cambrian.agents.canonical import declared_label

        try:
            return declared_label(self.declared())
        except (ConfigError, ValueError):
            return None


class Storage(_Model):
    """Where trained model bundles are kept."""

    claim_name: str | None = Field(
        None, max_length=253, description="ReadWriteMany claim for bundles; without it bundles live in the Job only"
    )


class HTTPRouteRef(_Model):
    """A Gateway API HTTPRoute whose backend weights follow the rollout's."""

    name: str = Field(min_length=1, max_length=253, description="the HTTPRoute, in the rollout's namespace")
    port: int | None = Field(None, ge=1, le=65535, description=(
        "port of the Services in the route's backends (the rollout's router, the champion): they serve on "
        "spec.serving.port, the default; any other is refused"))


ROUTE_PORT_RULE = ("spec.serving.httpRoute.port must equal spec.serving.port, or be left unset: the route's backends "
                   "(the rollout's router, the champion) are Services that serve on spec.serving.port")


class Serving(_Model):
    """The model servers (one Deployment per arm) and the router of each rollout this loop starts."""

    model_config = ConfigDict(json_schema_extra=_x([cel(
        "!has(self.httpRoute) || !has(self.httpRoute.port) || self.httpRoute.port == (has(self.port) ? self.port : 8080)",
        ROUTE_PORT_RULE)]))

    image: str = Field("ghcr.io/cambrian-dev/cambrian:latest", min_length=1, max_length=1024,
                       description="model-server image; left at this default, the chart's serving.image is used")
    replicas: int = Field(1, ge=1, le=100, description="replicas of each arm's Deployment")
    port: int = Field(8080, ge=1, le=65535, description="port the arms and routers serve HTTP on")
    collector_url: str | None = Field(None, max_length=2048, description="event collector the routers report exposures to")
    http_route: HTTPRouteRef | None = Field(None, description="also set Gateway API HTTPRoute backend weights")

    @model_validator(mode="after")
    def _route_port(self) -> "Serving":
        route = self.http_route
        if route is not None and route.port not in (None, self.port):
            raise ValueError(f"httpRoute.port {route.port} must equal port {self.port}, or be left unset: the route's "
                             "backends (the rollout's router, the champion) are Services that serve on port")
        return self


class Noise(_Model):
    """How the loop tells a real offline gain from seed-to-seed noise (stats/noise.py). The baseline is trained
    with baselineSeeds seeds; a candidate whose gain on its first seed clears the noise floor
    max(z * standard error, minFloor) is promising and trains confirmSeeds more seeds; only a gain that still
    clears the floor over all its seeds is better, and only a better hypothesis is ever rolled out."""

    baseline_seeds: int = Field(3, ge=2, le=16, description="seeds the baseline is trained with to measure its "
                                                           "seed-to-seed noise (each is one evaluation)")
    confirm_seeds: int = Field(2, ge=1, le=16, description="extra seeds (evaluations) for each promising hypothesis "
                                                          "before it can be better")
    z: float = Field(2.0, gt=0, le=10, description="how many standard errors a gain must clear")
    min_floor: float = Field(1e-4, ge=0, description="absolute lower bound of the noise floor, in the metric's units")


class FirstLook(_Model):
    """How much cheaper a first look is than a full training (trainer/fidelity.py): the candidate's own Φ (the
    delta applied) for a fraction of its epochs on a fraction of its most recent examples, one seed."""

    epoch_fraction: float = Field(0.25, gt=0, le=1, description="epochs = max(1, round(Φ's epochs × this))")
    sample_fraction: float = Field(0.25, gt=0, le=1, description=(
        "training.maxTrainExamples = max(100, round(Φ's cap × this)), the most recent examples (a Φ without a cap "
        "keeps every example)"))


class Promote(_Model):
    """Which first looks go on to full training (reconcile/fidelity.py)."""

    min_gain_floors: float = Field(-1.0, ge=-10, le=10, description=(
        "a first look is promoted when its gain over the champion, both at first-look fidelity, is at least this "
        "many of that fidelity's noise floors (-1: stopped only when measurably worse than the champion)"))


class Fidelity(_Model):
    """Multi-fidelity: every candidate first trains cheaply; only a promoted one trains in full (then its
    confirmation seeds, as spec.noise says). The champion is trained at first-look fidelity with
    spec.noise.baselineSeeds seeds, once per champion: the first looks' reference and noise floor."""

    first_look: FirstLook = Field(default_factory=FirstLook, description="the cheap first training of each candidate")
    promote: Promote = Field(default_factory=Promote, description="the rule that sends a first look to full training")

    def wire_first_look(self) -> dict[str, float]:
        """What the trainer's --fidelity reads."""
        return {"epochFraction": self.first_look.epoch_fraction, "sampleFraction": self.first_look.sample_fraction}


class EvolutionSpec(_Model):
    """One self-evolving loop: baseline Φ, objectives, guardrails, agents, budgets, top-K, cadence."""

    baseline: dict[str, Any] = Field(
        default_factory=dict,
        description="the baseline model config Φ (trainer/config.py); {} is the built-in baseline",
    )
    objective: Objective = Field(description="what the loop optimises, offline and online")
    guardrails: list[Guardrail] = Field(
        default_factory=list, max_length=16,
        description="hard limits copied into every rollout the loop starts; a breach rolls the treatment back",
        json_schema_extra=_x(list_type="map", map_keys=["metric"]),
    )
    agent: Agent = Field(default_factory=Agent, description="who proposes hypotheses, how many, within which budgets")
    top_k: int = Field(2, ge=1, le=16, description="most treatments live at once")
    cadence: Cadence = Field(default_factory=Cadence, description="how often the offline and online agents run")
    launch_policy: Literal["auto", "manual"] = Field(
        "manual", description="auto: the rollouts this loop starts act on their analysis; manual: a promotion waits "
                  "for a human (cambrian.dev/approve annotation)"
    )
    training: Training = Field(default_factory=Training, description="the training Jobs of the loop's hypotheses")
    serving: Serving = Field(default_factory=Serving, description="the model servers and routers of its rollouts")
    storage: Storage = Field(default_factory=Storage, description="where trained model bundles are kept")
    experiment: "ExperimentTemplate" = Field(
        default_factory=lambda: ExperimentTemplate(), description="how the rollouts this loop starts are run"
    )
    data: Data = Field(description="the training data: the simulated world, or prepared data on a volume")
    noise: Noise = Field(default_factory=Noise, description="the noise floor a hypothesis's offline gain must clear")
    fidelity: Fidelity | None = Field(None, description=(
        "multi-fidelity: a cheap first look at every candidate, full training only for those promoted; absent "
        "(the default): every candidate trains in full at once"))

    @field_validator("baseline")
    @classmethod
    def _baseline_is_phi(cls, v: dict[str, Any]) -> dict[str, Any]:
        from cambrian.trainer.config import parse_config

        try:
            parse_config(v, "spec.baseline")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _promql_names(self) -> "EvolutionSpec":
        _check_promql_names(self.objective.promql, self.guardrails)
        return self

    @model_validator(mode="after")
    def _objective_is_declared(self) -> "EvolutionSpec":
        """Each offline objective is val_loss or a proxy that the data's declaration defines: the trainer reports
        no other metric, so an unknown name could never be judged."""
        declared = self.data.declared()
        known = ("val_loss", *(p.name for p in declared.proxies))
        defaults = OfflineObjective()  # a cluster's API server writes the CRD's defaults into the stored spec
        if "reward" in self.agent.personas and self.objective.offline.reward.metric == "val_loss":
            raise ValueError("objective.offline.reward.metric 'val_loss': a reward change redefines the label val_loss "
                             "is measured on, so it cannot score one; name a proxy of the data's declaration, or "
                             "leave the reward persona out of spec.agent.personas")
        for component in ("optimizer", "architecture", "reward", "training"):
            metric = self.objective.offline.for_component(component).metric
            if metric not in known:
                hint = ""
                if metric == defaults.for_component(component).metric:  # left at the default: the world's proxy
                    # e.g. the proxy the agents' prompts then fall back to (agents/personas.py for_declaration)
                    ranked = declared.first_rank_proxy() or known[-1]
                    hint = (f" (the default, a proxy of the world's declaration: set objective.offline.{component} to "
                            + (f"one of the declaration's proxies, e.g. {{metric: {ranked}, direction: maximize}})"
                               if len(known) > 1 else "{metric: val_loss, direction: minimize}, or declare a proxy)"
                               if component != "reward" else "{metric: val_loss, direction: minimize} with the reward "
                               "persona left out of spec.agent.personas, or declare a proxy)"))
                raise ValueError(f"objective.offline.{component}.metric {metric!r} is not a metric of the data's "
                                 f"declaration {declared.name!r}; known: {', '.join(known)}{hint}")
        return self


class Champion(_Status):
    """The model in production: the baseline, until a rollout promotes a hypothesis."""

    name: str | None = Field(None, description="baseline, or the name of the promoted hypothesis")
    config: dict[str, Any] | None = Field(None, description="its model configuration Φ, which new deltas apply to")
    hypothesis: str | None = Field(None, description="the promoted Hypothesis (empty for the baseline)")
    bundle: str | None = Field(None, description="URI of the model bundle it serves")
    rollout: str | None = Field(None, description="the Rollout that promoted it")
    since: datetime | None = Field(None, description="when it became champion")
    proxy_metrics: dict[str, "ProxyMetric"] = Field(
        default_factory=dict, max_length=64,
        description="a launched hypothesis's offline metrics over its seeds, kept at its launch: what new gains are "
                    "measured against, even once its Hypothesis object is deleted")


class Counters(_Status):
    """What the loop has done so far."""

    wakeups: int = Field(0, description="offline agent wake-ups")
    empty_wakeups: int = Field(0, description="the latest wake-ups in a row that created no Hypothesis (each "
                                              "doubles the wait before the next, up to 64 cadences)")
    reviews: int = Field(0, description="online agent reviews")
    proposed: int = Field(0, description="hypotheses of this loop")
    trained: int = Field(0, description="hypotheses trained and scored (Scored, Live, Launched or Retired)")
    failed: int = Field(0, description="hypotheses in phase Failed")
    rejected: int = Field(0, description="hypotheses in phase Rejected")
    live: int = Field(0, description="rollouts running now")
    launched: int = Field(0, description="hypotheses launched (promoted to champion)")


class Spend(_Status):
    """What the loop has spent, counted against spec.agent.budgets."""

    tokens: int = Field(0, description="LLM tokens (input and output)")
    dollars: float = Field(0.0, description="LLM cost in US dollars")
    gpu_hours: float = Field(0.0, description="GPU time of finished training attempts (wall time × GPUs)")
    evaluations: int = Field(0, description="training runs (attempts), the baseline's included")


class SpendLedger(_Status):
    """The Evolution's spend on its Hypotheses as a running total that deleting them does not take back
    (reconcile/ledger.py), bounded however many Hypotheses there are."""

    closed: Spend = Field(default_factory=Spend, description=(
        "spend of Hypotheses done spending (folded in once, then marked: annotation cambrian.dev/spend-counted), "
        "and the last-seen spend of Hypotheses deleted before they were"))
    closing: dict[str, Spend] = Field(default_factory=dict, description=(
        "Hypotheses folded into `closed` that do not carry the mark yet, with the spend folded (written at the next "
        "reconcile; forgotten once seen)"))
    open: dict[str, Spend] = Field(default_factory=dict, description=(
        "the last-seen spend of Hypotheses that may still spend (not trained yet, or training): counted if they "
        "are deleted"))


class PersonaShare(_Status):
    """One persona's part of the latest wake-up (spec.agent.scheduling)."""

    persona: str = Field(description="the persona")
    proposals: int = Field(description="proposals asked of it at the latest wake-up")
    yield_per_evaluation: float | None = Field(
        None, description="its offline gain in noise floors per evaluation so far (empty: not "
                          "measured yet)")
    evaluations: int = Field(0, description="training runs its judged or failed hypotheses cost")


class LastDecision(_Status):
    """The latest concluded rollout of the loop."""

    rollout: str = Field(description="the Rollout")
    outcome: Outcome = Field(description="promote, rollback, continue or inconclusive")
    winner: str | None = Field(None, description="the promoted hypothesis, when one was")
    reason: str = Field("", description="why, in words")
    time: datetime | None = Field(None, description="when the loop applied the decision")


class EvolutionStatus(_Status):
    """What the loop has done: champion, counters, spend, the last decision, the next runs."""

    observed_generation: int | None = Field(None, description="the metadata.generation this status reflects")
    phase: EvolutionPhase | None = Field(
        None, description="Running; BudgetExhausted (a budget is spent: no new proposals or training); or Failed")
    reason: str | None = Field(None, description="why the phase is not Running")
    champion: Champion = Field(default_factory=Champion)
    counters: Counters = Field(default_factory=Counters)
    spend: Spend = Field(default_factory=Spend)
    spend_ledger: SpendLedger = Field(default_factory=SpendLedger, description=(
        "what `spend` counts of Hypotheses that may be deleted since: a budget counts their spend too"))
    last_decision: LastDecision | None = None
    last_wakeup_at: datetime | None = Field(None, description="when the offline agents last woke up")
    backoff_counts_after: int = Field(0, description="wake-ups up to this one do not count towards the back-off "
                                                     "of counters.emptyWakeups (the spec changed after it)")
    next_wakeup_at: datetime | None = Field(None, description="when the offline agents wake up next")
    next_review_at: datetime | None = Field(None, description="when the online agent reviews the scored hypotheses next")
    live_rollouts: list[str] = Field(default_factory=list, max_length=64, description="the loop's rollouts running now")
    handled_decisions: list[str] = Field(
        default_factory=list, max_length=256,
        description="rollouts whose decision has been applied and that do not carry the mark yet (annotation "
                    "cambrian.dev/decision-applied, written at the next reconcile; the name is forgotten once it is seen)"
    )
    superseded: list[str] = Field(
        default_factory=list, max_length=256,
        description="rollouts that decided nothing about their treatment: promoted over a control that was no "
                    "longer the champion when the decision was applied (another rollout's winner was launched first; "
                    "not launched), or ended by the Evolution before their own analysis decided (a launch replaced "
                    "their control, or the online agent ranked other hypotheses above theirs). Their hypotheses go "
                    "back to the online review, to be tested against the current champion. Kept, like handledDecisions, until the "
                    "Rollout is marked (cambrian.dev/decision-applied: superseded)")
    baseline_metrics: dict[str, "ProxyMetric"] = Field(
        default_factory=dict, description="the baseline's offline metrics over its spec.noise.baselineSeeds seeds: "
                                          "mean and seed-to-seed std, the reference of the noise floor")
    baseline_runs: list["SeedRun"] = Field(
        default_factory=list, max_length=16,
        description="the baseline's training runs, one per seed, with the metrics each reported (what "
                    "baselineMetrics summarises)")
    first_look_reference: "FirstLookReference | None" = Field(
        None, description="spec.fidelity: the champion trained at first-look fidelity with spec.noise.baselineSeeds "
                          "seeds, the reference and noise floor of every first look (measured again after a launch)")
    persona_schedule: list[PersonaShare] = Field(
        default_factory=list, max_length=3,
        description="how the latest wake-up shared its proposals among the personas, highest priority first "
                    "(spec.agent.scheduling; the journal event PersonasScheduled says why)")
    repairs: list[str] = Field(
        default_factory=list, max_length=256,
        description="failed hypotheses sent back to the proposer with their error (each once) that do not carry "
                    "the mark yet (annotation cambrian.dev/repair-asked, written at the next reconcile; the name is "
                    "forgotten once it is seen)")
    conditions: list[Condition] = _CONDITIONS


# --------------------------------------------------------------------------------------------
# Hypothesis
# --------------------------------------------------------------------------------------------


class AlsoPatches(_Model):
    """JSON merge patches of other components' settings that the same idea needs (no code)."""

    optimizer: dict[str, Any] | None = Field(None, min_length=1, description="patch of the optimizer's settings",
                                             json_schema_extra={"maxProperties": 64})
    architecture: dict[str, Any] | None = Field(None, min_length=1, description="patch of the architecture's settings",
                                                json_schema_extra={"maxProperties": 64})
    reward: dict[str, Any] | None = Field(None, min_length=1, description="patch of the reward's settings",
                                          json_schema_extra={"maxProperties": 64})
    training: dict[str, Any] | None = Field(None, min_length=1, description="patch of the training settings",
                                            json_schema_extra={"maxProperties": 64})


def trainer_delta_json(component: Any, delta: Mapping[str, Any] | None) -> dict[str, Any]:
    """A Hypothesis's component and delta (wire form) -> the trainer's Delta JSON (trainer/delta.py)."""
    delta = delta or {}
    data: dict[str, Any] = {"component": component, "patch": delta.get("patch") or {}}
    if delta.get("code") is not None:
        data["code"] = delta["code"]
    also = {k: v for k, v in (delta.get("also") or {}).items() if v}
    if also:
        data["also"] = also
    return data


class HypothesisDelta(_Model):
    """A change against Φ[component]: a JSON merge patch and/or plugin code (trainer/delta.py), plus patches of
    other components' settings where the same idea needs them (`also`, e.g. training.gradClip's grad_clip)."""

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
    also: AlsoPatches | None = Field(None, description="patches of other components' settings the same idea needs")

    @model_validator(mode="after")
    def _rules(self) -> "HypothesisDelta":
        if not self.patch and not self.code:
            raise ValueError("spec.delta: a delta must change something: give a non-empty patch or code")
        if self.patch and "code" in self.patch:
            raise ValueError("spec.delta.patch.code: put plugin code in spec.delta.code")
        return self


class PredictedEffect(_Model):
    """What the proposer expects the change to do online."""

    metric: str | None = Field(None, max_length=128, description="the online metric expected to move")
    direction: Literal["increase", "decrease", "unknown"] = Field("unknown", description="increase, decrease or unknown")
    relative_change: float | None = Field(None, description="e.g. -0.01 for a 1% drop")
    description: str | None = Field(None, max_length=4096, description="the expected effect, in words")


class Origin(_Model):
    """Who proposed the hypothesis."""

    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [cel("self.kind != 'persona' || has(self.persona)", "spec.origin.persona is required when kind is persona", "FieldValueRequired")]
        ),
    )

    kind: Literal["persona", "human"] = Field("human", description="persona (an agent) or human")
    persona: Literal["optimizer", "architecture", "reward"] | None = Field(
        None, description="the persona that proposed it; required when kind is persona")
    category: Quota | None = Field(None, description="explore, exploit or innovate: the quota it was proposed under")
    author: str | None = Field(None, max_length=256, description="who proposed it, for a human")
    wakeup: int | None = Field(None, ge=0, description="the Evolution's wake-up that proposed it")
    repair_of: str | None = Field(None, max_length=253,
                                  description="the failed Hypothesis this one repairs (its proposer saw that error)")

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

    evolution_ref: LocalObjectRef = Field(description="the Evolution the hypothesis belongs to (immutable)")
    component: Component = Field(
        description="the part of the champion's configuration Φ the delta changes: optimizer, architecture, "
                    "reward or training (immutable)")
    explanation: str = Field(min_length=1, max_length=8192,
                             description="why the change should help, in words, from whoever proposed it")
    predicted_effect: PredictedEffect = Field(default_factory=PredictedEffect)
    delta: HypothesisDelta = Field(description="the change against the champion's Φ[component] (immutable)")
    origin: Origin = Field(default_factory=Origin)

    @model_validator(mode="after")
    def _code_component(self) -> "HypothesisSpec":
        if self.delta.code is not None and self.component not in ("optimizer", "architecture"):
            raise ValueError(_HYP_RULES[3]["message"])
        return self

    def trainer_delta(self):  # -> cambrian.trainer.delta.Delta
        from cambrian.trainer.delta import parse_delta

        return parse_delta(trainer_delta_json(self.component, self.delta.model_dump(exclude_none=True)), "spec.delta")


class ProxyMetric(_Status):
    """One offline metric, over the training runs (seeds) it was measured in."""

    value: float = Field(description="its value: the mean over the seeds")
    stderr: float | None = Field(None, description="standard error of the value (std / sqrt(seeds)); none for one seed")
    std: float | None = Field(None, description="seed-to-seed standard deviation; none for one seed")
    seeds: int = Field(1, description="training runs (seeds) the value is the mean of")


class SeedRun(_Status):
    """One finished training run of the hypothesis."""

    seed: int = Field(description="its training seed (the first run uses the champion's seed)")
    job: str = Field(description="the training Job")
    metrics: dict[str, float] = Field(default_factory=dict, description="the numeric metrics it reported")
    reused: str | None = Field(None, max_length=64,
                               description="a baseline run not trained again: its key in the run store, where an "
                                           "earlier run on the same data and settings left it")


class FirstLookReference(_Status):
    """The champion at first-look fidelity over several seeds (spec.fidelity)."""

    champion: str = Field(description="the champion it was measured for: baseline, or hypothesis/NAME for a "
                                      "launched hypothesis")
    epoch_fraction: float = Field(description="the first look's epoch fraction it was trained with")
    sample_fraction: float = Field(description="the first look's sample fraction it was trained with")
    runs: list[SeedRun] = Field(default_factory=list, max_length=16, description="its runs, one per seed")
    metrics: dict[str, ProxyMetric] = Field(
        default_factory=dict, description="its metrics over the seeds (empty while they train)")
    measured: int = Field(1, description="references trained so far, this one included (each costs "
                                         "spec.noise.baselineSeeds evaluations; the baseline's, when its first look "
                                         "is its full training, is its own seeds and costs none)")
    failed: str | None = Field(None, max_length=2048, description=(
        "why a run of it failed: first looks are then promoted without a judgement (full training, as without "
        "spec.fidelity) until the champion changes"))


class FirstLookStatus(_Status):
    """The hypothesis's cheap first training (spec.fidelity) and what was decided from it."""

    job: str = Field(description="the first look's training Job (its latest run)")
    runs: int = Field(1, description="first-look runs started (a retry after an infrastructure failure is one "
                                     "more; each is one evaluation)")
    seed: int = Field(description="its training seed")
    epoch_fraction: float = Field(description="the fraction of Φ's epochs it trained")
    sample_fraction: float = Field(description="the fraction of Φ's most recent examples it trained on")
    metrics: dict[str, float] = Field(default_factory=dict, description="the numeric metrics it reported")
    gain: float | None = Field(None, description="its gain over the champion at the same fidelity, positive when better")
    noise_floor: float | None = Field(None, description="that fidelity's noise floor for one seed")
    decision: Literal["promoted", "stopped"] | None = Field(
        None, description="promoted (trains in full, then as spec.noise says) or stopped (never trained in full; "
                          "verdict not_better); empty while it trains")
    reason: str | None = Field(None, max_length=2048, description="why, in words")


class ArmEffect(_Status):
    """The effect of one treatment arm against control on one metric."""

    arm: str = Field(description="the treatment arm")
    metric: str = Field(description="the online metric")
    estimate: float = Field(description="treatment minus control (a fraction of control's mean when relative)")
    ci_low: float = Field(description="lower end of the always-valid confidence interval of the estimate")
    ci_high: float = Field(description="upper end of the always-valid confidence interval of the estimate")
    relative: bool = Field(False, description="true: estimate and interval are fractions of control's mean")
    p_value: float | None = Field(None, description="always-valid p-value, Holm-adjusted across treatments")
    planned_effect: float | None = Field(
        None, description="group-sequential designs: the effect the design was sized for (what its planned users per "
                          "arm, plannedSamplePerArm or else 4 x minSamplePerArm, detect with 80% power; smaller changes "
                          "were out of its reach), on the estimate's scale")


class OnlineResult(_Status):
    """How the hypothesis did in its rollout."""

    rollout: str = Field(description="the Rollout")
    arm: str | None = Field(None, description="this hypothesis's treatment arm in the Rollout")
    decision: Outcome | None = Field(None, description="promote, rollback, continue or inconclusive")
    reason: str | None = Field(None, description="why, in words")
    effects: list[ArmEffect] = Field(default_factory=list, max_length=64, description="its own arm's effects, one per metric")


class HypothesisStatus(_Status):
    """How far the hypothesis got: validation, training, offline score, rollout and outcome."""

    observed_generation: int | None = Field(None, description="the metadata.generation this status reflects")
    phase: HypothesisPhase | None = Field(
        None, description="Proposed, Validated, Training, Scored, Live, then Launched or Retired (Scored again "
                          "when its Rollout decided nothing about it: a launch replaced the Rollout's control, or the "
                          "Evolution ended it); or Failed or Rejected, with the reason")
    reason: str | None = Field(None, max_length=8192, description="why the phase is what it is (e.g. the failure)")
    failure_stage: str | None = Field(
        None, description="where it failed: static (the delta does not apply), training, metrics, or the stage the "
                          "trainer reported")
    attempts: int = Field(0, description="training attempts so far (infrastructure failures are retried up to "
                                         "the Evolution's spec.training.maxAttempts)")
    job_name: str | None = Field(None, description="the training Job of the latest attempt")
    training_started_at: datetime | None = Field(None, description="when the latest attempt started")
    gpu_hours: float = Field(0.0, description="GPU time of finished attempts (wall time × GPUs)")
    config_fingerprint: str | None = Field(
        None, description="fingerprint of the champion's Φ with the delta applied; equal configurations share it")
    baseline: dict[str, Any] | None = Field(
        None, description="the champion's Φ it was validated against: every run of it (first look, training, "
                          "confirmation seeds) trains this with its delta, whatever is launched meanwhile")
    offline_metric: str | None = Field(
        None, description="the metric it is scored by (the Evolution's spec.objective.offline for its component)")
    offline_score: float | None = Field(None, description="the value of offlineMetric in its training run")
    proxy_metrics: dict[str, ProxyMetric] = Field(
        default_factory=dict, description="every metric the training run reported, with its noise estimate")
    bundle_uri: str | None = Field(None, description="URI of the trained model bundle")
    seed_runs: list[SeedRun] = Field(
        default_factory=list, max_length=17, description="its finished training runs: the first seed, then the "
                                                         "confirmation seeds of a promising hypothesis")
    first_look: FirstLookStatus | None = Field(
        None, description="spec.fidelity: its cheap first training and the promotion decision (seedRuns, "
                          "proxyMetrics and the verdict are of full trainings only; a stopped one has none)")
    confirmations: int = Field(0, description="confirmation seeds started (each run is one evaluation)")
    confirmation_retries: dict[str, int] = Field(
        default_factory=dict, description="runs of a confirmation seed retried after an infrastructure failure, by seed "
                                          "(each is one more evaluation; up to spec.training.maxAttempts runs a seed)")
    gain: float | None = Field(None, description="offlineScore's gain over the champion's, positive when better")
    noise_floor: float | None = Field(None, description="the gain a real improvement must exceed (spec.noise)")
    verdict: Literal["better", "promising", "not_better"] | None = Field(
        None, description="better (the gain clears the noise floor over several seeds; only these are rolled out), "
                          "promising (on one seed), or not_better")
    rollout: str | None = Field(None, description="the Rollout it is or was live in")
    undecided_tests: list[str] = Field(
        default_factory=list, max_length=16, description="its Rollouts that decided nothing about it (a launch "
        "replaced their control, or the Evolution ended them): it is tested again against the current champion, up "
        "to the Evolution's spec.experiment.maxTests tests")
    online: OnlineResult | None = None
    conditions: list[Condition] = _CONDITIONS


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


class ControlArm(_Model):
    """The arm every treatment is compared with (usually the champion)."""

    name: str = Field("control", min_length=1, max_length=40, pattern=NAME_PATTERN, description="the arm's name")
    bundle: str = Field(min_length=1, max_length=2048, description="model bundle URI the arm serves")
    hypothesis_ref: LocalObjectRef | None = Field(None, description="the Hypothesis whose model it serves, if any")


class TreatmentArm(_Model):
    """An arm serving a hypothesis's model."""

    name: str = Field(min_length=1, max_length=40, pattern=NAME_PATTERN, description="the arm's name, unique in the rollout")
    hypothesis_ref: LocalObjectRef = Field(description="the Hypothesis whose model it serves")
    bundle: str = Field(min_length=1, max_length=2048, description="model bundle URI the arm serves")


class RampStep(_Model):
    """One step of the traffic ramp."""

    model_config = ConfigDict(  # merged with _Model's camelCase aliases and extra=forbid
                json_schema_extra=_x(
            [
                cel("self.weights.all(w, w >= 0 && w <= 100)", "spec.ramp.steps[].weights: each weight must be within 0..100"),
                cel("self.weights.sum() == 100", "spec.ramp.steps[].weights must sum to 100"),
                # the router's slot rule (cambrian.online.assignment.treatment_weight_error): a weight that is
                # the control's alone (equal to weights[0] and found once) is exempt; every treatment's is not
                cel("self.weights.all(w, w * (size(self.weights) - 1) <= 100 || w == 100 || "
                    "(w == self.weights[0] && self.weights.filter(x, x == w).size() == 1))",
                    "spec.ramp.steps[].weights: each treatment may take at most 100/K percent with K treatments "
                    "(only a full launch at 100 may exceed it)"),
                cel("self.weights[0] > 0 || self.weights.exists(w, w == 100)",
                    "spec.ramp.steps[].weights: the control's weight may be 0 only in a full launch (a treatment at 100)"),
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
        from cambrian.online.assignment import treatment_weight_error

        error = treatment_weight_error(self.weights)
        if error:
            raise ValueError(f"spec.ramp.steps[].{error}")
        return self


_RAMP_RULES = [
    cel(
        "self.steps.map(s, 100 - s.weights[0]).isSorted() && "
        "self.steps.all(a, self.steps.exists_one(b, b.weights[0] == a.weights[0]))",
        "spec.ramp.steps: the treatment share (100 - control weight) must strictly increase from step to step",
    )
]


class Ramp(_Model):
    """How traffic moves to the treatments, step by step."""

    model_config = ConfigDict(json_schema_extra=_x(_RAMP_RULES))

    steps: list[RampStep] = Field(min_length=1, max_length=10,
                                  description="the steps in order; the treatments' share must grow at every step")

    @model_validator(mode="after")
    def _increasing(self) -> "Ramp":
        shares = [100 - s.weights[0] for s in self.steps]
        if any(b <= a for a, b in zip(shares, shares[1:])):
            raise ValueError(_RAMP_RULES[0]["message"])
        return self


class Readout(_Model):
    """When the analysis runs."""

    interval: Duration = _dur("1h", "how often the analysis reads Prometheus", POSITIVE_DURATION_PATTERN)


class RolloutMetrics(_Model):
    """What the rollout measures and when."""

    north_star: list[OnlineMetric] = Field(
        min_length=1, max_length=8, description="online metrics in order of importance; the first decides promotion",
        json_schema_extra=_x(list_type="map", map_keys=["name"]),
    )
    guardrails: list[Guardrail] = Field(
        default_factory=list, max_length=16, description="hard limits; a breach rolls the treatment back",
        json_schema_extra=_x(list_type="map", map_keys=["metric"]),
    )
    readout: Readout = Field(default_factory=Readout, description="when the analysis reads Prometheus")
    promql: list[PromQLMetric] = Field(
        default_factory=list, max_length=16, description=(
            "decision metrics defined in PromQL over your own series, referenced by name from northStar and "
            "guardrails (README: Metrics in PromQL over your own series)"),
        json_schema_extra=_x(list_type="map", map_keys=["name"]),
    )

    @model_validator(mode="after")
    def _promql_names(self) -> "RolloutMetrics":
        _check_promql_names(self.promql, self.guardrails)
        return self


class Statistics(_Model):
    """The sequential analysis: valid however often it looks."""

    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance level of a decision (false-positive rate)")
    method: Literal["msprt", "cs"] | None = Field(
        None, description="deprecated and ignored (accepted so that stored objects still parse): the test is "
        "chosen by `sequential`, and every decision reports its interval as a confidence sequence")
    sequential: Literal["group", "msprt"] = Field(
        "group", description="group: a group-sequential design that spends alpha over its horizon (maxDuration, "
        "or plannedSamplePerArm users per arm when set and reached first; every readout is a look, extra or "
        "missed looks stay valid, the last look spends what is left, futility stops lost causes); needs fewer "
        "users on average. msprt: the always-valid mixture SPRT, no horizon, more users")
    cuped: bool = Field(True, description="reduce variance with each user's pre-experiment value of the metric (CUPED)")
    min_sample_per_arm: int = Field(1000, ge=1, description="no decision before every arm has this many users")
    planned_sample_per_arm: int | None = Field(
        None, ge=1, description="users per arm the confidence sequence is tuned for (default 4 × minSamplePerArm); "
                                "when set, also the group design's end if reached before maxDuration"
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

    ramp: Ramp = Field(default_factory=_default_ramp,
                       description="traffic ramp of each rollout: two weights per step, control then treatment")
    readout: Readout = Field(default_factory=Readout, description="when the analysis reads Prometheus")
    statistics: Statistics = Field(default_factory=Statistics, description="settings of the analysis")
    max_tests: int = Field(3, ge=1, le=16, description="online tests per hypothesis: one whose Rollout decided "
                           "nothing about it (a launch replaced the control, or the Evolution ended it) is tested "
                           "again against the current champion, until this many; then it is Retired, undecided")
    preempt_after: Duration | None = _dur(
        None, "how long a live Rollout runs before the Online Agent's re-ranking may end it to free its slot "
              "(the paper's retire); unset: never, it runs to its own decision (futility included), a launch that "
              "replaces its control, or a human's", POSITIVE_DURATION_PATTERN)

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

    evolution_ref: LocalObjectRef | None = Field(None, description="the Evolution that started the rollout, if any")
    control: ControlArm = Field(description="the control arm (immutable)")
    treatments: list[TreatmentArm] = Field(
        min_length=1, max_length=4, description="the treatment arms (immutable)",
        json_schema_extra=_x(list_type="map", map_keys=["name"]),
    )
    salt: str = Field(min_length=1, max_length=128, description="hash salt: assignment = hash(user id, salt)")
    ramp: Ramp = Field(description="traffic ramp: per step, one weight per arm, control first")
    metrics: RolloutMetrics = Field(description="north-star metrics, guardrails and readout interval")
    statistics: Statistics = Field(default_factory=Statistics, description="settings of the analysis")
    decision_policy: Literal["auto", "manual"] = Field(
        "manual", description="auto acts on the analysis; manual waits for a human to set the cambrian.dev/approve "
                              "annotation (promote or rollback) before promoting")

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
    """One arm as served now."""

    name: str = Field(description="the arm")
    weight: int = Field(0, description="its traffic percent")
    n: int = Field(0, description="users assigned to it (at the last readout)")
    ready: bool = Field(False, description="its Deployment has a ready replica")
    outcome: Outcome | None = Field(
        None, description="a treatment arm's own verdict: at each readout the analysis's (continue while it runs); "
                          "once concluded its final one, which its Hypothesis records: promote (the winner), "
                          "rollback (harmful: a guardrail, a hard limit or a significantly worse north star; or the "
                          "whole Rollout rolled back by SRM, a human or its Evolution), inconclusive (its test ended "
                          "without an effect: futility, its final look or maxDuration) or continue (undecided: another "
                          "arm's promotion ended the Rollout first; its Hypothesis is tested again)")
    reason: str | None = Field(None, max_length=2048, description="why this arm's outcome, in words")
    stopped_at: datetime | None = Field(
        None, description="A/B/n: when this treatment was decided early (rollback or inconclusive) while other arms go "
                          "on. From then its users keep their assignment and its weight, but the router serves them "
                          "control's model (their exposures still count under this arm), and its Deployment is removed "
                          "once the router no longer sends it traffic; its verdict, effects and guardrails stay as "
                          "they were then")


class SRM(_Status):
    """The sample-ratio-mismatch check: do the arms' user counts match their weights?"""

    p_value: float = Field(description="p-value of the chi-square test of the counts against the weights")
    mismatch: bool = Field(description="true when pValue is below spec.statistics.srmAlpha: the assignment is broken "
                                       "and nothing is promoted")


class GuardrailReading(_Status):
    """One arm's guardrail (or hard limit) at the last readout."""

    arm: str = Field(description="the treatment arm")
    metric: str = Field(description="the guarded metric (spec.metrics.guardrails or a hard limit)")
    breached: bool = Field(description="true when it failed non-inferiority or crossed its hard limit: a breach stops "
                                       "that arm at once (rolls it back: its users are served control's model)")


class RolloutStatus(_Status):
    """Where the rollout is: ramp step, weights, users per arm, effects, decision."""

    observed_generation: int | None = Field(None, description="the metadata.generation this status reflects")
    phase: RolloutPhase | None = Field(
        None, description="Pending, Deploying, Running (AwaitingApproval with manual decisions), then Promoted, "
                          "RolledBack or Inconclusive; or Failed")
    step: int = Field(0, description="index of the current ramp step, from 0")
    weights_summary: str | None = Field(None, description="traffic percent per arm, e.g. control=95,treatment=5")
    arms: list[ArmStatus] = Field(default_factory=list, max_length=5, description="every arm's weight, users and readiness")
    effects: list[ArmEffect] = Field(default_factory=list, max_length=64,
                                     description="effects per treatment and metric at the last readout")
    guardrails: list[GuardrailReading] = Field(default_factory=list, max_length=64,
                                               description="every treatment arm's guardrails and hard limits at the "
                                                           "last readout: which were breached")
    srm: SRM | None = None
    decision: Outcome | None = Field(None, description="promote, rollback or inconclusive, once concluded")
    recommendation: Outcome | None = Field(None, description="what the analysis proposes while awaiting approval")
    winner: str | None = Field(None, description="the treatment arm to promote (or promoted)")
    reason: str | None = Field(None, max_length=8192, description="why the decision or the failure, in words")
    retired: str | None = Field(
        None, max_length=1024,
        description="why its Evolution ended it (its treatment left the top K, or a launch replaced its control), "
                    "when the rollback is the Evolution's and not its own analysis's, a human's or its time limit's")
    started_at: datetime | None = Field(None, description="when the ramp started")
    step_started_at: datetime | None = Field(None, description="when the current step started")
    next_readout_at: datetime | None = Field(None, description="when the analysis runs next")
    concluded_at: datetime | None = Field(None, description="when the rollout concluded")
    readouts: int = Field(0, description="analyses run so far")
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


# The standard texts of every Kubernetes object's first fields.
KIND_DESCRIPTION = ("Kind is a string value representing the REST resource this object represents. "
                    "In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/"
                    "api-conventions.md#types-kinds")


class _Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["cambrian.dev/v1alpha1"] = Field(
        API_VERSION, alias="apiVersion",
        description="APIVersion defines the versioned schema of this representation of an object. More info: "
                    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources")
    metadata: ObjectMeta


class Evolution(_Resource):
    """One self-evolving loop: agents propose Hypotheses against the champion model configuration, the
    operator trains and scores them, and Rollouts test the best online before one becomes champion."""

    kind: Literal["Evolution"] = Field("Evolution", description=KIND_DESCRIPTION)
    spec: EvolutionSpec
    status: EvolutionStatus = Field(default_factory=EvolutionStatus)


class Hypothesis(_Resource):
    """One proposed change to an Evolution's champion model: validated, trained in a Job, scored
    offline, and possibly tested online in a Rollout."""

    kind: Literal["Hypothesis"] = Field("Hypothesis", description=KIND_DESCRIPTION)
    spec: HypothesisSpec
    status: HypothesisStatus = Field(default_factory=HypothesisStatus)


class Rollout(_Resource):
    """One online experiment: model servers per arm, a router splitting users on a ramp, and a
    sequential analysis that promotes, rolls back or gives up."""

    kind: Literal["Rollout"] = Field("Rollout", description=KIND_DESCRIPTION)
    spec: RolloutSpec
    status: RolloutStatus = Field(default_factory=RolloutStatus)


EvolutionSpec.model_rebuild()
Champion.model_rebuild()
EvolutionStatus.model_rebuild()
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
