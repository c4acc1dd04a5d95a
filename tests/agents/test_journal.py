import json

import pytest

from cambrian.errors import ConfigError
from cambrian.agents.journal import Failure, Hypothesis, Journal, Score, approx_tokens, render_journal


def hyp(i, val=None, persona="optimizer", component="optimizer", **kw):
    h = Hypothesis(id=f"g001-{i:02d}", generation=1, persona=persona, component=component, category="explore",
                   delta={"component": component, "patch": {"lr": 0.001 * i}}, explanation=f"idea {i}", **kw)
    if val is not None:
        h.offline = {"val_loss": Score.of([val])}
    return h


def test_replay_restores_everything(tmp_path):
    j = Journal(tmp_path)
    j.add(hyp(1))
    j.update("g001-01", phase="Scored", offline={"val_loss": Score.of([0.5, 0.52])}, verdict="not_better")
    j.set_baseline({"val_loss": Score.of([0.5, 0.51, 0.49])}, [0, 1, 2])
    j.record_usage("gemini", "gemini-2.5-pro", 100, 50, 0.01)
    j.record_evaluation("g001-01", 0, 12.5, True)
    j.mark_generation(1, "done")
    j.record_online("g001-01", {"return_rate": 0.51}, matured=True)
    again = Journal(tmp_path)
    h = again.get("g001-01")
    assert h.phase == "Scored" and h.offline["val_loss"].n == 2 and h.online["matured"] is True
    assert again.state.baseline["val_loss"].mean == pytest.approx(0.5)
    assert again.state.usage.input_tokens == 100 and again.state.usage.dollars == pytest.approx(0.01)
    assert again.state.evaluations == 1 and again.state.train_seconds == 12.5
    assert 1 in again.state.generations_done


def test_ids_are_never_duplicated(tmp_path):
    j = Journal(tmp_path)
    j.add(hyp(1))
    with pytest.raises(ValueError, match="already"):
        j.add(hyp(1))
    assert len(Journal(tmp_path).hypotheses) == 1  # the refused event never reached the disk


def test_torn_last_line_is_dropped_and_appends_continue(tmp_path):
    j = Journal(tmp_path)
    j.add(hyp(1))
    with open(j.path, "a") as fh:
        fh.write('{"type": "hypothesis", "data": {"id": "g001-0')  # killed mid-write
    j2 = Journal(tmp_path)
    assert [h.id for h in j2.hypotheses] == ["g001-01"]
    j2.add(hyp(2))
    assert [h.id for h in Journal(tmp_path).hypotheses] == ["g001-01", "g001-02"]


def test_corruption_in_the_middle_is_an_error(tmp_path):
    j = Journal(tmp_path)
    j.add(hyp(1))
    lines = j.path.read_text().splitlines()
    j.path.write_text("garbage\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="line 1"):
        Journal(tmp_path)


def test_readonly_refuses_writes(tmp_path):
    Journal(tmp_path).add(hyp(1))
    ro = Journal(tmp_path / "journal.jsonl", readonly=True)
    assert ro.get("g001-01")
    with pytest.raises(RuntimeError):
        ro.add(hyp(2))
    with pytest.raises(ConfigError):
        Journal(tmp_path / "nope", readonly=True)


def test_fingerprint_lookup_ignores_rejected(tmp_path):
    j = Journal(tmp_path)
    j.add(hyp(1, fingerprint="abc"))
    j.add(hyp(2, fingerprint="abc", phase="Rejected", reason="duplicate of g001-01"))
    assert j.by_fingerprint("abc").id == "g001-01"
    assert j.by_fingerprint("zzz") is None


def test_render_best_first_within_budget_and_only_matured_online():
    hs = [hyp(1, 0.60), hyp(2, 0.40), hyp(3, 0.50), hyp(4)]
    hs[3].phase, hs[3].reason = "Failed", "failed at static: import of 'os' is not allowed"
    hs[1].online = {"return_rate": 0.7, "matured": True}
    hs[2].online = {"return_rate": 0.9, "matured": False}
    text = render_journal(hs, "val_loss", True, token_budget=10_000)
    order = [text.index(f"[g001-0{i}]") for i in (2, 3, 1, 4)]
    assert order == sorted(order)  # best (lowest loss) first, unscored failures last
    assert "online (matured)" in text and '"return_rate": 0.7' in text and "0.9" not in text
    assert "import of 'os'" in text
    # higher-is-better metrics sort the other way
    up = render_journal(hs[:3], "val_loss", False, 10_000)
    assert up.index("[g001-01]") < up.index("[g001-02]")


def test_render_respects_token_budget():
    hs = [hyp(i, 0.5 + i / 100) for i in range(1, 40)]
    text = render_journal(hs, "val_loss", True, token_budget=300)
    assert approx_tokens(text) <= 300 + 20
    assert "[g001-01]" in text and "omitted" in text


def test_render_filters_component_and_duplicates():
    a = hyp(1, 0.5)
    b = hyp(2, 0.4, persona="reward", component="reward")
    c = hyp(3, 0.3, reason="duplicate of g001-01")
    text = render_journal([a, b, c], "val_loss", True, 1000, components=["optimizer"])
    assert "[g001-01]" in text and "[g001-02]" not in text and "[g001-03]" not in text


def test_events_are_json_lines(tmp_path):
    j = Journal(tmp_path)
    j.add(hyp(1))
    j.fail("g001-01", Failure(phase="Training", stage="timeout", reason="killed"))
    events = [json.loads(x) for x in j.path.read_text().splitlines()]
    assert [e["type"] for e in events] == ["hypothesis", "update"]
    assert [e["seq"] for e in events] == [1, 2]
    assert Journal(tmp_path).get("g001-01").failure.stage == "timeout"


def test_long_plugin_code_is_cut_in_prompts():
    h = hyp(1, 0.5)
    h.delta = {"component": "architecture", "patch": {}, "code": "x = 1\n" * 2000}
    text = render_journal([h], "val_loss", True, 10_000)
    assert "2000 lines in all" in text and len(text) < 2000


def test_example_settings_file_parses():
    from pathlib import Path

    from cambrian.agents.settings import load_evolve_config

    import cambrian.agents as agents

    cfg = load_evolve_config(Path(agents.__file__).parent / "evolve.example.yaml", env={})
    assert cfg.budgets.max_evaluations == 30 and cfg.provider.kind == "builtin"
