"""The Online Agent: top-K selection from the journal, LLM ranking through the real google-genai client."""

import json

import pytest

from cambrian.agents.journal import Hypothesis, Journal, Score
from cambrian.agents.online import GeminiRanker, OnlineAgent, eligible, parse_ranking, record_outcome


def hyp(hid, gain, floor=0.01, phase="Scored", verdict="better", online=None, component="reward"):
    return Hypothesis(id=hid, generation=1, persona=component, component=component, category="explore",
                      delta={"component": component, "patch": {"label": "click"}}, phase=phase, verdict=verdict,
                      gain=gain, noise_floor=floor, primary_metric="long_watch_corr",
                      offline={"long_watch_corr": Score.of([0.1 + gain])}, online=online or {})


POOL = [
    hyp("a", 0.05), hyp("b", 0.20), hyp("c", 0.10),
    hyp("lost", 0.50, verdict="not_better"), hyp("failed", 0.9, phase="Failed", verdict=None),
    hyp("burned", 0.9, online={"decision": "rollback", "matured": True}),
]


def test_only_offline_winners_that_have_not_lost_online_are_eligible():
    assert {h.id for h in eligible(POOL)} == {"a", "b", "c"}


def test_builtin_rule_ranks_by_gain_in_noise_floors_and_plans_the_rollouts():
    live = hyp("a", 0.05, phase="Live")
    stale = hyp("old", 0.001, phase="Live", floor=1.0)
    sel = OnlineAgent(k=2).select([*POOL[1:], live, stale])
    assert sel.ranking == ["b", "c"] and sel.ranked_by == "builtin"
    assert sel.start == ["b", "c"] and sel.keep == [] and sel.retire == ["a", "old"]


def test_matured_online_win_outranks_offline_scores():
    winner = hyp("proven", 0.0001, phase="Live", online={"matured": True, "effect_z": 3.0})
    assert OnlineAgent(k=1).select([*POOL, winner]).ranking == ["proven"]


def test_nothing_eligible_retires_everything_live():
    sel = OnlineAgent(k=2).select([hyp("x", 0.1, phase="Live", online={"decision": "inconclusive", "matured": True})])
    assert sel.ranking == [] and "no scored hypothesis" in sel.note


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"), ("{not json", "not JSON"), ('{"ranked": []}', "no 'ranking'"),
    ('{"ranking": [{"name": "zzz", "reason": "r"}]}', "names no eligible"),
])
def test_bad_llm_rankings_are_refused(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_ranking(text, {"a", "b"}, 2)


def test_llm_ranking_filters_unknown_and_duplicate_names():
    text = json.dumps({"ranking": [{"name": "b", "reason": "best"}, {"name": "zzz", "reason": "?"},
                                   {"name": "b", "reason": "again"}, {"name": "a", "reason": "ok"}, {"name": "c"}]})
    assert parse_ranking(text, {"a", "b", "c"}, 2) == (["b", "a"], {"b": "best", "a": "ok"})


def _gemini_answer(text):
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20, "totalTokenCount": 120}}


def _ranker(url):
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=url))
    return GeminiRanker(client=client)


def test_gemini_ranks_through_the_real_client(gemini_replay):
    server = gemini_replay([_gemini_answer(json.dumps({"ranking": [{"name": "c", "reason": "reward fixes bait"}]}))])
    sel = OnlineAgent(k=2, ranker=_ranker(server.url), north_star=["returning_users"],
                      guardrails=["hate_rate must not rise by more than 1%"]).select(POOL)
    assert sel.ranking == ["c"] and sel.ranked_by == "gemini" and sel.reasons["c"] == "reward fixes bait"
    request = server.requests[0]
    assert ":generateContent" in request["path"]
    prompt = request["body"]["contents"][0]["parts"][0]["text"]
    assert "[b]" in prompt and "[lost]" not in prompt and "returning_users" in prompt and "hate_rate" in prompt
    # each entry names the metric its gain is on (the component's objective), which the instructions defer to
    assert "gain vs baseline on long_watch_corr" in prompt and "named in the entry" in prompt
    # the proxies it names are the surrogate's, each kind with its own
    assert "of watching top_watch_share, long_watch_corr, top_completion_share" in prompt
    assert "of satisfaction like_corr, top_like_share" in prompt and "in advance return_corr, auc" in prompt
    assert request["body"]["generationConfig"]["responseMimeType"] == "application/json"


def test_unusable_gemini_answer_falls_back_to_the_builtin_rule(gemini_replay):
    server = gemini_replay([_gemini_answer("I think b is best"), {"__status__": 500, "body": {"error": {"code": 500}}}])
    agent = OnlineAgent(k=1, ranker=_ranker(server.url))
    sel = agent.select(POOL)
    assert sel.ranking == ["b"] and sel.ranked_by == "builtin" and "unusable" in sel.note


def test_outcomes_are_written_back_to_the_journal(tmp_path):
    journal = Journal(tmp_path)
    journal.add(hyp("b", 0.2))
    record_outcome(journal, "b", "promote", {"effect": 0.03, "ci": [0.01, 0.05]}, launched=True)
    again = Journal(tmp_path).get("b")  # replayed from disk
    assert again.phase == "Launched" and again.online["decision"] == "promote" and again.online["matured"]
