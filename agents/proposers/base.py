"""One interface for every proposer (Gemini, OpenAI-compatible, built-in) and the parsing of LLM output.

A proposer turns a request (persona, quotas, the rendered prompt, the journal) into raw proposals
`{category, explanation, predicted_effect, delta}`. It never validates deltas against Φ: the loop does
that, so every proposer's mistakes end up in the journal the same way (Rejected with the reason).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from cambrian.agents.journal import Hypothesis, Journal
from cambrian.agents.personas import Persona
from cambrian.trainer.config import ModelConfig

CATEGORIES = ("explore", "exploit", "innovate")


@dataclass
class ProposalRequest:
    persona: Persona
    generation: int
    quotas: dict[str, int]  # category -> how many proposals
    prompt: str
    baseline: ModelConfig
    journal: Journal
    repair_of: Hypothesis | None = None  # set for a self-repair request
    columns: tuple[str, ...] = ()  # what a reward may read under the data's declaration (empty: any)
    schema: Any = None  # the data's declaration (trainer/schema.py DataSchema; None: the world's)


@dataclass
class ProposerResult:
    proposals: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)  # reward persona: [{question, sql}]
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""
    error: str | None = None  # the response could not be used at all (malformed, empty, API error)
    raw_text: str = ""
    finish_reason: str | None = None


class Proposer(Protocol):
    name: str
    model: str

    def propose(self, request: ProposalRequest) -> ProposerResult: ...


class ProposalParseError(ValueError):
    pass


# JSON schema of the structured output (shared by Gemini's response_json_schema and OpenAI's json_schema).
# `patch` is free-form, which some structured-output backends refuse; `patch_json` (a JSON string) is
# accepted as an alternative by the parser.
PROPOSAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "proposals": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "category": {"type": "string", "enum": list(CATEGORIES)},
                    "explanation": {"type": "string"},
                    "predicted_effect": {"type": "string"},
                    "delta": {
                        "type": "object",
                        "properties": {
                            "component": {
                                "type": "string",
                                "enum": ["optimizer", "architecture", "reward", "training"],
                            },
                            "patch_json": {"type": "string", "description": "JSON object: merge patch of the component"},
                            "code": {"type": "string", "description": "optional plugin code"},
                            "also_json": {"type": "string", "description": (
                                "optional JSON object: merge patches of OTHER components' settings that the same "
                                "idea needs, by component, e.g. {\"training\": {\"grad_clip\": 1.0}}; no code")},
                        },
                        "required": ["component", "patch_json"],
                    },
                },
                "required": ["category", "explanation", "delta"],
            },
        },
        "queries": {
            "type": "array",
            "description": "optional read-only SQL analyses to run before the next wake-up",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "sql": {"type": "string"}},
                "required": ["question", "sql"],
            },
        },
    },
    "required": ["proposals"],
}

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_response_text(text: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Parse an LLM's JSON answer into (proposals, queries). Raises ProposalParseError with the cause."""
    if not text or not text.strip():
        raise ProposalParseError("empty response")
    body = text.strip()
    m = _FENCE.search(body)
    if m:
        body = m.group(1).strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ProposalParseError(f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(data, list):
        data = {"proposals": data}
    if not isinstance(data, dict) or not isinstance(data.get("proposals"), list):
        raise ProposalParseError("expected an object with a `proposals` list")
    proposals = []
    for i, p in enumerate(data["proposals"]):
        if not isinstance(p, dict):
            raise ProposalParseError(f"proposals[{i}] is not an object")
        proposals.append(normalise_proposal(p))
    queries = []
    for q in data.get("queries") or []:
        if isinstance(q, dict) and isinstance(q.get("sql"), str):
            queries.append({"question": str(q.get("question", "")), "sql": q["sql"]})
    return proposals, queries


def normalise_proposal(p: dict[str, Any]) -> dict[str, Any]:
    """Bring the accepted spellings to one shape; leave validation of the delta to the loop."""
    out = {
        "category": str(p.get("category", "explore")).lower(),
        "explanation": str(p.get("explanation", "")),
        "predicted_effect": str(p.get("predicted_effect", "")),
        "delta": p.get("delta"),
    }
    delta = out["delta"]
    if isinstance(delta, dict):
        delta = dict(delta)
        if "patch_json" in delta:
            raw = delta.pop("patch_json")
            try:
                delta["patch"] = json.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
            except json.JSONDecodeError as exc:
                delta["patch"] = {"__invalid_patch_json__": f"{exc.msg}"}
        if "also_json" in delta:
            raw = delta.pop("also_json")
            try:
                delta["also"] = json.loads(raw) if isinstance(raw, str) and raw.strip() else raw
            except json.JSONDecodeError as exc:  # the delta's own check (trainer/delta.py) names it
                delta["also"] = {"__invalid_also_json__": f"{exc.msg}"}
        if delta.get("also") in ("", None, {}):
            delta.pop("also", None)
        if delta.get("code") in ("", None):
            delta.pop("code", None)
        out["delta"] = delta
    return out
