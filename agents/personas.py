"""The three specialised personas (paper §2.5): each sees only its component(s) of Φ and its own
offline metric, which keeps the prompt small (the paper saw hallucinations from ~400k tokens)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cambrian.trainer.config import ModelConfig

# Columns of the trainer's `impressions` view (CONTRACTS.md, world data) that reward SQL can use.
_CONTRACT_COLUMNS = [
    "impression_id", "day", "user_id", "session", "step", "position", "item_id", "click", "watch_seconds",
    "completion", "skip", "like", "hate", "topic", "length_min", "thumb_intensity", "home_topic",
    "returned_next_day",
]  # fmt: skip


def reward_columns(schema: Any = None) -> list[str]:
    """The columns a reward may read under the data's declaration (trainer/schema.py row_columns; the world's by
    default), else the documented contract of the world."""
    try:
        from cambrian.trainer.schema import WORLD, row_columns

        return list(row_columns(schema or WORLD))
    except Exception:  # the trainer is optional for prompt building
        return _CONTRACT_COLUMNS


def for_declaration(persona: "Persona", schema: Any, metric: str | None = None) -> "Persona":
    """The persona as the data's declaration (trainer/schema.py) and the Evolution's objective define its metrics:
    unchanged when its metric is the objective (`metric`, for its component) or no objective is given and the
    data reports it; otherwise the objective (or, unknown to the data, the first declared rank proxy) among the
    declared proxies, each named with its signal, so a prompt asks for the metric the hypothesis is judged by and
    never for one the trainer cannot report."""
    import dataclasses

    known = {"val_loss", *(p.name for p in schema.proxies)}
    secondary = tuple(m for m in persona.secondary_metrics if m in known)
    if persona.metric in known and (metric is None or metric == persona.metric or metric not in known):
        return dataclasses.replace(persona, secondary_metrics=secondary)
    primary = metric if metric in known else schema.first_rank_proxy() or "val_loss"

    def describe(p: Any) -> str:
        if p.kind == "auc":
            return f"{p.name} (AUC of {p.signal})"
        if p.kind == "top_share":
            return f"{p.name} (each user's share of {p.signal} in the user's top {p.top:.0%} of rows by score)"
        return f"{p.name} (rank correlation of the score with {p.signal})"

    described = [describe(p) for p in schema.proxies]
    text = (f"{primary} on held-out days (HIGHER is better); the data's proxies: {'; '.join(described)}. "
            "Loss is NOT comparable across reward definitions, so it is not shown")
    return dataclasses.replace(persona, metric=primary, lower_is_better=primary == "val_loss", metric_text=text,
                               secondary_metrics=tuple(p.name for p in schema.proxies if p.name != primary))


@dataclass(frozen=True)
class Persona:
    name: str
    components: tuple[str, ...]  # the parts of Φ it may see and change
    specialization: str
    metric: str  # primary offline metric
    lower_is_better: bool
    metric_text: str  # how the prompt names the metric ({AGENT_OFFLINE_METRIC})
    secondary_metrics: tuple[str, ...] = ()
    uses_sql: bool = False
    guidance: str = ""
    example: dict[str, Any] = field(default_factory=dict)

    def view(self, config: ModelConfig) -> dict[str, Any]:
        """The persona's slice of Φ: nothing else reaches its prompt."""
        data = config.model_dump(mode="json")
        return {c: data[c] for c in self.components}

    def metrics(self) -> tuple[str, ...]:
        return (self.metric, *self.secondary_metrics)


OPTIMIZER = Persona(
    name="optimizer",
    components=("optimizer", "training"),
    specialization="optimization for deep recommender models: update rules, learning-rate schedules, "
    "batch sizes, epochs and regularisation",
    metric="val_loss",
    lower_is_better=True,
    metric_text="val_loss (validation loss of the unchanged training objective; lower is better)",
    guidance=(
        "You may change `optimizer` (name: any torch.optim class such as Adam, AdamW, Adagrad, RMSprop, SGD; "
        "lr, weight_decay, params for extra keyword arguments) or `training` (epochs, batch_size, grad_clip). "
        "Plugin code for the optimizer may define build_optimizer(params, cfg)."
    ),
    example={
        "category": "explore",
        "explanation": "Adagrad adapts per-parameter step sizes, which suits sparse embedding rows that are "
        "updated rarely; it often lowers loss for ranking models with large id vocabularies.",
        "predicted_effect": "val_loss -1%",
        "delta": {"component": "optimizer", "patch": {"name": "Adagrad", "lr": 0.05}},
    },
)

ARCHITECTURE = Persona(
    name="architecture",
    components=("architecture",),
    specialization="neural ranking architectures: feature interactions (DCN, FM), gating, normalisation, "
    "embedding design",
    metric="val_loss",
    lower_is_better=True,
    metric_text="val_loss (validation loss of the unchanged training objective; lower is better)",
    guidance=(
        "You may change `architecture` settings (name of a registered model such as mlp or dcn, embedding_dim, "
        "hidden, dropout, activation, cross_layers, params) or give plugin code defining `class Model(nn.Module)` "
        "in the delta's `code` field: `__init__(self, spec, cfg)` and `forward(self, batch)` returning one logit per "
        "row; `batch` holds the data set's declared features by name: int64 ids for each name in `spec.fields` "
        "(user, item, then each categorical feature; `spec.size(name)` embedding rows) and float32 values for each "
        "name in `spec.dense`, also stacked as `batch['dense']`. Code may import torch and "
        "cambrian.trainer.plugin_api; it runs in a sandbox without network, files or processes."
    ),
    example={
        "category": "innovate",
        "explanation": "Explicit feature crosses capture user-topic x item-topic interactions that an MLP "
        "learns slowly; a DCN with two cross layers should fit them with few parameters.",
        "predicted_effect": "val_loss -0.5%",
        "delta": {"component": "architecture", "patch": {"name": "dcn", "cross_layers": 2}},
    },
)

REWARD = Persona(
    name="reward",
    components=("reward",),
    specialization="reward engineering for recommender systems: turning engagement logs into training labels "
    "that predict long-term user satisfaction rather than clicks alone",
    metric="long_watch_corr",
    lower_is_better=False,
    metric_text=(
        "long_watch_corr (rank correlation of the model's score with long watches on held-out days; HIGHER is "
        "better) and return_corr (with the user returning the next day; a per-user label, so it barely ranks "
        "impressions). Loss is NOT comparable across reward definitions, so it is not shown"
    ),
    secondary_metrics=("return_corr",),
    uses_sql=True,
    guidance=(
        "A reward delta patches `reward.label` and/or `reward.weight`: DuckDB SQL expressions evaluated per "
        "impression. label must lie in [0, 1] for the bce loss; weight must be finite and non-negative. "
        "Columns: {COLUMNS}."
    ),
    example={
        "category": "innovate",
        "explanation": "Clicks that lead to a long watch are better evidence of satisfaction than clicks alone; "
        "weighting clicked impressions by completion should favour items users finish.",
        "predicted_effect": "long_watch_corr +0.05",
        "delta": {"component": "reward", "patch": {"label": "CAST(click AS DOUBLE) * LEAST(completion, 1.0)"}},
    },
)

# the default order of spec.agent.personas (operator/api.py): reward first
PERSONAS: dict[str, Persona] = {p.name: p for p in (REWARD, ARCHITECTURE, OPTIMIZER)}


def get_persona(name: str) -> Persona:
    try:
        return PERSONAS[name]
    except KeyError:
        raise KeyError(f"unknown persona {name!r}; choose from {sorted(PERSONAS)}") from None


def persona_guidance(p: Persona, schema: Any = None) -> str:
    return p.guidance.replace("{COLUMNS}", ", ".join(reward_columns(schema)))


def declared_example(p: Persona, schema: Any = None) -> dict[str, Any]:
    """The persona's few-shot example for the data's declaration: the reward persona's reads the world's click and
    completion, so on another declaration it is the first reward the built-in proposer derives from that
    declaration (agents/proposers/builtin.py declared_rewards), over its own columns; unchanged otherwise (and
    where the declaration offers none)."""
    if "reward" not in p.components or schema is None:
        return p.example
    from cambrian.agents.proposers.builtin import declared_rewards

    entry = next(iter(declared_rewards(schema)), None)
    if entry is None:
        return p.example
    return {"category": entry.category, "explanation": entry.explanation, "predicted_effect": entry.effect,
            "delta": entry.render({})}


def example_json(p: Persona, schema: Any = None) -> str:
    """The few-shot example in the exact output shape (patch as a JSON string, see PROPOSAL_SCHEMA), for the data's
    declaration (declared_example)."""
    ex = dict(declared_example(p, schema))
    delta = dict(ex["delta"])
    delta["patch_json"] = json.dumps(delta.pop("patch"), sort_keys=True)
    ex["delta"] = delta
    return json.dumps({"proposals": [ex]}, indent=2)
