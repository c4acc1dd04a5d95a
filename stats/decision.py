"""The launch decision for one Rollout look: promote | rollback | continue | inconclusive.

Branches, in the order they are checked (each is a separate test in tests/statistics):
 1. SRM (anytime-valid sequential test of exposures against the designed weights, p < threshold)
    -> rollback, reason "SRM: ..."
    (the data are untrustworthy; nothing is ever promoted from them).
 2. A hard-limit breach (latency p99, error rate above a bound) -> rollback of that arm.
 3. Missing data (a metric or a hard-limit value absent for an arm) -> continue; never promote.
 4. Insufficient data (n < 2, zero variance) for the north star -> continue for that arm.
 5. A guardrail that fails non-inferiority on its confidence sequence -> rollback of that arm.
 6. North star significantly worse -> rollback. Significance: by default (``sequential="group"``) |z|
    reaches the group-sequential boundary of this look (α-spending over the planned horizon, α split
    across arms; union boundaries, valid for any correlation between looks, when the horizon is days);
    with ``sequential="msprt"`` the always-valid p after the multiple-arm correction.
 7. North star significantly better AND min sample reached in both arms AND every guardrail passes
    -> the arm may be promoted; with several, the largest effect wins.
 8. Group design only: its final look (planned users or max duration) without a crossing, or too
    little chance left of winning by the planned users (futility) -> inconclusive for that arm.
 9. Otherwise, at or past max duration -> inconclusive (first-class, never promotes); before -> continue.
The rule is pure: the caller stores ``Decision.state`` (running always-valid p-values) in the CR status
and passes it back at the next look.
An arm stopped at an earlier look (A/B/n: harmful or futile while others go on; its users keep their assignment
but are served control's model) is passed as ``stopped``: its verdict stands, its later data is not read, and the
others are tested as if it still ran (same α split and correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Mapping

from .estimators import Effect, analyse
from .groupsequential import check_rule, futile, planned_drift
from .guardrails import Breach, Guardrail, GuardrailResult, HardLimit, hard_limit_breaches, non_inferiority
from .multiple import adjust, benjamini_hochberg
from .reading import format_effect
from .sequential import (SequentialState, confidence_sequence, msprt_p_value, planned_information,
                         rho_for_information, update, update_group)
from .srm import SRM_THRESHOLD, SRMResult, srm_check
from .sums import InsufficientData, RatioStats, SufficientStats

Outcome = Literal["promote", "rollback", "continue", "inconclusive"]
Sums = SufficientStats | RatioStats


@dataclass(frozen=True)
class Metric:
    """How to analyse a metric: direction, relative lift or absolute difference, CUPED or not."""

    name: str
    higher_is_better: bool = True
    relative: bool = True
    cuped: bool = True
    matures_day: int = 0   # experiment day on which the first cohort's value can be read (delayed metrics)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Metric.name must be a non-empty name")


@dataclass(frozen=True)
class DecisionPolicy:
    north_star: Metric
    planned_users_per_arm: int
    min_users_per_arm: int
    max_days: float
    alpha: float = 0.05
    tau: float | None = None          # mSPRT mixing sd on the north-star scale; None: matched to the plan
    correction: Literal["holm", "bonferroni"] = "holm"
    guardrails: tuple[Guardrail, ...] = ()
    hard_limits: tuple[HardLimit, ...] = ()
    secondary: tuple[Metric, ...] = ()
    srm_threshold: float = SRM_THRESHOLD
    # "group" (the default): Lan-DeMets α-spending over the design's horizon (see `horizon`), fewer
    # users on average (bench/decision.py); "msprt": the always-valid mixture SPRT, valid at any look
    # with no horizon, at the price of more users.
    sequential: Literal["group", "msprt"] = "group"
    spending: Literal["obrien-fleming", "pocock"] = "obrien-fleming"
    # group only: where the design ends. "days": at max_days (planned_users_per_arm is the users
    # expected by then: it sizes futility's planned effect and tunes the confidence sequence);
    # "users": at planned_users_per_arm or max_days, whichever comes first.
    horizon: Literal["days", "users"] = "days"
    # group only: how the boundaries are computed (stats/groupsequential.py). None: "union" (valid whatever
    # the looks' correlation) with horizon "days", "exact" (independent increments) with "users"; see _rule.
    boundary_rule: Literal["exact", "union"] | None = None
    # group only: stop an arm as inconclusive (no launch, traffic back to control) once its chance of
    # winning by the planned users, were the planned effect true, is below this; None disables.
    futility: float | None = 0.1
    power: float = 0.8                 # the power the planned users were sized for (futility's drift)

    def __post_init__(self) -> None:
        if isinstance(self.north_star, str):
            object.__setattr__(self, "north_star", Metric(self.north_star))
        if not (0 < self.alpha < 1):
            raise ValueError(f"DecisionPolicy.alpha must be in (0, 1), got {self.alpha!r}")
        if self.tau is not None and not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"DecisionPolicy.tau must be a positive number, got {self.tau!r}")
        if self.correction not in ("holm", "bonferroni"):
            raise ValueError(f"DecisionPolicy.correction must be holm or bonferroni, got {self.correction!r}")
        if not self.planned_users_per_arm > 0:
            raise ValueError(f"DecisionPolicy.planned_users_per_arm must be > 0, got {self.planned_users_per_arm!r}")
        if not self.min_users_per_arm >= 0:
            raise ValueError(f"DecisionPolicy.min_users_per_arm must be >= 0, got {self.min_users_per_arm!r}")
        if not self.max_days > 0:
            raise ValueError(f"DecisionPolicy.max_days must be > 0, got {self.max_days!r}")
        if self.sequential not in ("msprt", "group"):
            raise ValueError(f"DecisionPolicy.sequential must be msprt or group, got {self.sequential!r}")
        if self.horizon not in ("days", "users"):
            raise ValueError(f"DecisionPolicy.horizon must be days or users, got {self.horizon!r}")
        if self.boundary_rule is not None:
            check_rule(self.boundary_rule, "DecisionPolicy.boundary_rule (or None)")
        if self.spending not in ("obrien-fleming", "pocock"):
            raise ValueError(f"DecisionPolicy.spending must be obrien-fleming or pocock, got {self.spending!r}")
        if self.futility is not None and not (0 < self.futility < 1):
            raise ValueError(f"DecisionPolicy.futility must be in (0, 1) or None, got {self.futility!r}")
        if not (0 < self.power < 1):
            raise ValueError(f"DecisionPolicy.power must be in (0, 1), got {self.power!r}")
        if not (0 < self.srm_threshold < 1):
            raise ValueError(f"DecisionPolicy.srm_threshold must be in (0, 1), got {self.srm_threshold!r}")
        object.__setattr__(self, "guardrails", tuple(self.guardrails))
        object.__setattr__(self, "hard_limits", tuple(self.hard_limits))
        object.__setattr__(self, "secondary", tuple(self.secondary))

    def required_metrics(self) -> list[str]:
        """Metrics without which no decision is made (secondary metrics are report-only)."""
        return list(dict.fromkeys([self.north_star.name] + [g.metric for g in self.guardrails]))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DecisionPolicy":
        """Build from plain data (e.g. a Rollout spec's statistics section, snake_case keys).

        north_star, secondary: a name or {name, higher_is_better, relative, cuped};
        guardrails: [{metric, margin, relative, higher_is_better, cuped}]; hard_limits: [{metric, max, min}]."""
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"DecisionPolicy: unknown field(s) {sorted(unknown)}")

        def build(kind, value, where):
            if isinstance(value, kind):
                return value
            if kind is Metric and isinstance(value, str):
                return Metric(value)
            if not isinstance(value, Mapping):
                raise ValueError(f"DecisionPolicy.{where} must be a mapping, got {value!r}")
            try:
                return kind(**value)
            except TypeError as e:
                raise ValueError(f"DecisionPolicy.{where}: {e}") from None

        if "north_star" not in d:
            raise ValueError("DecisionPolicy.north_star is required")
        d["north_star"] = build(Metric, d["north_star"], "north_star")
        for key, kind in (("guardrails", Guardrail), ("hard_limits", HardLimit), ("secondary", Metric)):
            d[key] = tuple(build(kind, v, f"{key}[{i}]") for i, v in enumerate(d.get(key) or ()))
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"DecisionPolicy: {e}") from None


@dataclass(frozen=True)
class DecisionState:
    """Sequential-test state per "arm/metric"; JSON-safe via to_dict/from_dict for the CR status."""

    tests: dict[str, SequentialState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in sorted(self.tests.items())}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DecisionState":
        return cls({k: SequentialState.from_dict(v) for k, v in (d or {}).items()})


@dataclass(frozen=True)
class ArmDecision:
    arm: str
    outcome: Outcome
    reason: str
    effect: Effect | None = None
    p_value: float | None = None            # always-valid (running minimum), before correction
    p_adjusted: float | None = None         # after the multiple-arm correction
    ci: tuple[float, float] | None = None   # confidence sequence at this look
    guardrails: tuple[GuardrailResult, ...] = ()
    breaches: tuple[Breach, ...] = ()
    # group-sequential designs: the effect the design was sized for, on the reported scale (_planned_effect)
    planned_effect: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "outcome": self.outcome, "reason": self.reason,
                "effect": self.effect.to_dict() if self.effect else None,
                "p_value": self.p_value, "p_adjusted": self.p_adjusted,
                "ci": list(self.ci) if self.ci else None,
                "planned_effect": self.planned_effect,
                "guardrails": [g.to_dict() for g in self.guardrails],
                "breaches": [b.to_dict() for b in self.breaches]}


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    arms: dict[str, ArmDecision]
    state: DecisionState
    winner: str | None = None
    srm: SRMResult | None = None
    secondary: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (no NaN or infinity, which a Kubernetes status rejects): such values become None."""
        return _json_safe({"outcome": self.outcome, "reason": self.reason, "winner": self.winner,
                           "arms": {a: d.to_dict() for a, d in self.arms.items()},
                           "srm": self.srm.to_dict() if self.srm else None,
                           "secondary": list(self.secondary), "state": self.state.to_dict()})


def _json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _check_args(control: str, weights: Mapping[str, float], elapsed_days: float) -> list[str]:
    if control not in weights:
        raise ValueError(f"control arm {control!r} is not in weights {sorted(weights)}")
    treatments = [a for a in weights if a != control]
    if not treatments:
        raise ValueError("weights: need at least one treatment arm besides the control")
    if not (elapsed_days >= 0 and math.isfinite(elapsed_days)):
        raise ValueError(f"elapsed_days must be a finite number >= 0, got {elapsed_days!r}")
    return treatments


def _check_stopped(stopped: Mapping[str, tuple[str, str]], treatments: list[str]) -> dict[str, tuple[str, str]]:
    for arm, verdict in stopped.items():
        if arm not in treatments:
            raise ValueError(f"stopped: {arm!r} is not a treatment arm (treatments: {treatments})")
        if not (isinstance(verdict, tuple) and len(verdict) == 2 and verdict[0] in ("rollback", "inconclusive")):
            raise ValueError(f"stopped[{arm!r}]: must be (rollback | inconclusive, reason), got {verdict!r}")
    return dict(stopped)


def _gauge_values(policy: DecisionPolicy, stats: Mapping[str, Mapping[str, Sums]],
                  values: Mapping[str, Mapping[str, float]], arms: list[str]) -> dict[str, dict[str, float]]:
    """Hard-limit inputs: explicit gauge values, else the arm mean of a metric with sums."""
    out: dict[str, dict[str, float]] = {}
    for arm in arms:
        row = dict(values.get(arm, {}))
        for lim in policy.hard_limits:
            s = stats.get(arm, {}).get(lim.metric)
            if lim.metric not in row and s is not None and s.n > 0:
                row[lim.metric] = s.mean_y if isinstance(s, SufficientStats) else (
                    s.sum_m / s.sum_d if s.sum_d else math.nan)
        out[arm] = row
    return out


def _interval(effect: Effect, alpha: float, planned_users: int) -> tuple[tuple[float, float], float]:
    """Confidence sequence on the test scale with ρ tuned to the information expected at the planned
    users per arm, returned on the reported scale (a lift interval is exp(·) − 1 of the log interval)."""
    n_now = (effect.n_control + effect.n_treatment) / 2
    rho = rho_for_information(planned_information(effect.test_variance, n_now, planned_users), alpha)
    lo, hi = confidence_sequence(effect.test_estimate, effect.test_variance, alpha, rho=rho)
    return (effect.to_reported(lo), effect.to_reported(hi)), rho


def _test_key(arm: str, metric: Metric, effect: Effect) -> str:
    """One running test per arm, metric and scale: a relative metric whose lift becomes undefined
    (a mean not positive) is tested on the absolute scale under its own key, never mixed."""
    return f"{arm}/{metric.name}" if effect.relative == metric.relative else f"{arm}/{metric.name}@absolute"


def _guardrail_on_scale(g: Guardrail, effect: Effect) -> Guardrail:
    """A relative margin on a guardrail whose lift is undefined becomes margin × |control mean|."""
    if g.relative and not effect.relative:
        return replace(g, margin=g.margin * abs(effect.control_mean), relative=False)
    return g


def _method(policy: DecisionPolicy, prev) -> str:
    """The sequential test of one running test: the policy's, except that a test already started
    under the other method keeps it (switching mid-experiment would spend α twice)."""
    if prev is None or prev.looks == 0:
        return policy.sequential
    return "group" if prev.fractions else "msprt"


def _group_clock(policy: DecisionPolicy, eff: Effect, elapsed_days: float, prev=None) -> tuple[float, float]:
    """(information, spending time) of a group-sequential look.

    Information is statistical: 1 / the variance of the test-scale estimate. The boundaries take the
    looks' z to be correlated as √(I_j/I_k), which holds for the estimate's own information, not for
    users: a metric averaged over each user's days since exposure (watch minutes per day) keeps
    gaining information after the users stop arriving, and a users clock then treats later looks as
    near-repeats of earlier ones and lowers their boundaries (stats/calibration.simulate_maturing: A/A
    false decisions 6.6% with users, 4.7% with this clock, α 5%). Even so the looks' correlation is below
    √(I_j/I_k) on such a metric (each user's mean keeps maturing), which is why the design ending at
    max_days uses union boundaries (_rule). A test begun under the users clock
    (a state written before it, ``prev.information_unit == "users"``) keeps it: units must not mix.
    The spending time is the share of the horizon reached: of max_days, or with horizon="users" of
    planned_users_per_arm (users per arm, 2·n_C·n_T/(n_C + n_T) for unequal arms) or max_days,
    whichever is further. Either clock is fixed before the data, so any look schedule keeps α; the
    look at max_days is final (spends what is left) even when traffic fell short of the plan."""
    users = _users(eff)
    info = users if prev is not None and prev.information_unit == "users" else 1.0 / eff.test_variance
    frac = elapsed_days / policy.max_days
    if policy.horizon == "users":
        frac = max(frac, users / policy.planned_users_per_arm)
    return info, min(1.0, frac)


def _rule(policy: DecisionPolicy) -> str:
    """The boundary rule of a new group test. A design that ends at max_days is the Rollout without
    plannedSamplePerArm, whose north star typically matures (minutes per day since exposure): its looks'
    correlation is below the √(I_j/I_k) exact boundaries assume, and per-arm sums cannot measure it, so its
    boundaries must hold for any correlation (union. A/A promotions over 10,000 draws of the calibrated world,
    design 2.5%: exact 2.88%, union 2.43%; bench/README.md, decision-world). update_group keeps a started test's rule."""
    if policy.boundary_rule is not None:
        return policy.boundary_rule
    return "union" if policy.horizon == "days" else "exact"


def _users(eff: Effect) -> float:
    """Users per arm as a difference's variance counts them: 2·n_C·n_T/(n_C + n_T) (a ramp at 5% carries
    far less than its mean)."""
    n_c, n_t = eff.n_control, eff.n_treatment
    return 2 * n_c * n_t / (n_c + n_t)


def _planned_effect(eff: Effect, policy: DecisionPolicy, n_treatments: int, good: int) -> float:
    """The effect futility assumes and the design was sized for, on the reported scale: the one the planned users
    per arm detect with the policy's power in a fixed test at the arm's α,
    θ = (z_{α/2} + z_{power}) · √(variance · users / planned users), the variance being this look's estimate's
    (CUPED-adjusted where it is) scaled to the planned users. Saying it tells what an inconclusive test could not
    have seen: changes smaller than this were never in its reach."""
    drift = planned_drift(policy.alpha / n_treatments, policy.power)
    return eff.to_reported(good * drift * math.sqrt(eff.test_variance * _users(eff) / policy.planned_users_per_arm))


def _horizon(policy: DecisionPolicy) -> str:
    if policy.horizon == "users":
        return f"{policy.planned_users_per_arm} users per arm or {policy.max_days:g} days, whichever came first"
    return f"{policy.max_days:g} days"


def _finish(arms: dict[str, ArmDecision], treatments: list[str], state: DecisionState, srm: SRMResult | None,
            elapsed_days: float, policy: DecisionPolicy, secondary=()) -> Decision:
    """Overall outcome from the per-arm outcomes."""
    promotable = [a for a in treatments if arms[a].outcome == "promote"]
    if promotable:
        sign = 1 if policy.north_star.higher_is_better else -1
        winner = max(promotable, key=lambda a: sign * arms[a].effect.estimate)
        for a in promotable:
            if a != winner:
                arms[a] = ArmDecision(**{**arms[a].__dict__, "outcome": "continue",
                                         "reason": f"also significant, but {winner} has the larger effect"})
        return Decision("promote", arms[winner].reason, arms, state, winner, srm, secondary)
    outcomes = [arms[a].outcome for a in treatments]
    if all(o == "rollback" for o in outcomes):
        return Decision("rollback", "; ".join(arms[a].reason for a in treatments), arms, state, None, srm, secondary)
    if all(o in ("rollback", "inconclusive") for o in outcomes):   # every arm stopped, some for futility
        return Decision("inconclusive", "; ".join(f"{a}: {arms[a].reason}" for a in treatments), arms, state,
                        None, srm, secondary)
    live = [a for a in treatments if arms[a].outcome != "rollback"]
    distinct = {arms[a].reason for a in live}
    reason = distinct.pop() if len(distinct) == 1 else "; ".join(f"{a}: {arms[a].reason}" for a in live)
    if elapsed_days >= policy.max_days:
        return Decision("inconclusive", f"max duration {policy.max_days:g} days reached without a decision: {reason}",
                        arms, state, None, srm, secondary)
    return Decision("continue", reason, arms, state, None, srm, secondary)


def decide(policy: DecisionPolicy, *, control: str, weights: Mapping[str, float],
           stats: Mapping[str, Mapping[str, Sums]], elapsed_days: float,
           values: Mapping[str, Mapping[str, float]] | None = None,
           exposures: Mapping[str, int] | None = None,
           state: DecisionState | Mapping[str, Any] | None = None,
           stopped: Mapping[str, tuple[str, str]] | None = None) -> Decision:
    """One look at a Rollout.

    stats: arm -> metric -> cumulative sums (users whose readout window has closed).
    values: arm -> gauge -> value for hard limits (e.g. latency p99); a hard-limit metric that has
      sums instead uses the arm mean. exposures: arm -> users assigned (SRM); defaults to the
      north star's n. state: the previous Decision.state (or its dict form).
    stopped: treatment -> (outcome, reason) of arms decided at an earlier look (rollback or inconclusive) whose
      users are no longer served the treatment: their verdict stands and their data is not read (none needed).
      Their users keep their assignment, so the SRM check counts them when `exposures` has them (else it covers
      the other arms: conditional on a user being in one of them, still multinomial by their weights). They keep
      their place in the family (α split, multiplicity correction), so stopping one never loosens the others' test."""
    treatments = _check_args(control, weights, elapsed_days)
    stopped = _check_stopped(stopped or {}, treatments)
    running = [a for a in treatments if a not in stopped]
    arms_all = [control, *running]   # the arms this look reads data of
    for arm, per_metric in stats.items():
        for metric, sums in per_metric.items():
            if sums is not None and not isinstance(sums, (SufficientStats, RatioStats)):
                raise TypeError(f"stats[{arm!r}][{metric!r}] must be SufficientStats or RatioStats, "
                                f"got {type(sums).__name__}")
    values = values or {}
    if not isinstance(state, DecisionState):
        state = DecisionState.from_dict(state)
    ns = policy.north_star
    arms: dict[str, ArmDecision] = {a: ArmDecision(a, *stopped[a]) for a in treatments if a in stopped}
    if not running:
        return _finish(arms, treatments, state, None, elapsed_days, policy)

    # 1. SRM on exposures (falls back to the north star's n when exposures are not exported).
    srm = None
    expo = exposures
    if expo is None and all(ns.name in stats.get(a, {}) for a in arms_all):
        expo = {a: stats[a][ns.name].n for a in arms_all}
    if expo is not None:
        missing_expo = [a for a in arms_all if a not in expo]
        if not missing_expo:
            counted = arms_all + [a for a in stopped if a in expo]   # assignment goes on for a stopped arm's users
            srm = srm_check({a: expo[a] for a in counted}, {a: weights[a] for a in counted},
                            threshold=policy.srm_threshold)
            if srm.mismatch:
                for a in running:
                    arms[a] = ArmDecision(a, "rollback", srm.reason)
                return Decision("rollback", srm.reason, arms, state, None, srm)

    # 2. Hard limits: a breach rolls that arm back whatever else is known.
    gauges = _gauge_values(policy, stats, values, arms_all)
    breaches, missing_gauges = hard_limit_breaches(policy.hard_limits, gauges, running)
    for a in running:
        mine = tuple(b for b in breaches if b.arm == a)
        if mine:
            arms[a] = ArmDecision(a, "rollback", "; ".join(b.reason for b in mine), breaches=mine)

    # 3. Missing data: cannot verify, so wait (never promote).
    missing = [f"{a}/{m}" for a in arms_all for m in policy.required_metrics() if stats.get(a, {}).get(m) is None]
    missing += missing_gauges
    if expo is None or srm is None:
        missing.append("exposures")
    if missing:
        why = f"missing data: {', '.join(missing)}"
        for a in running:
            arms.setdefault(a, ArmDecision(a, "continue", why))
        return _finish(arms, treatments, state, srm, elapsed_days, policy)

    tests = dict(state.tests)
    effects: dict[str, Effect] = {}
    method: dict[str, str] = {}
    for a in treatments:
        if a in arms:
            continue
        # 4. North-star effect and its always-valid p-value (running minimum across looks).
        try:
            eff = analyse(stats[control][ns.name], stats[a][ns.name], cuped=ns.cuped, relative=ns.relative)
        except InsufficientData as e:
            arms[a] = ArmDecision(a, "continue", f"insufficient data for {ns.name}: {e}")
            continue
        effects[a] = eff
        ci, rho = _interval(eff, policy.alpha, policy.planned_users_per_arm)
        key = _test_key(a, ns, eff)
        prev = tests.get(key)
        method[a] = _method(policy, prev)
        # τ: the policy's (on the metric's own scale), else matched to the plan (τ² = 1/ρ) once, at
        # the first look, then kept.
        if method[a] == "group":
            # Bonferroni across treatment arms: each arm's boundaries spend α / arms.
            info, frac = _group_clock(policy, eff, elapsed_days, prev)
            tests[key] = update_group(prev, eff.test_estimate, eff.test_variance, frac,
                                      policy.alpha / len(treatments), policy.spending, information=info,
                                      rule=_rule(policy))
        else:
            own_tau = policy.tau if eff.relative == ns.relative else None
            tau = own_tau or (prev.tau if prev and prev.tau else 1 / math.sqrt(rho))
            tests[key] = update(prev, eff.test_estimate, eff.test_variance, tau)
        arms[a] = ArmDecision(a, "continue", "", eff, tests[key].p_value, None, ci)
    new_state = DecisionState(tests)

    # Family-wise correction across every treatment arm; arms without a test count as p = 1.
    raw = [arms[a].p_value if arms[a].p_value is not None else 1.0 for a in treatments]
    adjusted = dict(zip(treatments, adjust(raw, policy.correction)))

    good = 1 if ns.higher_is_better else -1
    for a in treatments:
        d = arms[a]
        if a not in effects:
            continue
        eff = effects[a]
        # 5. Guardrails: non-inferiority on each guardrail metric's confidence sequence.
        results = []
        for g in policy.guardrails:
            try:
                ge = analyse(stats[control][g.metric], stats[a][g.metric], cuped=g.cuped, relative=g.relative)
            except InsufficientData as e:
                results.append(GuardrailResult(a, g.metric, "pending", None, None, None,
                                               -g.margin if g.higher_is_better else g.margin,
                                               f"guardrail {g.metric} on {a}: pending (insufficient data: {e})"))
                continue
            (lo, hi), _ = _interval(ge, policy.alpha, policy.planned_users_per_arm)
            results.append(non_inferiority(a, _guardrail_on_scale(g, ge), ge.estimate, lo, hi))
        results_t = tuple(results)
        p_adj = adjusted[a]
        st = tests[_test_key(a, ns, eff)]
        group = method[a] == "group"
        planned = _planned_effect(eff, policy, len(treatments), good) if group else None
        base = dict(arm=a, effect=eff, p_value=d.p_value, p_adjusted=p_adj, ci=d.ci, guardrails=results_t,
                    planned_effect=planned)
        failed = [r for r in results if r.status == "fail"]
        if failed:
            arms[a] = ArmDecision(outcome="rollback", reason="; ".join(r.reason for r in failed), **base)
            continue
        sig = st.crossed if group else p_adj < policy.alpha
        # Directions follow the sign of μ_T − μ_C (the test scale has the same sign by construction).
        now_dir = good * eff.direction
        seen_dir = good * st.sign
        desc = (f"{ns.name} effect {eff.estimate:+.4g} ({'relative' if eff.relative else 'absolute'}), "
                + (f"group-sequential ({policy.spending} spending, {st.boundary_rule} boundaries) z={eff.test_estimate / math.sqrt(eff.test_variance):+.3g} "
                   f"at information fraction {st.fractions[-1]:.2f}, boundary |z| ≥ {st.bounds[-1]:.3g} "
                   f"{'crossed' if st.crossed else 'not crossed'}"
                   if group else
                   f"always-valid p={d.p_value:.3g}, {policy.correction}-adjusted p={p_adj:.3g}")
                + (f"; {eff.note}" if eff.note else ""))
        # 6. Significantly worse north star.
        if sig and seen_dir < 0 and now_dir < 0:
            arms[a] = ArmDecision(outcome="rollback", reason=f"north star significantly worse: {desc}", **base)
            continue
        # 7. Promote only with significance in the right direction, enough users, all guardrails passed.
        n_min = min(eff.n_control, eff.n_treatment)
        pending = [r for r in results if r.status != "pass"]
        if sig and seen_dir > 0 and now_dir > 0:
            if n_min < policy.min_users_per_arm:
                why = f"significant but min sample not reached ({n_min} < {policy.min_users_per_arm} users per arm): {desc}"
            elif pending:
                why = f"significant but guardrail(s) not yet passed: {'; '.join(r.reason for r in pending)}"
            else:
                arms[a] = ArmDecision(outcome="promote", reason=f"north star significantly better: {desc}", **base)
                continue
        elif sig:
            why = f"significant at an earlier look but the direction has changed: {desc}"
        elif group and st.complete:
            # the design's final look is taken: all of α is spent, a later look could not decide
            arms[a] = ArmDecision(outcome="inconclusive", reason=(
                f"final analysis of the group-sequential design ({_horizon(policy)}) without a significant "
                f"effect (it was sized for the planned {format_effect(planned, eff.relative)}): "
                f"{desc}"), **base)
            continue
        else:
            why = f"not significant yet: {desc}"
            if group and policy.futility is not None and st.fractions[-1] > 0:
                z = good * eff.test_estimate / math.sqrt(eff.test_variance)
                fut, cp = futile(z, st.fractions, policy.alpha / len(treatments), policy.spending, policy.power,
                                 policy.futility, information=st.information, bounds=st.bounds,
                                 planned_share=_users(eff) / (st.fractions[-1] * policy.planned_users_per_arm),
                                 rule=st.boundary_rule)
                if fut:
                    arms[a] = ArmDecision(outcome="inconclusive", reason=(
                        f"futility: {cp:.1%} chance to win by the end of the design ({_horizon(policy)}) even if "
                        f"the true effect were the planned {format_effect(planned, eff.relative)} "
                        f"(< {policy.futility:.0%}): {desc}"), **base)
                    continue
        # 8. Continue (or inconclusive at max duration, decided in _finish).
        arms[a] = ArmDecision(outcome="inconclusive" if elapsed_days >= policy.max_days else "continue",
                              reason=why, **base)

    return _finish(arms, treatments, new_state, srm, elapsed_days, policy,
                   _secondary(policy, stats, control, running))


def _secondary(policy: DecisionPolicy, stats, control: str, treatments: list[str]) -> tuple[dict, ...]:
    """Secondary metrics are reported, never gating: always-valid p (CS-matched τ), BH across all pairs."""
    rows = []
    for m in policy.secondary:
        for a in treatments:
            if stats.get(control, {}).get(m.name) is None or stats.get(a, {}).get(m.name) is None:
                rows.append({"arm": a, "metric": m.name, "estimate": None, "p_value": 1.0, "note": "missing data"})
                continue
            try:
                e = analyse(stats[control][m.name], stats[a][m.name], cuped=m.cuped, relative=m.relative)
            except InsufficientData as err:
                # No user's window has closed yet: that is a matter of time, not of missing users.
                unread = m.matures_day > 0 and min(stats[control][m.name].n, stats[a][m.name].n) == 0
                note = f"not matured: {m.name} matures on day {m.matures_day}" if unread else str(err)
                rows.append({"arm": a, "metric": m.name, "estimate": None, "p_value": 1.0, "note": note})
                continue
            (lo, hi), rho = _interval(e, policy.alpha, policy.planned_users_per_arm)
            p = float(msprt_p_value(e.test_estimate, e.test_variance, 1 / math.sqrt(rho)))
            rows.append({"arm": a, "metric": m.name, "estimate": e.estimate, "ci": [lo, hi], "p_value": p})
    for r, q in zip(rows, benjamini_hochberg([r["p_value"] for r in rows])):
        r["q_value"] = q
    return tuple(rows)
