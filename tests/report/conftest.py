"""Synthetic run directories of the previous local engine, which `cambrian report` and `cambrian journal` still
read: the experiment journal through its real writer (cambrian.agents.journal.Journal, verdicts from the real
noise judge) and rollout folders in that engine's format with real statistics on in-memory per-arm sums.
(A run of the operator's loop is tests/report/test_report_objects.py.)"""

from __future__ import annotations

import json
from pathlib import Path

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
    """A rollout folder in the previous local engine's format (spec.json, timeline.json, result.json), which
    `cambrian report` still reads: day by day, the real decision rule on in-memory per-arm sums, an arm rolled
    back goes to 0% at once, a promotion or a final rollback ends it."""
    from cambrian.stats import DecisionPolicy, Guardrail, Metric, decide

    name, arms = "sat-test", ["control", *treatments]
    spec = {"name": name, "control_name": "control", "north_star": "watch_minutes", "north_star_relative": True,
            "world": "unused", "control": "unused", "treatments": {a: f"candidates/{a}/bundle" for a in treatments}}
    policy = DecisionPolicy(north_star=Metric("watch_minutes"), planned_users_per_arm=1500, min_users_per_arm=100,
                            max_days=days, guardrails=(Guardrail("hate_rate", 0.2, higher_is_better=False),))
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    timeline: list[dict] = []

    def event(kind: str, day, **details) -> None:
        timeline.append({"t": float(len(timeline)), "day": day, "kind": kind, **details})
        (out / "timeline.json").write_text(json.dumps(timeline, indent=2, default=str))

    prom, cut, state, last = MemoryProm(name, treatments, hate), {}, None, None
    weights = {"control": 80, **{a: 20 for a in treatments}}
    event("started", None, weights=dict(weights))
    outcome, reason, winner, days_run = "continue", "ran out of days", None, 0

    def set_weights(w: dict[str, int], day: int, why: str) -> None:
        if w != weights:
            weights.clear()
            weights.update(w)
            event("weights", day, weights=dict(w), why=why)

    for i in range(days):
        ramp = 20 if i < 2 else 40
        set_weights({"control": 100 - ramp * sum(a not in cut for a in treatments),
                     **{a: 0 if a in cut else ramp for a in treatments}}, i, f"ramp step for day {i}")
        prom.add_day(i, weights)
        days_run = i + 1
        event("day", i, active=700)
        r = prom.read_experiment(name)
        exposures = {a: sum(c.get(a, 0) for c in r.cohorts.values()) for a in arms}
        total = sum(exposures.values())
        d = decide(policy, control="control", weights={a: exposures[a] / total for a in arms}, stats=r.stats,
                   elapsed_days=days_run, exposures=exposures, state=state)
        state, last = d.state, d
        event("readout", i, outcome=d.outcome, reason=d.reason, exposures=exposures,
              arms={a: {"outcome": x.outcome, "effect": x.effect.estimate if x.effect else None,
                        "ci": list(x.ci) if x.ci else None, "p": x.p_value} for a, x in d.arms.items()},
              n={a: r.stats[a]["watch_minutes"].n for a in arms})
        outcome, reason, winner = d.outcome, d.reason, d.winner
        for arm, x in d.arms.items():
            if x.outcome == "rollback" and arm not in cut:
                cut[arm] = x.reason
                set_weights({**weights, "control": weights["control"] + weights[arm], arm: 0}, i,
                            f"rollback {arm}: {x.reason}")
        if d.outcome == "promote":
            set_weights({a: 100 if a == d.winner else 0 for a in arms}, i, f"promote {d.winner}: {d.reason}")
            break
        if d.outcome in ("rollback", "inconclusive"):
            set_weights({a: 100 if a == "control" else 0 for a in arms}, i, f"{d.outcome}: {d.reason}")
            break
    if finish:
        result = {"experiment": name, "outcome": outcome, "reason": reason, "winner": winner, "days_run": days_run,
                  "final_weights": dict(weights), "rolled_back": cut,
                  "last_decision": last.to_dict() if last else None}
        event("finished", None, outcome=outcome, winner=winner)
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


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
