"""The Online Agent: picks the top K of the journal for live experiments (paper §2.6-2.7).

It ranks the scored hypotheses by their expected online performance, weighing offline gains (in
units of the noise floor) against matured online results, and routes each candidate: newly in the
top K -> start a Rollout; live and still in the top K -> keep; live and dropped out -> retire.
Ranking is done by an LLM (Gemini or an OpenAI-compatible endpoint, structured output) or, without
a key, by the built-in rule; an unusable LLM answer falls back to the built-in rule and says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from cambrian.agents.journal import Hypothesis, Journal, render_entry
from cambrian.agents.surrogate import KINDS, PROXIES, fit_journal, sign, surrogate_rank

# the proxies as the surrogate reads them (its kinds, then those of no known direction): one list for both rankers
PROXY_TEXT = ("loss-independent proxies of the north star: of watching " + ", ".join(KINDS[0]) +
              "; of satisfaction " + ", ".join(KINDS[1]) + "; with no direction known in advance " +
              ", ".join(m for m in PROXIES if not any(m in kind for kind in KINDS)) +
              " (click skill can bring minutes or bait that costs them; the journal's online results say which)")

RANK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ranking": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["name", "reason"],
            },
        }
    },
    "required": ["ranking"],
}

ELIGIBLE_VERDICTS = {"better", "promising"}


@dataclass
class Selection:
    ranking: list[str]  # hypothesis ids, most promising first (at most k)
    reasons: dict[str, str]
    start: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    retire: list[str] = field(default_factory=list)
    ranked_by: str = "builtin"
    note: str = ""
    predictions: dict[str, dict[str, float]] = field(default_factory=dict)  # surrogate: id -> mean, sd


def rolled_back(h: Hypothesis) -> bool:
    return h.online.get("decision") in ("rollback", "inconclusive") or h.phase == "Retired"


def eligible(hypotheses: Iterable[Hypothesis]) -> list[Hypothesis]:
    """Scored candidates that beat the baseline offline and have not already lost online."""
    return [h for h in hypotheses
            if (h.phase == "Live" or (h.phase == "Scored" and h.verdict in ELIGIBLE_VERDICTS)) and not rolled_back(h)]


def expected_value(h: Hypothesis) -> float:
    """Built-in rule: a matured online effect outranks any offline score; else offline gain / noise floor."""
    online = h.online if h.online.get("matured") else {}
    if "effect_z" in online:
        return 1e3 + float(online["effect_z"])
    floor = h.noise_floor or 0.0
    gain = h.gain or 0.0
    return gain / floor if floor > 0 else gain * 1e3


def builtin_rank(pool: list[Hypothesis], k: int) -> tuple[list[str], dict[str, str]]:
    ordered = sorted(pool, key=lambda h: (-expected_value(h), h.created_at))[:k]
    reasons = {}
    for h in ordered:
        if h.online.get("matured"):
            reasons[h.id] = f"matured online result {json.dumps({m: v for m, v in h.online.items() if m != 'matured'}, sort_keys=True)[:200]}"
        else:
            reasons[h.id] = (f"offline {h.primary_metric} gain {h.gain:.4g} = {expected_value(h):.2f} noise floors"
                             if h.gain is not None else "scored")
    return [h.id for h in ordered], reasons


def build_prompt(pool: list[Hypothesis], k: int, north_star: list[str], guardrails: list[str],
                 direction: str = "maximize") -> str:
    """The paper's Online Agent prompt (Figure 3): rank top K; smaller offline loss is better; guardrails;
    `direction`: which way is good for the first north-star metric."""
    journal = "\n".join(render_entry(h, h.primary_metric or "val_loss") for h in
                        sorted(pool, key=lambda h: -expected_value(h)))
    return (
        "You are a brilliant and innovative ML scientist with deep expertise in online experimentation for "
        "recommender systems.\n\nGOAL: from the experiment journal below, rank the top "
        f"{k} configurations expected to maximise online performance. Online metrics in order of importance: "
        f"{', '.join(north_star) or 'north star'} (the first is to {direction}). Offline: each entry's gain is on "
        f"its component's objective, named in the entry (losses are not comparable across rewards); {PROXY_TEXT}. "
        "Prefer candidates whose gain clears the noise floor, and steer away from regions that "
        "looked good offline but failed online.\n"
        f"GUARDRAILS (must hold): {'; '.join(guardrails) or 'none'}.\n\n"
        f"EXPERIMENT JOURNAL (best offline first):\n{journal}\n\n"
        'OUTPUT: JSON {"ranking": [{"name": <hypothesis id in brackets above>, "reason": <one sentence>}]}, '
        f"most promising first, at most {k} items."
    )


def parse_ranking(text: str | None, pool_ids: set[str], k: int) -> tuple[list[str], dict[str, str]]:
    """Validated ranking from an LLM answer: known ids only, no duplicates, at most k. Raises ValueError."""
    if not text or not text.strip():
        raise ValueError("empty answer")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    items = data.get("ranking") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError("no 'ranking' list in the answer")
    ranking, reasons = [], {}
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in pool_ids and name not in reasons:
            ranking.append(name)
            reasons[name] = str(item.get("reason", ""))[:300]
    if not ranking:
        raise ValueError("the answer names no eligible hypothesis")
    ranking = ranking[:k]
    return ranking, {name: reasons[name] for name in ranking}


class GeminiRanker:
    """Asks Gemini (google-genai, structured output) for the ranking; returns the answer's text."""

    name = "gemini"

    def __init__(self, model: str = "gemini-2.5-pro", client: Any = None, base_url: str | None = None):
        from google import genai
        from google.genai import types

        self._types = types
        self.model = model
        if client is None:
            key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
            if not key:
                raise ValueError("the gemini provider needs GEMINI_API_KEY")
            client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base_url))
        self.client = client

    def complete(self, prompt: str) -> str | None:
        response = self.client.models.generate_content(
            model=self.model, contents=prompt,
            config=self._types.GenerateContentConfig(temperature=0.2, response_mime_type="application/json",
                                                     response_json_schema=RANK_SCHEMA))
        return response.text


class OnlineAgent:
    def __init__(self, k: int, ranker: Any = None, north_star: list[str] | None = None,
                 guardrails: list[str] | None = None, surrogate: bool = True, kappa: float = 1.0,
                 direction: str = "maximize"):
        if k < 1:
            raise ValueError("k must be at least 1")
        self.k = k
        self.surrogate, self.kappa = surrogate, kappa
        self.ranker = ranker
        self.north_star = north_star or []
        self.guardrails = guardrails or []
        self.direction = direction  # of the first north-star metric, whose effect the surrogate learns

    def select(self, hypotheses: Iterable[Hypothesis]) -> Selection:
        hs = list(hypotheses)
        pool = eligible(hs)
        live = {h.id for h in hs if h.phase == "Live"}
        if not pool:
            return Selection([], {}, retire=sorted(live), note="no scored hypothesis beats the baseline offline")
        ranking, reasons = builtin_rank(pool, self.k)
        ranked_by, note, predictions = "builtin", "", {}
        # once enough rollouts have concluded, the surrogate (offline proxies -> online effect) ranks
        better = sign(self.direction)
        model = fit_journal(hs, better=better) if self.surrogate else None
        if model is not None:
            ranking, reasons, predictions = surrogate_rank(pool, model, self.k, self.kappa, better)
            ranked_by = "surrogate"
        if self.ranker is not None:
            try:
                prompt = build_prompt(pool, self.k, self.north_star, self.guardrails, self.direction)
                text = self.ranker.complete(prompt)
                ranking, reasons = parse_ranking(text, {h.id for h in pool}, self.k)
                ranked_by = self.ranker.name
            except Exception as exc:  # an unusable answer never stops the loop: fall back, and say why
                note = f"{self.ranker.name} ranking unusable ({type(exc).__name__}: {str(exc)[:200]}); used the built-in rule"
        top = set(ranking)
        return Selection(ranking, reasons, start=[i for i in ranking if i not in live],
                         keep=[i for i in ranking if i in live], retire=sorted(live - top),
                         ranked_by=ranked_by, note=note, predictions=predictions)


def record_outcome(journal: Journal, hid: str, decision: str, metrics: dict[str, Any], launched: bool) -> Hypothesis:
    """Write a finished experiment's matured online results back to the journal."""
    journal.record_online(hid, {"decision": decision, **metrics}, matured=True)
    phase = "Launched" if launched else "Retired"
    return journal.update(hid, phase=phase, reason=f"online: {decision}")
