"""From one Prometheus readout (plain per-arm sums) to the core's Analysis, through the statistics
package's `decide`. Pure: the adapter does the querying and passes the numbers in.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Mapping

from cambrian.operator.api import RolloutSpec, RolloutStatus, duration_seconds
from cambrian.operator.reconcile import promql
from cambrian.operator.reconcile.observations import Analysis, Effect
from cambrian.stats import DecisionPolicy, Guardrail, HardLimit, Metric, decide, least_evidence_weights


def policy_for(spec: RolloutSpec) -> DecisionPolicy:
    ns = spec.metrics.north_star[0]
    st = spec.statistics
    guardrails, limits = [], []
    for g in spec.metrics.guardrails:
        if g.margin is not None:
            guardrails.append(Guardrail(g.metric, g.margin, relative=True, higher_is_better=g.direction == "maximize",
                                        cuped=st.cuped))
        if g.limit is not None:
            limits.append(HardLimit(g.metric, max=g.limit) if g.direction == "minimize" else HardLimit(g.metric, min=g.limit))
    return DecisionPolicy(
        north_star=Metric(ns.name, higher_is_better=ns.direction == "maximize", relative=True, cuped=st.cuped),
        planned_users_per_arm=st.planned_sample_per_arm or 4 * st.min_sample_per_arm,
        min_users_per_arm=st.min_sample_per_arm,
        max_days=duration_seconds(st.max_duration) / 86400,
        alpha=st.alpha,
        guardrails=tuple(guardrails),
        hard_limits=tuple(limits),
        secondary=tuple(Metric(m.name, higher_is_better=m.direction == "maximize", cuped=st.cuped,
                               matures_day=math.ceil(duration_seconds(m.window) / 86400))
                        for m in spec.metrics.north_star[1:]),
        srm_threshold=st.srm_alpha,
        sequential=st.sequential,
        # a planned sample is a horizon of the group design; without one the design ends at maxDuration, and
        # its boundaries hold whatever the looks' correlation (stats/decision._rule: a maturing north star)
        horizon="users" if st.planned_sample_per_arm else "days",
    )


def srm_expectation(spec: RolloutSpec, status: RolloutStatus, cohorts: Mapping[int, Mapping[str, int]] | None,
                    exposures: Mapping[str, int] | None) -> tuple[dict[str, float], dict[str, int] | None]:
    """Expected arm shares and observed users for the sample-ratio check (observed None: no check).

    Users are counted once, in the arm of their first exposure, under the weights of the ramp phase the router
    stamped on it (`cohorts`: phase -> arm -> users). The router's phase of step s is s + 1 (rollout.weights_phase),
    so every user first exposed in a phase the Rollout has run is expected at that step's weights, whenever the step
    started and however the collector numbers its days. Users of phase 0 (a log without phases: a product's own
    router) came in under some step the ramp has run, which the log does not say: they are expected at the mix of
    those steps' weights that their counts are least evidence against (stats.srm.least_evidence_weights), so they
    never roll a healthy test back once the ramp moves and still flag counts no step explains. A phase past the
    current step's (the router moved on its own: weights changed by hand) is left out. Without cohorts, every
    exposure against the current step's weights, which is exact only while the ramp has not moved."""
    names = spec.arm_names()
    step = min(status.step, len(spec.ramp.steps) - 1)
    steps = [dict(zip(names, s.weights)) for s in spec.ramp.steps[:step + 1]]
    current = {a: w / 100 for a, w in steps[step].items()}
    known = {p: c for p, c in (cohorts or {}).items() if 1 <= p <= step + 1 and sum(c.values()) > 0}
    unstamped = {a: int(n) for a, n in (cohorts or {}).get(0, {}).items() if a in names and n}
    if not known and (step == 0 or not unstamped):
        return current, dict(exposures) if exposures is not None and step == 0 else None
    expected = {a: 0.0 for a in names}
    observed = {a: unstamped.get(a, 0) for a in names}
    for phase, counts in known.items():
        n = sum(counts.values())
        for a in names:
            observed[a] += int(counts.get(a, 0))
            expected[a] += n * steps[phase - 1][a] / 100
    if unstamped:
        return least_evidence_weights(observed, expected, sum(unstamped.values()), steps), observed
    return {a: expected[a] / sum(expected.values()) for a in names}, observed


def analyse(
    spec: RolloutSpec,
    status: RolloutStatus,
    stats: Mapping[str, Mapping[str, Any]],
    now: datetime,
    exposures: Mapping[str, int] | None = None,
    cohorts: Mapping[int, Mapping[str, int]] | None = None,
    values: Mapping[str, Mapping[str, float]] | None = None,
) -> Analysis:
    """stats: arm -> metric -> SufficientStats/RatioStats (users whose window has closed); values: arm -> key ->
    the answers of the spec's PromQL (reconcile/promql.py: guardrail values and promql metrics' statistics)."""
    stats, values = promql.merge(spec, stats, values)
    names = spec.arm_names()
    weights, observed = srm_expectation(spec, status, cohorts, exposures)
    started = status.started_at or now
    # A/B/n arms stopped at an earlier readout (rollout._stop_decided_arms): their verdict stands and their later data
    # (users served control's model) is not read; their exposures still count in the sample-ratio check
    stopped = {a.name: (a.outcome, a.reason or "") for a in status.arms if a.stopped_at is not None and a.outcome}
    d = decide(
        policy_for(spec),
        control=spec.control.name,
        weights=weights,
        stats=stats,
        elapsed_days=max(0.0, (now - started).total_seconds() / 86400),
        values=values,
        exposures=observed,
        state=status.decision_state,
        stopped=stopped,
    )
    ns = spec.metrics.north_star[0].name
    n = {a: int(stats[a][ns].n) if ns in stats.get(a, {}) else int((observed or {}).get(a, 0)) for a in names}
    effects = []
    for arm, ad in d.arms.items():
        if ad.effect is None or ad.ci is None:
            continue
        p = ad.p_adjusted if ad.p_adjusted is not None else ad.p_value
        effects.append(Effect(arm, ns, float(ad.effect.estimate), float(ad.ci[0]), float(ad.ci[1]),
                              relative=ad.effect.relative, p_value=None if p is None else float(p),
                              planned_effect=_finite(ad.planned_effect)))
    decided = d.to_dict()
    srm = d.srm
    # A/B/n: an arm that failed (guardrail, hard limit, worse north star) while others continue is stopped by the
    # core at this readout (rollout._stop_decided_arms), the others go on
    outcome, reason = d.outcome, d.reason
    rails: dict[tuple[str, str], bool] = {}
    for arm, ad in d.arms.items():
        for g in ad.guardrails:
            rails[(arm, g.metric)] = rails.get((arm, g.metric), False) or g.status == "fail"
        for b in ad.breaches:
            rails[(arm, b.metric)] = True
    return Analysis(
        guardrails=tuple((a, m, v) for (a, m), v in sorted(rails.items())),
        outcome=outcome,
        reason=reason,
        n=n,
        winner=d.winner,
        effects=tuple(effects),
        srm_p_value=None if srm is None else float(srm.p_value),
        srm_mismatch=bool(srm and srm.mismatch),
        state=decided["state"],
        detail=decided["arms"],
        arm_outcomes=tuple((a, ad.outcome, ad.reason) for a, ad in d.arms.items()),
    )


def _finite(v: float | None) -> float | None:
    """A status has no NaN or infinity."""
    return float(v) if v is not None and math.isfinite(v) else None
