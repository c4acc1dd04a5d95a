"""spec.agent.budgets.evaluations is a hard cap on both platforms: a Hypothesis counts its peers' runs (first looks
included) as it starts one (hypothesis.runs_left), instead of trusting the Evolution's saved spend, which lags."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cambrian.operator import api, loop
from cambrian.operator.reconcile.observations import JobObservation
from cambrian.operator.reconcile.views import evaluations

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Platform:
    def __init__(self):
        self.jobs, self.created = {}, []

    def training_jobs(self, owner):
        return list(self.jobs.values())

    def submit_training_job(self, action):
        self.created.append(action)

    def record(self, action):
        pass

    def champion_serving(self, owner, serving):
        return None

    def __getattr__(self, name):  # proposals, the champion's server: not what this test is about
        return lambda *args, **kw: None


class Objects:
    def __init__(self):
        self.objs = {}

    def get(self, plural, ns, name):
        return self.objs.get((plural, name))

    def list(self, plural, ns):
        return [o for (p, _), o in self.objs.items() if p == plural]


def step(kind, obj, objs, plat, now):
    s = loop.step(kind, obj, objs, plat, now)
    obj["status"] = s.result.status.wire()
    return s.result.status


def with_champion(data: dict) -> tuple[Platform, Objects, dict]:
    """An Evolution of `data` whose baseline's seeds (and first-look reference's) finished: its champion is set."""
    plat, objs = Platform(), Objects()
    evo = {"metadata": {"name": "evo", "uid": "uid-e", "namespace": "ns", "generation": 1},
           "spec": api.EvolutionSpec.model_validate(data).wire()}
    objs.objs[("evolutions", "evo")] = evo
    step("Evolution", evo, objs, plat, T0)
    for a in plat.created:
        plat.jobs[a.name] = JobObservation(a.name, "Succeeded", 0, metrics={"val_loss": 0.5},
                                           bundle_uri="pvc://x/" + a.name)
    step("Evolution", evo, objs, plat, T0 + timedelta(minutes=1))
    plat.created.clear()
    return plat, objs, evo


def new_hypothesis(objs: Objects, name: str) -> dict:
    h = {"metadata": {"name": name, "uid": f"uid-{name}", "namespace": "ns", "generation": 1},
         "spec": {"evolutionRef": {"name": "evo"}, "component": "optimizer", "explanation": "x",
                  "delta": {"patch": {"lr": 0.001 * (len(objs.objs) + 5)}}}}
    objs.objs[("hypotheses", name)] = h
    return h


@pytest.mark.parametrize("fidelity", [False, True])
@pytest.mark.parametrize("evolution_between", [False, True])
def test_new_hypotheses_of_one_wakeup_start_no_more_runs_than_the_budget_has_left(fidelity, evolution_between):
    """One evaluation left, three new Hypotheses stepped one after the other. `evolution_between`: the Evolution is
    stepped after each run starts (the local driver); without, only the Hypotheses are (kopf in the cluster)."""
    data = {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100, "days": 3}},
            "noise": {"baselineSeeds": 3}, "baseline": {"training": {"epochs": 4, "max_train_examples": 10000}},
            "agent": {"budgets": {"evaluations": 4 + (3 if fidelity else 0)}}}  # the reference costs 3 more
    if fidelity:
        data["fidelity"] = {"firstLook": {"epochFraction": 0.25, "sampleFraction": 1.0}}
    plat, objs, evo = with_champion(data)
    cap = data["agent"]["budgets"]["evaluations"]
    assert evo["status"]["spend"]["evaluations"] == cap - 1 and evo["status"]["phase"] == "Running"
    hyps = [new_hypothesis(objs, f"h{i}") for i in range(3)]
    for h in hyps:
        for _ in range(2):  # Proposed -> Validated -> Training (a first look, or the full run)
            step("Hypothesis", h, objs, plat, T0 + timedelta(minutes=3))
        if evolution_between:
            step("Evolution", evo, objs, plat, T0 + timedelta(minutes=3))
    started = {a.name: a for a in plat.created if a.hypothesis}  # a run not seen yet is asked for again, by name
    assert len(started) == 1 and (next(iter(started.values())).fidelity is not None) == fidelity
    assert sum(evaluations(h["status"]) for h in hyps) == 1
    held = [h for h in hyps if h["status"]["phase"] == "Validated"]
    assert len(held) == 2 and all(any(c["reason"] == "BudgetExhausted" for c in h["status"]["conditions"])
                                  for h in held)
    assert step("Evolution", evo, objs, plat, T0 + timedelta(minutes=4)).spend.evaluations == cap


@pytest.mark.parametrize("trained", [False, True])
def test_a_deleted_hypothesis_still_counts_its_runs_when_its_peers_start_theirs(trained):
    """Two evaluations left; h0 starts one, the Evolution sees it (open, or folded once Scored), then h0 is
    deleted. Its run still counts: of the next two Hypotheses, stepped on their own as in the cluster, one trains.
    Before, each counted only the peers that existed (hypothesis.runs_left): both trained, one past the cap."""
    data = {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100, "days": 3}},
            "noise": {"baselineSeeds": 3}, "baseline": {"training": {"epochs": 4, "max_train_examples": 10000}},
            "agent": {"budgets": {"evaluations": 5}}}
    plat, objs, evo = with_champion(data)
    h0 = new_hypothesis(objs, "h0")
    for _ in range(2):
        step("Hypothesis", h0, objs, plat, T0 + timedelta(minutes=2))
    assert evaluations(h0["status"]) == 1
    if trained:
        h0["status"].update(phase="Scored", gpuHours=0.5)
    assert step("Evolution", evo, objs, plat, T0 + timedelta(minutes=2)).spend.evaluations == 4
    del objs.objs[("hypotheses", "h0")]
    plat.created.clear()
    hyps = [new_hypothesis(objs, f"h{i}") for i in (1, 2)]
    for h in hyps:
        for _ in range(2):
            step("Hypothesis", h, objs, plat, T0 + timedelta(minutes=3))
    assert sum(evaluations(h["status"]) for h in hyps) == 1 and len({a.name for a in plat.created}) == 1
    st = step("Evolution", evo, objs, plat, T0 + timedelta(minutes=4))
    assert st.spend.evaluations == 5 and st.phase == "BudgetExhausted"
