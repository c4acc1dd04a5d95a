"""The shared prompt template (paper Figure 4) filled with the Offline Agent's task (Figure 2).

PERSONA / {AGENT_TASK} / CONTEXT ([BASELINE CONFIGURATION], {SQL_QUERY_OUTPUT}, [EXPERIMENT JOURNAL]) /
EXAMPLE PROPOSAL ({AGENT_EXAMPLE}). Pure functions: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from cambrian.agents.journal import Hypothesis
from cambrian.agents.personas import Persona, example_json, persona_guidance

TEMPLATE = """\
PERSONA
You are a brilliant and innovative ML scientist with excellent programming and analytical skills, with
deep expertise in {AGENT_SPECIALIZATION}.

{AGENT_TASK}

CONTEXT
[BASELINE CONFIGURATION] (only the part of the model configuration you may change)
{BASELINE_CONFIGURATION}
{SQL_SECTION}
[EXPERIMENT JOURNAL] past experiments of your component, sorted by offline score, best first
{EXPERIMENT_JOURNAL}

EXAMPLE PROPOSAL
{AGENT_EXAMPLE}
"""

TASK = """\
GOAL
Propose changes to the ranking model that
(a) balance exploration, exploitation and innovation: make exactly {N_EXPLORE} exploration, {N_EXPLOIT}
    exploitation and {N_INNOVATE} innovation proposals (category "explore", "exploit", "innovate").
    Exploration tries a different region; exploitation refines the best results in the journal;
    innovation writes new logic (new structures, new reward signals), not a small numeric tweak;
(b) improve the offline metric {AGENT_OFFLINE_METRIC}
    while maximising the online metrics, in order of importance: {ONLINE_METRICS}.
Look for changes that improve the offline metric within regions that historically produced good online
metrics, and steer away from directions that looked good offline but failed online. Never repeat a delta
already in the journal: it will not be trained again. A gain smaller than the baseline's seed-to-seed
noise floor ({NOISE_FLOOR}) does not count.
{GUIDANCE}
{STEERING}
OUTPUT FORMAT
Think step by step and double-check the syntax. Answer with one JSON object {{"proposals": [...]}}; each
proposal has `category`, `explanation` (what the change is and why it may help), `predicted_effect`, and
`delta` = {{"component": one of {COMPONENTS}, "patch_json": a JSON object merged into that component's
settings (null removes a key), "code": optional plugin code, "also_json": optional JSON object of merge
patches of OTHER components' settings that the same idea needs, e.g. {{"training": {{"grad_clip": 1.0}}}}
with an optimizer change}}. A delta is a change against the baseline, never a whole configuration.{QUERIES_NOTE}
"""

REPAIR = """\
REPAIR
Your earlier proposal {ID} failed. Its delta:
{DELTA}
The error ({STAGE}):
{ERROR}
Return exactly one corrected proposal (category "exploit") that keeps the idea but fixes the error.
"""


def build_prompt(
    persona: Persona,
    baseline_view: dict,
    journal_text: str,
    quotas: dict[str, int],
    online_metrics: list[str],
    noise_floor: float | None,
    sql_output: str | None = None,
    steering: str | None = None,
    repair_of: Hypothesis | None = None,
    schema: Any = None,
) -> str:
    """`schema`: the data's declaration (trainer/schema.py; the world's when None): the columns a reward may read
    and the tables queries may read are its own (the persona comes as personas.for_declaration made it)."""
    tables = ", ".join(schema.tables) if schema is not None else "impressions, user_days, items, users"
    task = TASK.format(
        N_EXPLORE=quotas.get("explore", 0),
        N_EXPLOIT=quotas.get("exploit", 0),
        N_INNOVATE=quotas.get("innovate", 0),
        AGENT_OFFLINE_METRIC=persona.metric_text,
        ONLINE_METRICS=", ".join(f"Metric#{i + 1} {m}" for i, m in enumerate(online_metrics)) or "(none configured)",
        NOISE_FLOOR="not measured yet" if noise_floor is None else f"{noise_floor:.4g} on {persona.metric}",
        GUIDANCE=persona_guidance(persona, schema),
        STEERING=f"STEERING (from a human)\n{steering}\n" if steering else "",
        COMPONENTS=" | ".join(persona.components),
        QUERIES_NOTE=(
            '\nYou may also add "queries": [{"question", "sql"}] - read-only DuckDB SELECT queries over the tables '
            f"{tables}; their results appear in your next prompt."
            if persona.uses_sql
            else ""
        ),
    )
    if repair_of is not None:
        f = repair_of.failure
        task += "\n" + REPAIR.format(
            ID=repair_of.id,
            DELTA=json.dumps(repair_of.delta, sort_keys=True),
            STAGE=f.stage if f else "unknown",
            ERROR=(f.reason if f else repair_of.reason)[:2000],
        )
    sql_section = ""
    if persona.uses_sql:
        sql_section = "\n{SQL_QUERY_OUTPUT} results of your past data analyses\n" + (sql_output or "(no analyses yet)") + "\n"
    return TEMPLATE.format(
        AGENT_SPECIALIZATION=persona.specialization,
        AGENT_TASK=task.rstrip(),
        BASELINE_CONFIGURATION=json.dumps(baseline_view, indent=2, sort_keys=True),
        SQL_SECTION=sql_section,
        EXPERIMENT_JOURNAL=journal_text,
        AGENT_EXAMPLE=example_json(persona, schema),
    )
