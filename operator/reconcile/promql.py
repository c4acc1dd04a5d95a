"""PromQL over the user's own series, pure: templates rendered per arm, answers turned into the analysis' input.

Two uses (README: Metrics in PromQL over your own series):
- a guardrail's `query`: one number per arm, checked against an absolute limit (as an Argo Rollouts analysis
  template's successCondition); it has no variance, so no relative margin and no test;
- a `metrics.promql` metric: one template per sufficient statistic (n, Σy, Σy², ...), the same sums the
  collector exports, so CUPED, the sequential tests and the guardrails read them unchanged. Prometheus holds no
  per-user values: the sums must be over users, kept by the user's service. The answers are checked for what
  per-user sums must satisfy (whole n, Σy² ≥ (Σy)²/n, 0 ≤ Σy ≤ n for a proportion); sums that cannot be per-user
  sums stop the readout with the reason (no decision), they never reach a verdict.

The adapter runs the queries (one instant for all) and hands back arm -> key -> value; a query that answered
nothing, several series or NaN has no value, and an arm missing one statistic has no sums for that metric:
the decision rule then waits for it ("missing data"), never promoting.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

from cambrian.operator.api import RolloutSpec, RolloutStatus, stat_wire_name

if TYPE_CHECKING:  # the statistics (numpy, scipy) load only when a readout is due
    from cambrian.stats.sums import RatioStats, SufficientStats

SEP = "/"  # key of a statistic: "<metric>/<stat>"; metric names cannot hold it (METRIC_NAME_PATTERN)


class PromQLDataError(ValueError):
    """A PromQL metric's answers cannot be the per-user sums it declares: no decision on them."""


def window(status: RolloutStatus, now: datetime) -> str:
    """{{window}}: the time since the rollout started, as a PromQL duration (at least 1s)."""
    started = status.started_at or now
    return f"{max(1, int((now - started).total_seconds()))}s"


def render(template: str, arm: str, window_: str) -> str:
    # an arm name is a DNS label and a window digits and "s": nothing to escape inside PromQL
    return template.replace("{{arm}}", arm).replace("{{window}}", window_)


def templates(spec: RolloutSpec) -> dict[str, str]:
    """Every template of the spec by where it is written, for the parse check (README names these paths)."""
    out = {f"metrics.guardrails[{g.metric}].query": g.query for g in spec.metrics.guardrails if g.query}
    for m in spec.metrics.promql:
        for stat, text in m.queries.given().items():
            out[f"metrics.promql[{m.name}].queries.{stat_wire_name(stat)}"] = text
    return out


def check_queries(spec: RolloutSpec) -> dict[str, str]:
    """The templates rendered as the first readout will run them (control arm, a 1s window): what the
    Prometheus that runs them parses before the rollout starts."""
    return {where: render(t, spec.control.name, "1s") for where, t in templates(spec).items()}


def queries(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> dict[str, dict[str, str]]:
    """arm -> key -> PromQL for one readout: guardrail queries under the guardrail's metric, statistics under
    "<metric>/<stat>". Every arm, control included."""
    if not templates(spec):
        return {}
    w = window(status, now)
    out: dict[str, dict[str, str]] = {}
    for arm in spec.arm_names():
        mine = {g.metric: render(g.query, arm, w) for g in spec.metrics.guardrails if g.query}
        for m in spec.metrics.promql:
            mine.update({f"{m.name}{SEP}{stat}": render(t, arm, w) for stat, t in m.queries.given().items()})
        out[arm] = mine
    return out


def merge(spec: RolloutSpec, collected: Mapping[str, Mapping[str, Any]],
          answers: Mapping[str, Mapping[str, float]] | None
          ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """(arm -> metric -> sums: the collector's, a promql metric's in place of any of the same name; arm ->
    guardrail -> value of the guardrail queries). A promql metric never falls back to the collector's sums for
    an arm whose queries did not all answer. Raises PromQLDataError for answers per-user sums cannot give."""
    answers = answers or {}
    own = {m.name for m in spec.metrics.promql}
    stats = {arm: {k: v for k, v in per.items() if k not in own} for arm, per in collected.items()}
    gauges: dict[str, dict[str, float]] = {}
    for arm, values in answers.items():
        g = {k: v for k, v in values.items() if SEP not in k}
        if g:
            gauges[arm] = g
        for m in spec.metrics.promql:
            want = m.queries.given()
            got = {stat: values.get(f"{m.name}{SEP}{stat}") for stat in want}
            if any(v is None for v in got.values()):
                continue  # not every statistic answered: no sums, the decision waits
            stats.setdefault(arm, {})[m.name] = sums(m.name, m.kind, arm, got)
    return stats, gauges


def sums(metric: str, kind: str, arm: str, got: Mapping[str, float]) -> SufficientStats | RatioStats:
    """One arm's answers as the sums contract (second moments about 0), after the checks per-user sums pass."""
    from cambrian.stats.sums import RatioStats, SufficientStats

    where = f"promql metric {metric} on arm {arm}"
    for stat, v in got.items():
        if not math.isfinite(v):
            raise PromQLDataError(f"{where}: {stat_wire_name(stat)} is {v}")
    n = got["n"]
    if n < 0 or abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
        raise PromQLDataError(f"{where}: users = {n:g} is not a whole number (increase() and rate() "
                              "extrapolate: wrap the query in round(), or export the count as a gauge)")
    n = int(round(n))
    if kind == "proportion":
        y = got["sum_y"]
        if not 0 <= y <= n or abs(y - round(y)) > 1e-9 * max(1.0, abs(y)):
            raise PromQLDataError(f"{where}: sumY = {y:g} must count users with the outcome, a whole number "
                                  f"within 0..users = {n}; a count of events is not a proportion of users")
        y = float(round(y))
        return SufficientStats(n=n, sum_y=y, sum_y2=y)  # y is 0 or 1 per user: Σy² = Σy
    if kind == "ratio":
        _second_moment(where, n, got["sum_m"], got["sum_m2"], "sumM")
        _second_moment(where, n, got["sum_d"], got["sum_d2"], "sumD")
        return RatioStats(n=n, sum_m=got["sum_m"], sum_d=got["sum_d"], sum_m2=got["sum_m2"], sum_d2=got["sum_d2"],
                          sum_md=got["sum_md"])
    _second_moment(where, n, got["sum_y"], got["sum_y2"], "sumY")
    if "sum_x" in got:
        _second_moment(where, n, got["sum_x"], got["sum_x2"], "sumX")
    return SufficientStats(n=n, sum_y=got["sum_y"], sum_y2=got["sum_y2"], sum_x=got.get("sum_x", 0.0),
                           sum_x2=got.get("sum_x2", 0.0), sum_xy=got.get("sum_xy", 0.0))


def _second_moment(where: str, n: int, s: float, s2: float, name: str) -> None:
    """Σv² ≥ (Σv)²/n for any n values (their variance is not negative): else these are not per-user sums."""
    if n == 0:
        if s or s2:
            raise PromQLDataError(f"{where}: {name} and {name}2 must be 0 when users is 0")
        return
    floor = s * s / n
    if s2 < floor - 1e-9 * max(1.0, abs(floor)):
        raise PromQLDataError(f"{where}: {name}2 = {s2:g} is below {name}²/users = {floor:g}, which no {n} per-user "
                              f"values can give: the queries do not sum the same users")


