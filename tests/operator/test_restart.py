"""Restart at each step: replaying a reconcile from the last persisted status (as after an operator
crash between applying actions and saving the status) must not create a second child, must use the
same child names, and must keep the experiment clocks that were already persisted."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from cambrian.operator import api
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import (
    ClearWeights,
    CreateTrainingJob,
    DeleteArm,
    DeleteJob,
    DeployArm,
    RecordJournal,
    SetWeights,
)
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import Analysis, ArmObservation, JobObservation, RolloutObservation

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


class FakePlatform:
    """In-memory children; creates are idempotent by name, like the Kubernetes adapter."""

    def __init__(self):
        self.jobs: dict[str, JobObservation] = {}
        self.arms: dict[str, ArmObservation] = {}
        self.weights: dict[str, int] | None = None
        self.created: list[str] = []

    def apply(self, actions):
        for a in actions:
            if isinstance(a, CreateTrainingJob):
                if a.name not in self.jobs:
                    self.jobs[a.name] = JobObservation(a.name, "Pending")
                    self.created.append(a.name)
            elif isinstance(a, DeleteJob):
                self.jobs.pop(a.name, None)
            elif isinstance(a, DeployArm):
                if a.arm not in self.arms:
                    self.arms[a.arm] = ArmObservation(a.name, True, False)
                    self.created.append(a.name)
            elif isinstance(a, DeleteArm):
                self.arms.pop(a.arm, None)
            elif isinstance(a, SetWeights):
                self.weights = a.as_dict()
            elif isinstance(a, ClearWeights):
                self.weights = None
            else:
                assert isinstance(a, RecordJournal), a


def drive(step_fn, events, status, check_clocks):
    """events: list of (now, mutate(platform)). At every step, first replay from the persisted status
    after applying once (the crash), then continue normally from the replayed result."""
    p = FakePlatform()
    history = []
    for now, mutate in events:
        mutate(p)
        first = step_fn(status, p, now)
        p.apply(first.actions)
        created = list(p.created)
        # crash: status not saved; a new operator replays from `status` a little later
        replay = step_fn(status, p, now + timedelta(seconds=5))
        p.apply(replay.actions)
        assert p.created == created, f"replay created a duplicate child: {p.created[len(created):]}"
        creates = {a.name for a in replay.actions if isinstance(a, (CreateTrainingJob, DeployArm))}
        assert creates <= set(p.jobs) | {x.name for x in p.arms.values()}
        check_clocks(status, replay.status, now + timedelta(seconds=5))
        # a plain restart after the save: re-running with nothing new creates nothing new
        again = step_fn(replay.status, p, now + timedelta(seconds=6))
        p.apply(again.actions)
        assert p.created == created
        assert not [a for a in again.actions if isinstance(a, (CreateTrainingJob, DeployArm))]
        status = replay.status
        history.append(status.phase)
    return status, p, history


def test_hypothesis_restart_at_each_step():
    meta = Meta("h", "uid-h", "ns", 1)
    evo = api.EvolutionSpec.model_validate(
        {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}}, "training": {"maxAttempts": 2}}
    )
    # the baseline over three seeds (0.5 ± 0.01): the candidate's 0.5 is within the noise, Scored at once
    ctx = H.EvolutionContext("evo", "uid-e", evo, {}, reference={"val_loss": api.ProxyMetric(value=0.5, std=0.01, seeds=3)})
    spec = api.HypothesisSpec.model_validate(
        {"evolutionRef": {"name": "evo"}, "component": "optimizer", "explanation": "x", "delta": {"patch": {"lr": 0.02}}}
    )

    def step(st, p, now):
        return H.reconcile(meta, spec, st, ctx, list(p.jobs.values()), None, now)

    def set_job(state, **kw):
        def mutate(p):
            n = max(p.jobs)  # the latest attempt
            p.jobs[n] = replace(p.jobs[n], state=state, **kw)
        return mutate

    def clocks(before, after, now):
        if before.training_started_at is not None and before.attempts == after.attempts:
            assert after.training_started_at == before.training_started_at

    events = [
        (T0, lambda p: None),
        (T0 + timedelta(minutes=1), set_job("Running")),
        (T0 + timedelta(minutes=2), set_job("Failed", exit_code=137, reason="OOMKilled")),
        (T0 + timedelta(minutes=3), set_job("Running")),
        (T0 + timedelta(minutes=4), set_job("Succeeded", exit_code=0, metrics={"val_loss": 0.5}, bundle_uri="b")),
        (T0 + timedelta(minutes=5), lambda p: None),
    ]
    final, p, history = drive(step, events, api.HypothesisStatus(), clocks)
    assert history == ["Training", "Training", "Training", "Training", "Scored", "Scored"]
    assert p.created == [H.job_name(meta, 1), H.job_name(meta, 2)]
    assert final.attempts == 2 and final.offline_score == 0.5


def test_rollout_restart_at_each_step():
    meta = Meta("ro", "uid-r", "ns", 1)
    spec = api.RolloutSpec.model_validate(
        {
            "control": {"bundle": "c"},
            "treatments": [{"name": "t", "hypothesisRef": {"name": "h"}, "bundle": "t"}],
            "salt": "salt",
            "ramp": {"steps": [{"weights": [90, 10], "duration": "1h"}, {"weights": [50, 50], "duration": "1h"}]},
            "metrics": {"northStar": [{"name": "dau"}], "readout": {"interval": "30m"}},
            "statistics": {"minSamplePerArm": 10},
            "decisionPolicy": "auto",
        }
    )
    analyses: dict[str, Analysis | None] = {"next": None}

    def step(st, p, now):
        o = RolloutObservation(dict(p.arms), p.weights, analyses["next"] if R.readout_due(st, now) else None)
        return R.reconcile(meta, spec, st, api.Serving(), None, o, now)

    def ready(p):
        for k in list(p.arms):
            p.arms[k] = replace(p.arms[k], ready=True)

    def set_analysis(a):
        def mutate(p):
            analyses["next"] = a
        return mutate

    def clocks(before, after, now):
        # persisted clocks never move backwards or reset; they move forward only when they were due
        if before.started_at is not None:
            assert after.started_at == before.started_at
        if before.step_started_at is not None and after.step == before.step:
            assert after.step_started_at == before.step_started_at
        if before.next_readout_at is not None and before.next_readout_at > now:
            assert after.next_readout_at in (before.next_readout_at, None)

    cont = Analysis("continue", "wait", {"control": 5, "t": 5})
    win = Analysis("promote", "t wins", {"control": 50, "t": 50}, "t")
    events = [
        (T0, lambda p: None),
        (T0 + timedelta(minutes=1), ready),
        (T0 + timedelta(minutes=10), lambda p: None),
        (T0 + timedelta(minutes=31), set_analysis(None)),  # Prometheus down at the first readout
        (T0 + timedelta(minutes=40), set_analysis(cont)),
        (T0 + timedelta(minutes=62), lambda p: None),  # step 1
        (T0 + timedelta(minutes=95), set_analysis(win)),
        (T0 + timedelta(minutes=100), lambda p: None),
    ]
    final, p, history = drive(step, events, api.RolloutStatus(), clocks)
    assert history == ["Deploying", "Running", "Running", "Running", "Running", "Running", "Promoted", "Promoted"]
    assert sorted(p.created) == sorted([R.arm_name(meta, "control"), R.arm_name(meta, "t")])
    assert p.weights == {"control": 0, "t": 100} and final.winner == "t"
    assert final.started_at == T0 + timedelta(minutes=1, seconds=5)


def test_evolution_replay_reissues_the_same_names():
    from cambrian.operator.reconcile import evolution as E
    from cambrian.operator.reconcile.actions import CreateRollout, ProposeHypotheses
    from cambrian.operator.reconcile.observations import HypothesisView, Spend

    meta = Meta("evo", "uid-evo", "ns", 1)
    spec = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}},
                                             "cadence": {"offline": "5m", "online": "1h"}})
    from cambrian.operator.reconcile import noise as N

    base = [JobObservation(n, "Succeeded", 0, metrics={"val_loss": 1}, bundle_uri="b0")
            for n in N.baseline_job_names(meta, spec)]
    hyps = [HypothesisView("h1", "Scored", "optimizer", "val_loss", 0.4, "b1", verdict="better", wakeup=1)]
    status = api.EvolutionStatus()
    seen: dict[str, set] = {"propose": set(), "rollout": set()}
    for k, t in enumerate([T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=6), T0 + timedelta(hours=2)]):
        job = None if k == 0 else base
        first = E.reconcile(meta, spec, status, hyps, [], job, Spend(), t)
        replay = E.reconcile(meta, spec, status, hyps, [], job, Spend(), t + timedelta(seconds=5))
        key = lambda r: [(type(a).__name__, getattr(a, "name", None) or getattr(a, "name_prefix", None))  # noqa: E731
                         for a in r.actions if isinstance(a, (ProposeHypotheses, CreateRollout))]
        assert key(first) == key(replay)
        if status.next_wakeup_at is not None and status.next_wakeup_at > t + timedelta(seconds=5):
            assert replay.status.next_wakeup_at == status.next_wakeup_at  # a persisted schedule is kept
        for a in replay.actions:
            if isinstance(a, ProposeHypotheses):
                assert a.name_prefix not in seen["propose"]
                seen["propose"].add(a.name_prefix)
            if isinstance(a, CreateRollout):
                seen["rollout"].add(a.name)
        status = replay.status
    assert len(seen["propose"]) == 3 and seen["rollout"] == {E.rollout_name(meta, "h1")}
