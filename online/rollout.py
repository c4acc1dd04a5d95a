"""Run one Rollout locally, end to end.

    from cambrian.online.rollout import RolloutSpec, run_rollout
    spec = RolloutSpec(name="sat-vs-click", world="data/world", control="runs/base/bundle",
                       treatments={"sat": "runs/sat/bundle"}, days=8,
                       ramp=[{"day": 0, "weight": 20}, {"day": 2, "weight": 50}],
                       north_star="watch_minutes", guardrails=[{"metric": "hate_rate", "margin": 0.1,
                       "higher_is_better": False}])
    result = run_rollout(spec, "runs/rollout-1")     # RolloutResult; result.json + timeline.json there

What runs: one model server per arm, the router, the collector (all `python -m cambrian.online.cli`
processes), a real Prometheus scraping them every second, and the simulated users (traffic.py)
living `days` compressed days. After every `readout_every_days` closed days the runner reads the
per-arm sums back *from Prometheus* and calls cambrian.stats.decide:
  * an arm rolled back (guardrail, hard limit, north star worse) goes to 0% at once;
  * promote -> the winner gets 100% and the run stops; all arms rolled back -> stop;
  * inconclusive at the maximum duration -> every treatment to 0%;
  * Prometheus unreachable (or not caught up) -> no decision at this look; the next look retries.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cambrian.errors import ConfigError
from cambrian.online.prometheus import PromClient, PrometheusProcess, PrometheusUnavailable
from cambrian.online.services import ServiceProcess
from cambrian.stats import (Decision, DecisionPolicy, DecisionState, Guardrail, HardLimit, Metric,
                                          decide)

log = logging.getLogger("cambrian.rollout")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RampStep(_Strict):
    day: int = Field(ge=0, description="experiment day (0 = first day) from which this weight applies")
    weight: int = Field(ge=0, le=100, description="percent of traffic for each live treatment")


class GuardrailSpec(_Strict):
    metric: str
    margin: float = Field(0.0, ge=0)
    relative: bool = True
    higher_is_better: bool = True
    cuped: bool = True


class HardLimitSpec(_Strict):
    metric: str = Field(description="latency_p99_ms or error_rate (read from Prometheus), or a metric with sums")
    max: float | None = None
    min: float | None = None


class RolloutSpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    world: str = Field(description="world data directory (`cambrian world generate`)")
    control: str = Field(description="bundle directory of the control (the current champion)")
    treatments: dict[str, str] = Field(min_length=1, description="arm name -> bundle directory")
    control_name: str = "control"
    salt: str | None = None
    days: int = Field(8, ge=1, le=365, description="maximum duration in simulated days")
    ramp: list[RampStep] = Field(default_factory=lambda: [RampStep(day=0, weight=50)])
    readout_every_days: int = Field(1, ge=1)
    seconds_per_day: float = Field(0.0, ge=0)
    north_star: str = "watch_minutes"
    north_star_relative: bool = True
    north_star_cuped: bool = True
    north_star_higher_is_better: bool = True
    guardrails: list[GuardrailSpec] = Field(default_factory=list)
    hard_limits: list[HardLimitSpec] = Field(default_factory=list)
    secondary: list[str] = Field(default_factory=list)
    alpha: float = Field(0.05, gt=0, lt=1)
    planned_users_per_arm: int = Field(1000, gt=0, description="users per arm expected by the last day (sizes the "
                                                                "futility stop, tunes the confidence sequence)")
    sequential: Literal["group", "msprt"] = Field(
        "group", description="group: α-spending over the days (the last one spends what is left); msprt: the "
                             "always-valid mixture SPRT")
    min_users_per_arm: int = Field(100, ge=0)
    pre_days: int = Field(14, ge=1)
    active_window: int = Field(7, ge=1)
    batch_size: int = Field(512, ge=1)
    prometheus_wait_seconds: float = Field(15.0, gt=0, description="how long a look waits for Prometheus to catch up")

    @model_validator(mode="after")
    def _check(self) -> "RolloutSpec":
        if self.control_name in self.treatments:
            raise ValueError(f"treatments: {self.control_name!r} is the control arm's name")
        days = [s.day for s in self.ramp]
        if not self.ramp or days != sorted(set(days)) or days[0] != 0:
            raise ValueError("ramp: steps need strictly increasing days, starting at day 0")
        from cambrian.online.assignment import treatment_weight_error

        k = len(self.treatments)
        for i, s in enumerate(self.ramp):  # the router's rule, on this step's weights (control first)
            error = treatment_weight_error([100 - k * s.weight] + [s.weight] * k, [self.control_name, *self.treatments])
            if 100 - k * s.weight < 0 or error:
                raise ValueError(f"ramp[{i}].weight: {s.weight}% per treatment with {k} treatments: "
                                 f"{error or 'the treatments would take more than 100%'}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> "RolloutSpec":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"rollout spec {path}: cannot read ({exc})") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()]
            raise ConfigError(f"rollout spec {path} is invalid:\n  " + "\n  ".join(lines)) from None

    def policy(self) -> DecisionPolicy:
        from cambrian.online.aggregate import AggregationSettings, maturity_day

        return DecisionPolicy(
            north_star=Metric(self.north_star, higher_is_better=self.north_star_higher_is_better,
                              relative=self.north_star_relative, cuped=self.north_star_cuped),
            planned_users_per_arm=self.planned_users_per_arm, min_users_per_arm=self.min_users_per_arm,
            max_days=self.days, alpha=self.alpha, sequential=self.sequential,
            guardrails=tuple(Guardrail(**g.model_dump()) for g in self.guardrails),
            hard_limits=tuple(HardLimit(**h.model_dump()) for h in self.hard_limits),
            secondary=tuple(Metric(m, matures_day=maturity_day(m, AggregationSettings(active_window=self.active_window)))
                            for m in self.secondary))

    def weight_on(self, day_index: int) -> int:
        return [s.weight for s in self.ramp if s.day <= day_index][-1]


@dataclass
class RolloutResult:
    experiment: str
    outcome: str                       # promote | rollback | inconclusive | continue (ran out of days early)
    reason: str
    winner: str | None
    days_run: int
    final_weights: dict[str, int]
    rolled_back: dict[str, str]        # arm -> reason
    last_decision: dict[str, Any] | None
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "timeline"}


def effective_weights(cohorts: dict[int, dict[str, int]], weights_by_day: dict[int, dict[str, int]],
                      arms: list[str]) -> tuple[dict[str, float], dict[str, int]]:
    """SRM inputs: users by first-exposure arm, and the weights they were drawn under, mixed by cohort size.

    Each day's new users split by that day's weights; pooling the days, the expected share of an arm is
    the cohort-size-weighted mean of its daily weights."""
    observed = {a: 0 for a in arms}
    expected = {a: 0.0 for a in arms}
    for day, counts in cohorts.items():
        w = weights_by_day.get(day)
        if w is None:
            continue
        n = sum(counts.values())
        for a in arms:
            observed[a] += counts.get(a, 0)
            expected[a] += n * w.get(a, 0) / 100
    total = sum(expected.values())
    if total <= 0:
        return {a: 0.0 for a in arms}, observed
    return {a: expected[a] / total for a in arms}, observed


class LocalRollout:
    """The moving parts of one local rollout; `run()` drives it. Hooks let tests intervene between days."""

    def __init__(self, spec: RolloutSpec, out_dir: str | Path,
                 on_day_end: Callable[["LocalRollout", int], None] | None = None):
        self.spec = spec
        self.out = Path(out_dir)
        self.on_day_end = on_day_end
        self.arms = [spec.control_name, *spec.treatments]
        self.services: dict[str, ServiceProcess] = {}
        self.prometheus: PrometheusProcess | None = None
        self.timeline: list[dict[str, Any]] = []
        self.weights: dict[str, int] = {}
        self.weights_by_day: dict[int, dict[str, int]] = {}
        self.rolled_back: dict[str, str] = {}
        self.state: DecisionState | None = None
        self.last_decision: Decision | None = None

    # --- events ----------------------------------------------------------------------------------
    def event(self, kind: str, day: int | None, **details: Any) -> None:
        row = {"t": round(time.time(), 3), "day": day, "kind": kind, **details}
        self.timeline.append(row)
        log.info("%s", row)
        (self.out / "timeline.json").write_text(
            json.dumps(_finite(self.timeline), indent=2, default=str, allow_nan=False) + "\n")

    # --- infrastructure --------------------------------------------------------------------------
    def start(self) -> None:
        spec, work = self.spec, self.out / "services"
        self.out.mkdir(parents=True, exist_ok=True)
        one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        bundles = {spec.control_name: spec.control, **spec.treatments}
        for arm, bundle in bundles.items():
            self.services[arm] = ServiceProcess(f"server-{arm}", ["serve", "--bundle", bundle, "--arm", arm], work,
                                                env=one_thread).start()
        self.services["collector"] = ServiceProcess(
            "collector", ["collect", "--db", str(self.out / "collector.sqlite"), "--pre-days", str(spec.pre_days),
                          "--active-window", str(spec.active_window)], work).start()
        for s in self.services.values():
            s.wait_ready()
        self.weights = self._ramp_weights(0)
        router_cfg = {"experiment": spec.name, "salt": spec.salt or spec.name,
                      "collector": self.services["collector"].url,
                      "arms": [{"name": a, "url": self.services[a].url, "weight": self.weights[a],
                                **({"control": True} if a == spec.control_name else {})} for a in self.arms]}
        self.router_config = self.out / "router.yaml"
        self.router_config.write_text(yaml.safe_dump(router_cfg, sort_keys=False))
        self.services["router"] = ServiceProcess("router", ["route", "--config", str(self.router_config)], work)
        self.services["router"].start().wait_ready()
        self.prometheus = PrometheusProcess({
            "model-servers": [self.services[a].address for a in self.arms],
            "router": [self.services["router"].address],
            "collector": [self.services["collector"].address]}, workdir=self.out / "prometheus").start()
        self.prom = PromClient(self.prometheus.url)
        self.event("started", None, services={k: s.url for k, s in self.services.items()},
                   prometheus=self.prometheus.url, weights=dict(self.weights))

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for s in self.services.values():
            s.stop()

    # --- weights ---------------------------------------------------------------------------------
    def _ramp_weights(self, day_index: int) -> dict[str, int]:
        w = self.spec.weight_on(day_index)
        live = [a for a in self.spec.treatments if a not in self.rolled_back]
        weights = {a: (w if a in live else 0) for a in self.spec.treatments}
        return {self.spec.control_name: 100 - sum(weights.values()), **weights}

    def set_weights(self, weights: dict[str, int], day: int | None, why: str) -> None:
        if weights == self.weights:
            return
        r = httpx.post(self.services["router"].url + "/weights", json={"weights": weights}, timeout=10)
        if r.status_code != 200:
            raise RuntimeError(f"router rejected weights {weights}: {r.text}")
        self.weights = dict(weights)
        self.event("weights", day, weights=dict(weights), why=why)

    # --- one look --------------------------------------------------------------------------------
    def look(self, day: int, elapsed_days: int) -> Decision | None:
        """Read the experiment back from Prometheus and decide; None when Prometheus cannot answer."""
        try:
            deadline = time.monotonic() + self.spec.prometheus_wait_seconds
            while True:
                readout = self.prom.read_experiment(self.spec.name)
                if readout.closed_day >= day:
                    break
                if time.monotonic() > deadline:
                    raise PrometheusUnavailable(f"prometheus has closed day {readout.closed_day}, not yet {day}")
                time.sleep(0.25)
            values: dict[str, dict[str, float]] = {}
            limits = {h.metric for h in self.spec.hard_limits}
            if "latency_p99_ms" in limits:
                for arm, v in self.prom.latency_p99_ms(at=readout.time).items():
                    values.setdefault(arm, {})["latency_p99_ms"] = v
            if "error_rate" in limits:
                for arm, v in self.prom.error_rate(at=readout.time).items():
                    values.setdefault(arm, {})["error_rate"] = v
        except PrometheusUnavailable as exc:
            self.event("no_decision", day, reason=f"Prometheus unavailable: {exc}")
            return None
        weights, exposures = effective_weights(readout.cohorts, self.weights_by_day, self.arms)
        decision = decide(self.spec.policy(), control=self.spec.control_name, weights=weights,
                          stats=readout.stats, elapsed_days=elapsed_days, values=values,
                          exposures=exposures, state=self.state)
        self.state = decision.state
        self.last_decision = decision
        self.event("readout", day, outcome=decision.outcome, reason=decision.reason, exposures=exposures,
                   srm_weights={a: round(w, 4) for a, w in weights.items()},
                   arms={a: {"outcome": d.outcome, "effect": d.effect.estimate if d.effect else None,
                             "ci": list(d.ci) if d.ci else None, "p": d.p_value} for a, d in decision.arms.items()},
                   n={a: readout.stats.get(a, {}).get(self.spec.north_star).n
                      if self.spec.north_star in readout.stats.get(a, {}) else 0 for a in self.arms})
        return decision

    def apply(self, decision: Decision, day: int) -> bool:
        """Act on a decision; True when the experiment is over."""
        spec = self.spec
        for arm, d in decision.arms.items():
            if d.outcome == "rollback" and arm not in self.rolled_back:
                self.rolled_back[arm] = d.reason
                w = dict(self.weights)
                w[spec.control_name] += w[arm]
                w[arm] = 0
                self.set_weights(w, day, f"rollback {arm}: {d.reason}")
        if decision.outcome == "promote":
            w = {a: 0 for a in self.arms}
            w[decision.winner] = 100
            self.set_weights(w, day, f"promote {decision.winner}: {decision.reason}")
            return True
        if decision.outcome in ("rollback", "inconclusive"):
            self.set_weights({spec.control_name: 100, **{a: 0 for a in spec.treatments}}, day,
                             f"{decision.outcome}: {decision.reason}")
            return True
        return False

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> RolloutResult:
        from cambrian.online.traffic import TrafficDriver, seed_pre_period
        from cambrian.world.sim import World

        spec = self.spec
        self.start()
        try:
            seed_pre_period(spec.world, self.services["collector"].url, days=spec.pre_days)
            world = World.load(spec.world)
            driver = TrafficDriver(world, self.services["router"].url, self.services["collector"].url,
                                   seconds_per_day=spec.seconds_per_day, batch_size=spec.batch_size,
                                   run_id=spec.name)
            outcome, reason, winner, days_run = "continue", "ran out of days", None, 0
            try:
                for i in range(spec.days):
                    self.set_weights(self._ramp_weights(i), world.day, f"ramp step for day {i}")
                    self.weights_by_day[world.day] = dict(self.weights)
                    summary = driver.run_day()
                    days_run = i + 1
                    self.event("day", summary.day, **{k: v for k, v in summary.to_dict().items() if k != "day"})
                    if self.on_day_end:
                        self.on_day_end(self, summary.day)
                    if days_run % spec.readout_every_days and days_run < spec.days:
                        continue
                    decision = self.look(summary.day, days_run)
                    if decision is None:
                        continue
                    outcome, reason, winner = decision.outcome, decision.reason, decision.winner
                    if self.apply(decision, summary.day):
                        break
            finally:
                driver.close()
            if outcome == "continue":
                reason = ("no decision could be made at the last look (Prometheus unavailable)"
                          if self.timeline and self.timeline[-1]["kind"] == "no_decision" else reason)
            result = RolloutResult(spec.name, outcome, reason, winner, days_run, dict(self.weights),
                                   dict(self.rolled_back),
                                   self.last_decision.to_dict() if self.last_decision else None, list(self.timeline))
            self.event("finished", None, outcome=outcome, winner=winner)
            (self.out / "result.json").write_text(
                json.dumps(_finite(result.to_dict()), indent=2, default=_json_default, allow_nan=False) + "\n")
            return result
        finally:
            self.stop()


def _json_default(o: Any) -> Any:
    return str(o)


def _finite(o: Any) -> Any:
    """Strict JSON: an unbounded interval end (inf) or an undefined value (nan) becomes null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def run_rollout(spec: RolloutSpec | dict, out_dir: str | Path,
                on_day_end: Callable[[LocalRollout, int], None] | None = None) -> RolloutResult:
    """Run one Rollout locally end to end; writes OUT/result.json and OUT/timeline.json."""
    if not isinstance(spec, RolloutSpec):
        try:
            spec = RolloutSpec.model_validate(spec)
        except ValidationError as exc:
            lines = [f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()]
            raise ConfigError("rollout spec is invalid:\n  " + "\n  ".join(lines)) from None
    return LocalRollout(spec, out_dir, on_day_end).run()
