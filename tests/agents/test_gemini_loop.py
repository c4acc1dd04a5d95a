"""The loop driven by recorded Gemini responses served to the REAL google-genai client over loopback.

Training is the scripted stand-in trainer (fast; same CLI/output contract, and it executes plugin code
at top level like the trainer's gate does), so hostile code really hangs or eats memory in the sandbox.
"""

import json

import pytest

from cambrian.agents.evolve import Evolution
from cambrian.agents.journal import Journal
from cambrian.agents.proposers.llm import GeminiProposer, OpenAIProposer
from cambrian.agents.settings import parse_evolve_config


def settings(tmp_path, world, trainer, **over):
    data = {"data_dir": str(world), "run_dir": str(tmp_path / "run"), "generations": 1, "workers": 2,
            "train_command": trainer, "limits": {"wall_seconds": 10, "rss_mb": 300},
            "noise": {"baseline_seeds": 2, "confirm_top": 1, "confirm_seeds": 1},
            "quotas": {"explore": 2, "exploit": 1, "innovate": 2}, "provider": {"kind": "gemini", "retries": 1}}
    data.update(over)
    return parse_evolve_config(data, env={})


def gemini(server):
    return GeminiProposer(model="gemini-2.5-pro", api_key="test-key", base_url=server.url)


def test_recorded_generation_ends_every_hypothesis_with_a_reason(tmp_path, tiny_world, fake_trainer, gemini_replay):
    server = gemini_replay([
        "malformed.json", "optimizer_valid.json",  # optimizer: retried once after malformed JSON
        "architecture_hostile.json",  # os / socket+subprocess / infinite loop / memory bomb
        "reward_valid.json",  # with one valid and one DROP analysis query
        "repair_architecture.json",  # repair of the os-importing candidate
        "empty_max_tokens.json", "empty_max_tokens.json",  # repair of the socket one: empty twice -> give up
        "wrong_component.json",  # repair of the infinite loop: proposes a reward change -> Rejected
        # repair of the memory bomb: no recorded answer left -> HTTP 500 -> given up, loop continues
    ])
    cfg = settings(tmp_path, tiny_world, fake_trainer)
    result = Evolution(cfg, proposer=gemini(server)).run()
    j = Journal(cfg.run_dir)
    hs = {h.id: h for h in j.hypotheses}
    assert result.stop_reason == "completed all generations"
    for h in hs.values():
        assert h.phase in ("Scored", "Failed", "Rejected"), (h.id, h.phase)
        if h.phase != "Scored":
            assert h.reason and h.failure is not None, h.id

    def by_text(prefix):
        return next(h for h in hs.values() if h.explanation.startswith(prefix))

    os_h = by_text("Read the validation labels")
    assert os_h.phase == "Failed" and os_h.failure.stage == "static" and "'os'" in os_h.reason
    net_h = by_text("Fetch pretrained")
    assert net_h.phase == "Failed" and net_h.failure.stage == "static"
    assert "socket" in net_h.reason or "subprocess" in net_h.reason
    loop_h = by_text("Iterate until convergence")
    assert loop_h.phase == "Failed" and loop_h.failure.stage == "timeout"
    bomb_h = by_text("Precompute a huge")
    assert bomb_h.phase == "Failed" and bomb_h.failure.stage == "memory"

    # self-repair: the os candidate came back once as a valid DCN and was trained
    child = [h for h in hs.values() if h.parent == os_h.id]
    assert len(child) == 1 and child[0].phase == "Scored" and child[0].delta["patch"]["name"] == "dcn"
    wrong = [h for h in hs.values() if h.parent == loop_h.id]
    assert len(wrong) == 1 and wrong[0].phase == "Rejected" and wrong[0].failure.stage == "persona"
    assert not [h for h in hs.values() if h.parent in (net_h.id, bomb_h.id)]

    # the valid proposals were trained and judged against the noise floor
    scored = [h for h in hs.values() if h.phase == "Scored" and h.id != "baseline"]
    assert {h.persona for h in scored} == {"optimizer", "architecture", "reward"}
    assert all(h.verdict and h.noise_floor is not None for h in scored)
    winners = [h for h in scored if h.verdict == "better"]
    assert winners and winners[0].persona == "reward"  # the stand-in rewards return-aware labels

    # spend, prompts and analyses
    assert j.state.usage.input_tokens == 1800 * 8  # every recorded answer is paid for and j.state.usage.dollars > 0
    bodies = [r["body"] for r in server.requests]
    assert all("responseJsonSchema" in b["generationConfig"] for b in bodies)
    prompts = [b["contents"][0]["parts"][0]["text"] for b in bodies]
    assert "[EXPERIMENT JOURNAL]" in prompts[1] and "BASELINE: val_loss=" in prompts[1]
    reward_prompt = prompts[3]
    assert "Next-day return rate" in reward_prompt and "return_rate" in reward_prompt
    assert "val_loss" not in reward_prompt.split("[EXPERIMENT JOURNAL]")[1].split("EXAMPLE PROPOSAL")[0]
    repair_prompt = prompts[4]
    assert "REPAIR" in repair_prompt and "'os'" in repair_prompt
    analyses = {a["question"]: a["output"] for a in j.state.analyses}
    assert analyses["Try to write"].startswith("ERROR: rejected")
    assert "ERROR" not in analyses["Return rate by number of hates per user-day"]


def test_unusable_answers_become_rejected_hypotheses(tmp_path, tiny_world, fake_trainer, gemini_replay):
    server = gemini_replay(["malformed.json", "empty_max_tokens.json"])
    cfg = settings(tmp_path, tiny_world, fake_trainer, personas=["optimizer"])
    result = Evolution(cfg, proposer=gemini(server)).run()
    rejected = [h for h in Journal(cfg.run_dir).hypotheses if h.phase == "Rejected"]
    assert len(rejected) == 1 and rejected[0].failure.stage == "llm"
    assert "empty response (finish reason MAX_TOKENS)" in rejected[0].reason
    assert result.stop_reason == "completed all generations"


def test_duplicates_wrong_persona_and_invalid_values_are_rejected(tmp_path, tiny_world, fake_trainer, gemini_replay):
    server = gemini_replay(["wrong_component.json"])
    cfg = settings(tmp_path, tiny_world, fake_trainer, personas=["optimizer"], repair=False)
    Evolution(cfg, proposer=gemini(server)).run()
    hs = [h for h in Journal(cfg.run_dir).hypotheses if h.id != "baseline"]
    stages = sorted(h.failure.stage for h in hs)
    assert stages == ["duplicate", "parse", "persona"]
    dup = next(h for h in hs if h.failure.stage == "duplicate")
    assert "duplicate of baseline" in dup.reason
    bad = next(h for h in hs if h.failure.stage == "parse")
    assert "optimizer.lr" in bad.reason
    assert Journal(cfg.run_dir).state.evaluations == 2  # only the baseline seeds were trained


def test_budget_stops_cleanly_and_says_which(tmp_path, tiny_world, fake_trainer, gemini_replay):
    server = gemini_replay(["optimizer_valid.json", "architecture_valid.json"])
    cfg = settings(tmp_path, tiny_world, fake_trainer, personas=["optimizer", "architecture"],
                   budgets={"max_tokens": 2000}, generations=3)
    result = Evolution(cfg, proposer=gemini(server)).run()
    assert "tokens budget" in result.stop_reason
    assert len(server.requests) == 1  # 2200 tokens spent; the second wake-up found the budget gone
    j = Journal(cfg.run_dir)
    assert j.state.stop_reason == result.stop_reason
    # what was proposed before the budget ran out is still trained and scored
    assert sorted(h.phase for h in j.hypotheses if h.persona == "optimizer") == ["Scored"] * 3
    assert 1 not in j.state.generations_done  # the architecture persona never woke up


def test_evaluation_budget_leaves_the_rest_proposed_with_the_reason(tmp_path, tiny_world, fake_trainer,
                                                                    gemini_replay):
    server = gemini_replay(["optimizer_valid.json"])
    cfg = settings(tmp_path, tiny_world, fake_trainer, personas=["optimizer"], budgets={"max_evaluations": 3},
                   workers=1)
    result = Evolution(cfg, proposer=gemini(server)).run()
    assert "evaluations budget" in result.stop_reason
    j = Journal(cfg.run_dir)
    assert j.state.evaluations == 3
    left = [h for h in j.hypotheses if h.phase == "Proposed"]
    assert len(left) == 2 and all("not trained: evaluations budget" in h.reason for h in left)


def test_openai_compatible_endpoint(tmp_path, gemini_replay):
    """The OpenAI client against a loopback chat-completions endpoint (same replay server)."""
    answer = json.dumps({"proposals": [{"category": "explore", "explanation": "AdamW",
                                        "delta": {"component": "optimizer", "patch_json": '{"name": "AdamW"}'}}]})
    server = gemini_replay([{"id": "c1", "object": "chat.completion", "created": 0, "model": "local-model",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": answer}}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}])
    from cambrian.agents.personas import OPTIMIZER
    from cambrian.agents.proposers.base import ProposalRequest

    p = OpenAIProposer(model="local-model", base_url=server.url + "/v1", api_key="k")
    res = p.propose(ProposalRequest(OPTIMIZER, 1, {"explore": 1}, "prompt", None, None))
    assert res.error is None and res.proposals[0]["delta"]["patch"] == {"name": "AdamW"}
    assert res.input_tokens == 10 and res.output_tokens == 5
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert server.requests[0]["body"]["response_format"]["type"] == "json_schema"


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    from cambrian.errors import ConfigError
    from cambrian.agents.proposers import make_proposer
    from cambrian.agents.settings import ProviderSettings

    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        make_proposer(ProviderSettings(kind="gemini"))
