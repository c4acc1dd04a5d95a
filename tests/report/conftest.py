"""Synthetic run directories built through the real writers: the experiment journal
(cambrian.agents.journal.Journal, verdicts from the real noise judge) and the local rollout
runner (cambrian.online.rollout.LocalRollout: its real look/apply/event code, real statistics, a real
router for the weight changes), with Prometheus replaced by in-memory per-arm sums."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cambrian.agents.journal import Failure, Hypothesis, Journal, Score
from cambrian.agents.noise import NoiseSettings, judge
from cambrian.agents.personas import PERSONAS

BASE = {"val_loss": 0.500, "auc": 0.700, "return_corr": 0.020, "long_watch_corr": 0.300, "like_corr": 0.1}


def _scores(rng, shift: dict[str, float], seeds: int = 1) -> dict[str, Score]:
    return {m: Score.of(v + shift.get(m, 0.0) + rng.normal(0, 0.002, seeds)) for m, v in BASE.items()}


def build_journal(run: Path, generations: int = 3, seed: int = 0) -> Journal:
    rng = np.random.default_rng(seed)
    j = Journal(run)
    j.add(Hypothesis(id="baseline", generation=0, persona="baseline", component="baseline", category="baseline",
                     origin="baseline", phase="Validated"))
    base = _scores(rng, {}, seeds=3)
    j.set_baseline(base, [0, 1, 2])
    j.update("baseline", phase="Scored", offline=base)
    noise = NoiseSettings()
    for gen in range(1, generations + 1):
        j.mark_generation(gen, "started")
        for name, p in PERSONAS.items():
            j.record_usage("builtin", "builtin", 1200 + gen, 300, 0.0)
            for k in range(2):
                hid = j.next_id(gen)
                # Steady progress: later generations find bigger gains; the second proposal is worse.
                size = 0.004 * gen * (1 if k == 0 else -0.5)
                shift = {p.metric: -size if p.lower_is_better else size}
                h = j.add(Hypothesis(id=hid, generation=gen, persona=name, component=p.components[0],
                                     category="exploit" if k == 0 else "explore", origin="builtin",
                                     delta={"component": p.components[0], "patch": {"x": gen}},
                                     explanation=f"try {name} change {gen}.{k}"))
                if name == "architecture" and gen == 2 and k == 1:  # a failure and its repair
                    j.fail(hid, Failure(phase="Training", stage="forward_backward", reason="shape mismatch"))
                    child = j.add(Hypothesis(id=j.next_id(gen), generation=gen, persona=name,
                                             component=p.components[0], category="exploit",
                                             origin="builtin", parent=hid, explanation="fix the shapes"))
                    hid, h = child.id, child
                seeds = 3 if k == 0 and gen >= 2 else 1
                sc = _scores(rng, shift, seeds)
                jd = judge(p.metric, sc[p.metric], base[p.metric], p.lower_is_better, noise)
                j.record_evaluation(hid, 0, 2.5, True)
                j.update(hid, phase="Scored", offline=sc, primary_metric=p.metric, gain=jd.gain,
                         noise_floor=jd.floor, verdict=jd.verdict, reason=jd.reason)
        hid = j.next_id(gen)
        j.add(Hypothesis(id=hid, generation=gen, persona="reward", component="reward", category="innovate",
                         origin="builtin", phase="Rejected", reason="duplicate of an earlier hypothesis"))
        j.mark_generation(gen, "done")
    j.stop("completed all generations")
    return j


class MemoryProm:
    """Stands in for PromClient.read_experiment: cumulative per-arm sums of simulated users."""

    def __init__(self, name: str, effects: dict[str, float], hate: dict[str, float], seed: int = 1):
        from cambrian.online.prometheus import ExperimentReadout  # noqa: F401 (checked import)

        self.name, self.effects, self.hate = name, effects, hate
        self.rng = np.random.default_rng(seed)
        self.users: dict[str, list[np.ndarray]] = {}
        self.cohorts: dict[int, dict[str, int]] = {}
        self.closed = -1

    def add_day(self, day: int, weights: dict[str, int], new_users: int = 800) -> None:
        arms = list(weights)
        p = np.array([weights[a] for a in arms], float) / 100
        counts = self.rng.multinomial(new_users, p)
        self.cohorts[day] = {a: int(c) for a, c in zip(arms, counts) if c}
        for a, c in zip(arms, counts):
            x = self.rng.normal(10, 3, c)
            y = (0.8 * x + 2.0) * (1 + self.effects.get(a, 0.0)) + self.rng.normal(0, 2, c)
            imp = self.rng.integers(20, 60, c).astype(float)
            hates = self.rng.binomial(imp.astype(int), 0.05 * (1 + self.hate.get(a, 0.0))).astype(float)
            self.users.setdefault(a, []).append(np.stack([y, x, hates, imp]))
        self.closed = day

    def read_experiment(self, experiment: str, at: float | None = None):
        from cambrian.online.prometheus import ExperimentReadout
        from cambrian.stats.sums import RatioStats, SufficientStats

        stats = {}
        for a, chunks in self.users.items():
            y, x, hates, imp = np.concatenate(chunks, axis=1)
            stats[a] = {"watch_minutes": SufficientStats.from_arrays(y, x),
                        "hate_rate": RatioStats.from_arrays(hates, imp)}
        expo = {a: int(sum(c.shape[1] for c in chunks)) for a, chunks in self.users.items()}
        return ExperimentReadout(experiment, 0.0, self.closed, stats, expo, dict(self.cohorts))


def build_rollout(out: Path, treatments: dict[str, float], hate: dict[str, float], days: int = 8,
                  finish: bool = True) -> None:
    """Drive LocalRollout's real decision code day by day; the router that takes the weights is real."""
    from cambrian.online.rollout import LocalRollout, RolloutResult, RolloutSpec, _json_default
    from cambrian.online.router import Router, RouterConfig
    from cambrian.online.runner import BackgroundApp

    spec = RolloutSpec(name="sat-test", world="unused", control="unused", treatments={a: f"candidates/{a}/bundle"
                                                                                     for a in treatments},
                       days=days, ramp=[{"day": 0, "weight": 20}, {"day": 2, "weight": 40}],
                       north_star="watch_minutes",
                       guardrails=[{"metric": "hate_rate", "margin": 0.2, "higher_is_better": False}],
                       planned_users_per_arm=1500, min_users_per_arm=100)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(spec.model_dump_json(indent=2))
    ro = LocalRollout(spec, out)
    ro.weights = ro._ramp_weights(0)
    cfg = RouterConfig.from_dict({"experiment": spec.name, "arms": [
        {"name": a, "url": "http://127.0.0.1:9", "weight": ro.weights[a],
         **({"control": True} if a == "control" else {})} for a in ro.arms]})
    prom = MemoryProm(spec.name, treatments, hate)
    with BackgroundApp(Router(cfg).app()) as router:
        ro.services["router"] = SimpleNamespace(url=router.url)
        ro.prom = prom
        ro.event("started", None, weights=dict(ro.weights))
        outcome, reason, winner, days_run = "continue", "ran out of days", None, 0
        for i in range(days):
            ro.set_weights(ro._ramp_weights(i), i, f"ramp step for day {i}")
            ro.weights_by_day[i] = dict(ro.weights)
            prom.add_day(i, ro.weights)
            days_run = i + 1
            ro.event("day", i, active=700)
            decision = ro.look(i, days_run)
            if decision is None:
                continue
            outcome, reason, winner = decision.outcome, decision.reason, decision.winner
            if ro.apply(decision, i):
                break
    if finish:
        result = RolloutResult(spec.name, outcome, reason, winner, days_run, dict(ro.weights), dict(ro.rolled_back),
                               ro.last_decision.to_dict() if ro.last_decision else None, list(ro.timeline))
        ro.event("finished", None, outcome=outcome, winner=winner)
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=_json_default) + "\n")


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run-full")
    j = build_journal(run)
    # The two confirmed winners of the last generation go online, named after their hypothesis ids.
    winners = [h.id for h in j.hypotheses if h.generation == 3 and h.verdict == "better"][:2]
    assert len(winners) == 2, [(h.id, h.verdict) for h in j.hypotheses]
    build_rollout(run / "rollouts" / "sat-test", {winners[0]: 0.018, winners[1]: 0.0}, {winners[1]: 0.45})
    return run


@pytest.fixture(scope="session")
def offline_only_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run-offline")
    build_journal(run, generations=2, seed=3)
    return run


@pytest.fixture(scope="session")
def rollout_builder():
    return build_rollout
