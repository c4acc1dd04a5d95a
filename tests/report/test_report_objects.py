"""`cambrian report` on a run of the operator's loop (`cambrian evolve -f`, `cambrian demo`): the stored
objects' status, the jobs and each rollout's timeline (written by the local driver) make the same report."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cambrian.errors import ConfigError
from cambrian.operator.local_driver import TIMELINE, LocalDriver
from cambrian.operator.platform.local import SIM_EPOCH
from cambrian.operator.reconcile.observations import Analysis
from cambrian.report import (arm_effects, best_so_far, champion, guardrail_series, load_run, online_outcomes,
                             planned_effects, proxy_vs_online, write_report)

T0 = SIM_EPOCH


def _iso(days: float) -> str:
    return (T0 + timedelta(days=days)).isoformat()


def _hyp(name: str, persona: str, status: dict, wakeup: int = 1, repair_of: str | None = None) -> dict:
    origin = {"kind": "persona", "persona": persona, "category": "exploit", "wakeup": wakeup}
    if repair_of:
        origin["repairOf"] = repair_of
    return {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": name},
            "spec": {"evolutionRef": {"name": "demo"}, "component": "optimizer", "explanation": "try it",
                     "delta": {"patch": {"lr": 0.01}}, "origin": origin}, "status": status}


def _detail(estimate: float, hate: float, outcome: str, planned: float | None = None) -> dict:
    """One arm of the statistics package's decision (stats.decision.ArmDecision.to_dict)."""
    return {"treatment": {"arm": "treatment", "outcome": outcome, "reason": "", "p_value": 0.01, "p_adjusted": 0.01,
                          "effect": {"estimate": estimate, "relative": True}, "ci": [estimate - 0.03, estimate + 0.03],
                          "planned_effect": planned,
                          "guardrails": [{"arm": "treatment", "metric": "hate_rate", "status": "pass", "estimate": hate,
                                          "lower": hate - 0.02, "upper": hate + 0.02, "bound": 0.1, "reason": ""}],
                          "breaches": []}}


@pytest.fixture
def driver_run(tmp_path):
    root = tmp_path / "evolve"
    driver = LocalDriver(root)
    store = driver.store
    store.put({"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "demo"},
               "spec": {"agent": {"provider": "builtin", "budgets": {"evaluations": 8}}},
               "status": {"phase": "BudgetExhausted", "reason": "budget evaluations is spent",
                          "champion": {"name": "demo-w1-0", "hypothesis": "demo-w1-0", "rollout": "ro-1",
                                       "bundle": "file:///b/demo-w1-0"},
                          "lastDecision": {"rollout": "ro-1", "outcome": "promote", "winner": "demo-w1-0",
                                           "reason": "watch_minutes +5%"},
                          "baselineMetrics": {"val_loss": {"value": 0.5, "std": 0.004, "stderr": 0.0023, "seeds": 3}},
                          "spend": {"evaluations": 7, "tokens": 0, "dollars": 0.0}}})
    score = {"proxyMetrics": {"val_loss": {"value": 0.48, "std": 0.002, "seeds": 3}}, "offlineMetric": "val_loss"}
    store.put(_hyp("demo-w1-0", "optimizer", {"phase": "Launched", "verdict": "better", "gain": 0.02,
                                              "noiseFloor": 0.005, "rollout": "ro-1", **score}))
    store.put(_hyp("demo-w1-1", "architecture", {"phase": "Failed", "failureStage": "training",
                                                 "reason": "loss is NaN"}))
    store.put(_hyp("demo-w2-0", "architecture", {"phase": "Scored", "verdict": "not_better", "gain": 0.001,
                                                 "noiseFloor": 0.005, **score}, wakeup=2, repair_of="demo-w1-1"))
    # judged on the Evolution's reward metric (return_corr), not the reward persona's default (long_watch_corr)
    store.put(_hyp("demo-w1-2", "reward", {"phase": "Scored", "verdict": "not_better", "gain": -0.01, "noiseFloor": 0.002,
                                           "offlineMetric": "return_corr", "proxyMetrics": {
                                               "return_corr": {"value": 0.01, "seeds": 1},
                                               "long_watch_corr": {"value": 0.09, "seeds": 1}}}))
    spec = {"evolutionRef": {"name": "demo"}, "control": {"name": "control", "bundle": "file:///b/base"},
            "treatments": [{"name": "treatment", "hypothesisRef": {"name": "demo-w1-0"}, "bundle": "file:///b/demo-w1-0"}],
            "metrics": {"northStar": [{"name": "watch_minutes"}]}}
    predicted = '{"hypothesis": "demo-w1-0", "mean": 0.031, "sd": 0.012, "by": "surrogate"}'  # as the core annotates
    store.put({"apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "spec": spec,
               "metadata": {"name": "ro-1", "annotations": {"cambrian.dev/predicted-effect": predicted}},
               "status": {"phase": "Promoted", "decision": "promote", "winner": "treatment", "reason": "watch_minutes +5%",
                          "startedAt": _iso(1), "concludedAt": _iso(3),
                          "arms": [{"name": "control", "weight": 0}, {"name": "treatment", "weight": 100}]}})
    # The rollout's history as the driver writes it while it steps the Rollout: start, two readouts (the
    # second replayed after a restart), the conclusion.
    arms = lambda c, t: [{"name": "control", "weight": c}, {"name": "treatment", "weight": t}]  # noqa: E731
    running = {"phase": "Running", "startedAt": _iso(1), "weightsSummary": "control=90,treatment=10", "arms": arms(90, 10)}
    driver.now = T0 + timedelta(days=1)
    driver._timeline("ro-1", {"phase": "Deploying"}, {**running, "readouts": 0}, None)
    driver.now = T0 + timedelta(days=2)
    first = Analysis("continue", "not yet", {"control": 400, "treatment": 60}, detail=_detail(0.03, 0.01, "continue"))
    ramped = {**running, "readouts": 1, "weightsSummary": "control=50,treatment=50", "arms": arms(50, 50)}
    driver._timeline("ro-1", {**running, "readouts": 0}, ramped, first)
    driver._timeline("ro-1", {**running, "readouts": 0}, ramped, first)  # replayed after a kill
    driver.now = T0 + timedelta(days=3)
    win = Analysis("promote", "watch_minutes +5%", {"control": 500, "treatment": 300}, "treatment",
                   detail=_detail(0.05, 0.0, "promote", planned=0.042))
    driver._timeline("ro-1", {**ramped}, {**ramped, "readouts": 2, "phase": "Promoted", "decision": "promote",
                                          "winner": "treatment", "weightsSummary": "control=0,treatment=100",
                                          "arms": arms(0, 100)}, win)
    return root


def test_a_driver_run_reads_as_the_same_report(driver_run, tmp_path):
    assert len((driver_run / "rollouts" / "ro-1" / TIMELINE).read_text().splitlines()) == 8
    run = load_run(driver_run)
    hs = run.by_id()
    assert set(hs) == {"demo-w1-0", "demo-w1-1", "demo-w1-2", "demo-w2-0"}
    assert (hs["demo-w1-0"].verdict, hs["demo-w1-0"].gain, hs["demo-w1-0"].noise_floor) == ("better", 0.02, 0.005)
    assert hs["demo-w1-0"].offline["val_loss"].n == 3 and run.baseline["val_loss"].std == 0.004
    assert hs["demo-w2-0"].parent == "demo-w1-1" and hs["demo-w2-0"].generation == 2
    assert hs["demo-w1-1"].failure.stage == "training"
    assert run.evaluations == 7 and run.generations_done == [1, 2]
    reward = best_so_far(run)["reward"]
    assert (reward["metric"], reward["lower"], reward["points"][0][1]) == ("return_corr", False, 0.01)
    assert champion(run) == ("demo-w1-0", "launched by rollout ro-1: watch_minutes +5%")
    (ro,) = run.rollouts
    assert ro.arm_hypothesis == {"treatment": "demo-w1-0"} and ro.result["outcome"] == "promote"
    assert [p[:2] for p in arm_effects(ro)["treatment"]] == [(0, 0.03), (1, 0.05)]  # the replay counts once
    assert planned_effects(ro) == {"treatment": 0.042}   # the latest readout that states it
    series, history = guardrail_series(ro)
    assert history and [g["estimate"] for g in series[("hate_rate", "treatment")]] == [0.01, 0.0]
    assert online_outcomes(run) == {"demo-w1-0": "promoted"}
    (point,) = proxy_vs_online(run)
    assert point["offline"] == pytest.approx(4.0) and point["online"] == 0.05  # gain in noise floors, effect
    assert point["predicted"] == {"hypothesis": "demo-w1-0", "mean": 0.031, "sd": 0.012, "by": "surrogate"}

    out = tmp_path / "report"
    html = write_report(run, out).read_text()
    for plot in ("offline_progress.png", "lineage.png", "effects_0_ro-1.png", "guardrails_0_ro-1.png",
                 "proxy_vs_online.png"):
        assert (out / plot).is_file() and f'src="{plot}"' in html
    assert "demo-w1-0 — launched by rollout ro-1" in html and "7 training run(s)" in html
    assert "predicted online effect (at launch)" in html and "+0.031 ± 0.012 (surrogate)" in html


def test_extra_rollout_folders_are_refused_for_a_driver_run(driver_run, tmp_path):
    with pytest.raises(ConfigError, match="keeps its rollouts itself"):
        load_run(driver_run, [tmp_path])


def test_a_driver_folder_with_two_evolutions_is_refused_clearly(driver_run):
    from cambrian.operator.localstore import LocalStore

    LocalStore(driver_run).put({"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution",
                                "metadata": {"name": "other"}, "spec": {}})
    with pytest.raises(ConfigError, match="expected one Evolution to report on, found demo, other"):
        load_run(driver_run)


def test_journal_reads_a_driver_run(driver_run):
    """`cambrian journal` on the --dir of `cambrian evolve -f`: each Hypothesis with its verdict and score (issue 12:
    the previous engine's journal.jsonl is no longer written, so the command reads the driver's objects)."""
    import json

    from typer.testing import CliRunner

    from cambrian.cli import app

    res = CliRunner().invoke(app, ["journal", str(driver_run), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = {h["id"]: h for h in out["hypotheses"]}
    assert set(rows) == {"demo-w1-0", "demo-w1-1", "demo-w1-2", "demo-w2-0"}
    assert rows["demo-w1-0"]["verdict"] == "better" and rows["demo-w2-0"]["parent"] == "demo-w1-1"
    assert out["baseline"]["val_loss"]["n"] == 3 and out["spend"]["evaluations"] == 7
    res = CliRunner().invoke(app, ["journal", str(driver_run), "--persona", "architecture"])
    assert res.exit_code == 0, res.output
    assert "demo-w1-1" in res.stdout and "demo-w2-0" in res.stdout and "demo-w1-0" not in res.stdout


def test_the_journal_table_shows_the_metric_a_hypothesis_was_judged_on(driver_run):
    """A reward hypothesis's row names the Evolution's reward objective (its offlineMetric), not the reward
    persona's own default metric (long_watch_corr), and the score on it."""
    from cambrian.agents.cli import journal_rows
    from cambrian.agents.personas import PERSONAS
    from cambrian.report import load_run

    rows = {r["id"]: r for r in journal_rows(load_run(driver_run))}
    assert PERSONAS["reward"].metric == "long_watch_corr"
    assert (rows["demo-w1-2"]["metric"], rows["demo-w1-2"]["score"]) == ("return_corr", 0.01)
    assert (rows["demo-w1-0"]["metric"], rows["demo-w1-0"]["score"]) == ("val_loss", 0.48)


def test_a_test_a_launch_overtook_reads_as_superseded_until_a_later_test_decides():
    from types import SimpleNamespace as NS

    promote = {"outcome": "promote", "winner": "treatment"}
    ended = {"outcome": "rollback", "reason": "retired by its Evolution: its control is no longer the champion"}
    rollouts = [NS(result=promote, arm_hypothesis={"treatment": "h-launched"}),
                NS(result=promote, arm_hypothesis={"treatment": "h-waiting"}),
                NS(result=ended, arm_hypothesis={"treatment": "h-ended"}),
                NS(result=promote, arm_hypothesis={"treatment": "h-old"}),
                NS(result=promote, arm_hypothesis={"treatment": "h-retested"}),
                NS(result={"outcome": "rollback"}, arm_hypothesis={"treatment": "h-retested"}),
                NS(result=ended, arm_hypothesis={"treatment": "h-undecided"})]
    hyps = [NS(id="h-launched", phase="Launched", online={"decision": "promote"}),
            NS(id="h-waiting", phase="Scored", online={}), NS(id="h-ended", phase="Scored", online={}),
            # an Evolution from before overtaken hypotheses were tested again
            NS(id="h-old", phase="Retired", online={"decision": "promote"}),
            NS(id="h-retested", phase="Retired", online={"decision": "rollback"}),
            NS(id="h-undecided", phase="Retired", online={})]  # retired after maxTests tests that decided nothing
    run = NS(rollouts=rollouts, by_id=lambda: {h.id: h for h in hyps})
    assert online_outcomes(run) == {"h-launched": "promoted", "h-waiting": "superseded", "h-ended": "superseded",
                                    "h-old": "superseded", "h-retested": "rolled back", "h-undecided": "superseded"}
