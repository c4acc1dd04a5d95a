"""The operator's loop on the LocalDriver with recorded Gemini responses served to the REAL google-genai client
over loopback (spec.agent.baseUrl).

Training is the scripted stand-in trainer (fast; same CLI/output contract, and it executes plugin code at top
level like the trainer's gate does), so hostile code really hangs or eats memory in the sandbox. What the core's
proposer does with each answer (quotas, persona, duplicates, notes) is tests/operator/test_proposing.py.
"""

import json

import pytest

from cambrian.agents.proposers.llm import GeminiProposer, OpenAIProposer  # noqa: F401  (the clients under test)


def evolution(server, personas, budgets, quotas=None) -> dict:
    from cambrian.operator.local_driver import NO_REVIEW

    quotas = quotas or {"explore": 2, "exploit": 1, "innovate": 2}
    return {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "gem"},
            "spec": {"agent": {"provider": "gemini", "model": "gemini-2.5-pro", "baseUrl": server.url,
                               "personas": personas, "proposalsPerWakeup": sum(quotas.values()), "quotas": quotas,
                               "budgets": budgets},
                     "objective": {"northStar": [{"name": "watch_minutes", "direction": "maximize"}]},
                     "cadence": {"offline": "1h", "online": NO_REVIEW}, "training": {"maxAttempts": 1},
                     "noise": {"baselineSeeds": 2, "confirmSeeds": 1},
                     "data": {"world": {"users": 150, "days": 4, "seed": 0}}}}  # the driver is given the data itself


def drive(tmp_path, world, trainer, objs, monkeypatch, wall_seconds=5, max_days=60.0):
    from cambrian.agents.settings import RunLimits
    from cambrian.operator.local_driver import LocalDriver
    from cambrian.operator.localstore import LocalStore

    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    driver = LocalDriver(tmp_path / "run", data_dir=world, train_command=trainer, workers=2, poll_s=0.1,
                         max_days=max_days, limits=RunLimits(wall_seconds=wall_seconds, rss_mb=300))
    driver.apply(objs)
    summary = driver.run()
    store = LocalStore(tmp_path / "run")
    return summary, store.get("evolutions", "default", "gem"), {h["metadata"]["name"]: h for h in store.list("hypotheses")}


def events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]


def test_recorded_wakeups_end_every_hypothesis_with_a_reason(tmp_path, tiny_world, fake_trainer, gemini_replay,
                                                             monkeypatch):
    """Wake-up 1: four hostile architectures. The two importing os / socket+subprocess fail the static gate with
    no training run; the infinite loop and the memory bomb are killed in the sandbox (timeout, memory). Wake-up 2:
    three valid proposals, then each failure goes back once with its error: the os one comes back as a DCN that
    trains, the socket one as a change outside the persona (dropped, said in the event), the others get no
    answer (HTTP 500: the wake-up goes on). The run stops before a third wake-up (simulated-time limit)."""
    server = gemini_replay(["architecture_hostile.json", "architecture_valid.json", "repair_architecture.json",
                            "wrong_component.json"])
    summary, evo, hs = drive(tmp_path, tiny_world, fake_trainer,
                             [evolution(server, ["architecture"], {"evaluations": 30})], monkeypatch,
                             wall_seconds=15, max_days=1.5 / 24)  # 5 s: a loaded machine's start-up alone timed out
    st = evo["status"]
    assert st["phase"] == "Running" and st["counters"]["wakeups"] == 2, st
    assert st["spend"]["tokens"] == 4 * 2200 and st["spend"]["dollars"] > 0  # every recorded answer is paid for
    for name, h in hs.items():
        assert h["status"]["phase"] in ("Scored", "Failed"), (name, h["status"])
        if h["status"]["phase"] == "Failed":
            assert h["status"]["reason"] and h["status"]["failureStage"], name

    def by_text(prefix):
        return next(h for h in hs.values() if h["spec"]["explanation"].startswith(prefix))

    os_h, net_h = by_text("Read the validation labels"), by_text("Fetch pretrained")
    loop_h, bomb_h = by_text("Iterate until convergence"), by_text("Precompute a huge")
    for h in (os_h, net_h):  # the static gate, before any training run
        assert h["status"]["failureStage"] == "static" and not h["status"].get("attempts"), h["status"]
    assert "'os'" in os_h["status"]["reason"]
    assert "socket" in net_h["status"]["reason"] or "subprocess" in net_h["status"]["reason"]
    assert loop_h["status"]["failureStage"] == "timeout" and bomb_h["status"]["failureStage"] == "memory"
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "run" / "jobs").glob("*/job.json")]
    assert not [j for j in jobs if j.get("hypothesis") in (os_h["metadata"]["name"], net_h["metadata"]["name"])]

    # self-repair at the next wake-up: the os candidate came back once, as a valid DCN that was trained
    children = [h for h in hs.values() if h["spec"]["origin"].get("repairOf")]
    (child,) = children
    assert child["spec"]["origin"]["repairOf"] == os_h["metadata"]["name"]
    assert child["status"]["phase"] == "Scored" and child["spec"]["delta"]["patch"]["name"] == "dcn"
    asked = set(st["repairs"]) | {n for n, h in hs.items()
                                  if (h["metadata"].get("annotations") or {}).get("cambrian.dev/repair-asked")}
    assert asked >= {os_h["metadata"]["name"], net_h["metadata"]["name"]}
    proposed = [e["message"] for e in events(tmp_path) if e["kind"] == "Evolution" and e["event"] == "Proposed"]
    assert any("outside the persona" in m for m in proposed), proposed
    # the valid proposals of wake-up 2 were trained and judged against the noise floor
    scored = [h for h in hs.values() if h["status"]["phase"] == "Scored"]
    assert len(scored) == 4 and all(h["status"]["verdict"] and h["status"]["noiseFloor"] for h in scored)

    # what was asked: structured output, the journal in the prompt, the failure and its error in the repair
    bodies = [r["body"] for r in server.requests]
    assert all("responseJsonSchema" in b["generationConfig"] for b in bodies)
    prompts = [b["contents"][0]["parts"][0]["text"] for b in bodies]
    assert "[EXPERIMENT JOURNAL]" in prompts[1] and "Iterate until convergence" in prompts[1]
    assert "REPAIR" in prompts[2] and "'os'" in prompts[2]


def test_a_token_budget_stops_the_asking_and_says_which(tmp_path, tiny_world, fake_trainer, gemini_replay,
                                                        monkeypatch):
    """2200 tokens for the first answer against a budget of 2000: the optimizer persona was asked, the
    architecture persona never. What was proposed is trained, or, once the Evolution has counted the spent
    budget (the core trains nothing more then), waits Validated and says why."""
    server = gemini_replay(["optimizer_valid.json", "architecture_valid.json"])
    summary, evo, hs = drive(tmp_path, tiny_world, fake_trainer,
                             [evolution(server, ["optimizer", "architecture"], {"tokens": 2000})], monkeypatch)
    st = evo["status"]
    assert st["phase"] == "BudgetExhausted" and "tokens" in st["reason"] and st["spend"]["tokens"] == 2200, st
    assert len(server.requests) == 1
    assert len(hs) == 3 and {h["spec"]["component"] for h in hs.values()} == {"optimizer"}
    for h in hs.values():
        if h["status"]["phase"] != "Scored":
            assert h["status"]["phase"] == "Validated" and not h["status"].get("attempts"), h["status"]
            assert any("budget tokens is spent" in c.get("message", "") for c in h["status"]["conditions"])


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
