"""bench/evolution.py: the offline loop of the search and throughput benchmarks as an Evolution on the
LocalDriver, and its evaluations read back (the stand-in trainer of tests/agents: seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cambrian.bench.evolution import evolution_object, run_on_driver
from cambrian.operator import api
from cambrian.testing.modules import load_file



AGENTS = load_file("tests/agents/conftest.py", "_bench_agents_conftest")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return AGENTS.write_tiny_world(tmp_path_factory.mktemp("world") / "data")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> list[str]:
    import sys

    path = tmp_path_factory.mktemp("fake") / "fake_train.py"
    path.write_text(AGENTS.FAKE_TRAINER)
    return [sys.executable, str(path)]


def test_budget_binds_and_every_evaluation_is_read_back_in_finish_order(tmp_path, world, trainer):
    obj = evolution_object("b", baseline={"training": {"seed": 5}}, world={"users": 150, "days": 4, "seed": 7},
                           evaluations=5, baseline_seeds=2, confirm_seeds=1)
    out = run_on_driver(tmp_path / "run", obj, world, workers=2, wall_seconds=60, train_command=trainer)
    status = api.parse_status("Evolution", out.evolution["status"])
    assert status.phase == "BudgetExhausted" and status.spend.evaluations == len(out.runs) == 5
    base = [r for r in out.runs if r.hypothesis == "baseline"]
    assert [r.seed for r in sorted(base, key=lambda r: r.seed)] == [5, 6]  # Φ0's seed, then the noise-floor seed
    # the values are what the status reports for each seed (baselineRuns, a Hypothesis's seedRuns)
    assert sorted(r.metrics["long_watch_corr"] for r in base) == sorted(
        r.metrics["long_watch_corr"] for r in status.baseline_runs)
    hyps = [r for r in out.runs if r.hypothesis != "baseline"]
    assert hyps and all(r.ok and r.persona and r.delta and r.seconds > 0 for r in hyps)
    finished = [r.finished_at for r in out.runs]
    assert finished == sorted(finished)
    assert not list((tmp_path / "run" / "rollouts").glob("*"))  # the offline loop alone: no Rollout started


def test_one_wakeup_proposes_once(tmp_path, world, trainer):
    obj = evolution_object("once", baseline={}, world={"users": 150, "days": 4, "seed": 7}, evaluations=40,
                           one_wakeup=True)
    out = run_on_driver(tmp_path / "run", obj, world, workers=2, wall_seconds=60, train_command=trainer)
    status = api.parse_status("Evolution", out.evolution["status"])
    assert status.counters.wakeups == 1 and status.phase == "Running"  # the budget is not what stopped it
    assert len(out.runs) == status.spend.evaluations < 40
    assert {r.hypothesis for r in out.runs} - {"baseline"}


def test_the_search_loop_judges_every_change_by_the_metric_the_arms_are_compared_on():
    from cambrian.bench.search import LOOP_OBJECTIVE, METRIC, judged_by
    from cambrian.operator import api

    obj = evolution_object("s", baseline={}, world={"users": 150, "days": 4, "seed": 7}, evaluations=10,
                           offline=LOOP_OBJECTIVE)
    assert judged_by(obj) == {c: f"{METRIC} maximize" for c in api.OfflineObjective.model_fields}
    plain = evolution_object("d", baseline={}, world={"users": 150, "days": 4, "seed": 7}, evaluations=10)
    assert api.parse_resource(plain).spec.objective.offline == api.OfflineObjective()
    # what run_loop reports beside each loop arm (read from the Evolution as stored at the end; the slow
    # search test checks it there) tells the defaults apart
    assert judged_by(plain) == {c: f"{m.metric} {m.direction}" for c, m in api.OfflineObjective()}
