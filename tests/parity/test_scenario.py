"""The parity scenario's pieces (testing/parity.py), fast: both platforms' training results say the same, the
readouts decide as the scenario needs, names normalize. The platforms themselves: test_platform_parity.py."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import pytest

from cambrian.operator import api
from cambrian.operator.platform.kubernetes import _termination_message
from cambrian.operator.reconcile import readout as RD
from cambrian.testing import parity as P

HYP = f"{P.EVOLUTION}-w1-0a1b2c3d"


@pytest.mark.parametrize("index", sorted(P.PLAN))
@pytest.mark.parametrize("seed", [0, 1000])
def test_the_local_trainer_and_the_kwok_message_report_the_same_result(tmp_path, index, seed):
    job = tmp_path / "jobs" / "j"
    (job / "work").mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"hypothesis": f"{HYP}-{index}"}))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"training": {"seed": seed}}))
    rc = P.train_main(["--config", str(config), "--data", str(tmp_path), "--out", str(job / "work" / "out")])
    out = job / "work" / "out"
    code, result = P.training_outcome(f"{HYP}-{index}", {"training": {"seed": seed}})
    message = _termination_message({"message": P.termination_message(code, result)})
    assert rc == code == (4 if P.PLAN[index].fails else 0)
    if code == 0:
        local = json.loads((out / "metrics.json").read_text())
        assert message["metrics"] == local and local["val_loss"] == pytest.approx(
            0.5 - (P.PLAN[index].confirm_gain if seed else P.PLAN[index].gain))
    else:
        assert message["error"] == json.loads((out / "error.json").read_text()) == {
            "stage": "training", "reason": "loss is NaN at step 3"}


def test_the_baseline_seeds_give_a_noise_floor():
    losses = [P.training_outcome(None, {"training": {"seed": s}})[1]["val_loss"] for s in (0, 1)]
    assert losses == [0.5, pytest.approx(0.502)]


def test_the_readouts_decide_as_the_scenario_needs():
    spec = api.parse_spec("Evolution", P.evolution()["spec"])
    tpl = spec.experiment
    rollout = api.RolloutSpec(
        control=api.ControlArm(name="control", bundle="pvc://bundles/a"),
        treatments=[api.TreatmentArm(name="treatment", bundle="pvc://bundles/b",
                                     hypothesis_ref=api.LocalObjectRef(name="h"))],
        salt="s", ramp=tpl.ramp, statistics=tpl.statistics, decision_policy="auto",
        metrics=api.RolloutMetrics(north_star=spec.objective.north_star, guardrails=spec.guardrails,
                                   readout=tpl.readout))
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    status = api.RolloutStatus(phase="Running", started_at=now - timedelta(seconds=10),
                               step_history=[now - timedelta(seconds=10)])
    decided = {}
    for i in (0, 1):
        r = P.readout(f"{P.EVOLUTION}-ro-{HYP}-{i}-12345678")
        a = RD.analyse(rollout, status, r.stats, now, r.exposures, r.cohorts)
        decided[i] = (a.outcome, a.winner, [g for g in a.guardrails if g[2]])
    assert decided == {0: ("promote", "treatment", []), 1: ("rollback", None, [("treatment", "sessions", True)])}


def test_names_lose_their_uid_digests():
    assert P.normalized(f"{P.EVOLUTION}-ro-{HYP}-1-12345678") == f"{P.EVOLUTION}-ro-{P.EVOLUTION}-w1-1"
    assert P.normalized("job parity-w1-4-train-1-35a7f8c0 failed") == "job parity-w1-4-train-1 failed"
    assert P.proposal_index(f"{P.EVOLUTION}-ro-{HYP}-3-12345678") == 3 and P.proposal_index("parity-bad") is None


def test_the_module_runs_as_the_local_training_command():
    assert P.local_train_command(P.Path("/b"))[:4] == [sys.executable, "-m", "cambrian.testing.parity", "train"]
    assert P.main([]) == 2


def test_the_transient_record_of_decisions_is_not_compared_and_their_effect_is():
    # lastDecision's order of two concurrent decisions is the clock's, and handledDecisions holds a decision only
    # until its Rollout is marked applied: what was decided shows in the champion (and the Hypotheses' phases)
    def evo(order, last, champion="parity-w1-0"):
        return {"status": {"phase": "BudgetExhausted", "handledDecisions": order, "lastDecision": {"rollout": last},
                           "champion": {"name": champion}}}

    a, b = ["parity-ro-x-0a1b2c3d", "parity-ro-y-0a1b2c3d"], ["parity-ro-y-4e5f6a7b", "parity-ro-x-4e5f6a7b"]
    assert P.summary("Evolution", evo(a, a[1])) == P.summary("Evolution", evo(b, b[1]))
    assert P.summary("Evolution", evo(a, a[1])) == P.summary("Evolution", evo([], a[0]))
    assert P.summary("Evolution", evo(a, a[1])) != P.summary("Evolution", evo(a, a[1], champion="baseline"))


def test_a_retirement_the_rollouts_own_readout_overtook_is_not_compared_and_a_real_one_is():
    def ro(name, retired=None):
        return ("Rollout", {"metadata": {"name": name}, "status": {"phase": "RolledBack", "retired": retired}})

    objects = [ro("parity-ro-a-1"), ro("parity-ro-b-1", retired="its control is no longer the champion")]
    msg = "rollout {} ended: its control is no longer the champion: x was launched by rollout y"
    assert P.retirement_decided_elsewhere("Evolution", "RolloutRetired", msg.format("parity-ro-a-1"), objects)
    assert not P.retirement_decided_elsewhere("Evolution", "RolloutRetired", msg.format("parity-ro-b-1"), objects)
    assert not P.retirement_decided_elsewhere("Evolution", "ChampionChanged", msg.format("parity-ro-a-1"), objects)
