"""The operator's Prometheus metrics (names fixed by the chart's PrometheusRule and the dashboards).

    cambrian_hypothesis_phase{evolution,phase}          hypotheses in the phase (count)
    cambrian_hypothesis_phase_seconds{evolution,phase}  age of the oldest hypothesis in the phase
    cambrian_guardrail_breached{rollout,arm,metric}     1 while the guardrail is breached, else 0
    cambrian_budget_remaining{evolution,kind}           tokens | dollars | gpu_hours left (capped budgets only)
    cambrian_rollout_effect{rollout,arm,metric,value}    the latest readout's effect of each treatment on the north
                                                        star: value = estimate | lower | upper (its always-valid
                                                        interval) | planned (what the design was sized for)

The handlers call the `observe_*` functions with what they already read; `serve` starts the HTTP
exporter on $CAMBRIAN_METRICS_PORT (default 8000; 0 picks a free port). One registry per process,
separate from prometheus_client's default so tests can read it without global state of other code.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from cambrian.operator.reconcile.views import parse_time

PHASES = ("Proposed", "Validated", "Training", "Scored", "Live", "Launched", "Retired", "Failed", "Rejected")
BUDGET_KINDS = (("tokens", "tokens", "tokens"), ("dollars", "dollars", "dollars"), ("gpu_hours", "gpuHours", "gpu_hours"))

REGISTRY = CollectorRegistry()
HYP_PHASE = Gauge("cambrian_hypothesis_phase", "Hypotheses of an Evolution in each phase",
                  ["evolution", "phase"], registry=REGISTRY)
HYP_PHASE_SECONDS = Gauge("cambrian_hypothesis_phase_seconds",
                          "Seconds the oldest hypothesis of an Evolution has been in the phase (0: none)",
                          ["evolution", "phase"], registry=REGISTRY)
GUARDRAIL = Gauge("cambrian_guardrail_breached", "1 while a rollout arm breaches a guardrail, else 0",
                  ["rollout", "arm", "metric"], registry=REGISTRY)
BUDGET = Gauge("cambrian_budget_remaining", "Budget left to an Evolution (capped budgets only)",
               ["evolution", "kind"], registry=REGISTRY)
EFFECT = Gauge("cambrian_rollout_effect", "The operator's latest reading of a treatment's effect on the north star "
               "(a fraction of control's mean when relative): estimate, always-valid interval, planned effect",
               ["rollout", "arm", "metric", "value"], registry=REGISTRY)

_lock = threading.Lock()
_server: Any = None
port: int | None = None  # the port the exporter listens on, once started


def serve(requested: int | None = None, addr: str | None = None) -> int:
    """Start the exporter once per process; returns its port. Address: $CAMBRIAN_METRICS_ADDR or all
    interfaces (the chart's Service scrapes the pod)."""
    global _server, port
    with _lock:
        if _server is not None:
            return port  # type: ignore[return-value]
        want = int(os.environ.get("CAMBRIAN_METRICS_PORT", "8000")) if requested is None else requested
        addr = addr or os.environ.get("CAMBRIAN_METRICS_ADDR", "0.0.0.0")
        result = start_http_server(want, addr=addr, registry=REGISTRY)
        _server = result[0] if isinstance(result, tuple) else result
        port = _server.server_port if hasattr(_server, "server_port") else want
        return port


def _age_seconds(status: Mapping[str, Any], meta: Mapping[str, Any], now: datetime) -> float:
    """Time in the current phase: the latest condition transition (every phase change moves one), else
    the creation time."""
    times = [t for t in (parse_time(c.get("lastTransitionTime")) for c in status.get("conditions") or []) if t]
    since = max(times) if times else parse_time(meta.get("creationTimestamp"))
    return max(0.0, (now - since).total_seconds()) if since else 0.0


def observe_evolution(name: str, hypotheses: Iterable[Mapping[str, Any]], budgets: Mapping[str, Any],
                      spend: Mapping[str, Any], now: datetime) -> None:
    """Counts and oldest ages per phase of the Evolution's hypotheses, and what is left of each budget.

    budgets / spend: the wire forms of spec.agent.budgets and status.spend (camelCase keys)."""
    count = {p: 0 for p in PHASES}
    oldest = {p: 0.0 for p in PHASES}
    for h in hypotheses:
        st = h.get("status") or {}
        phase = st.get("phase") or "Proposed"
        count[phase] = count.get(phase, 0) + 1
        oldest[phase] = max(oldest.get(phase, 0.0), _age_seconds(st, h.get("metadata") or {}, now))
    with _lock:
        for phase in count:
            HYP_PHASE.labels(name, phase).set(count[phase])
            HYP_PHASE_SECONDS.labels(name, phase).set(oldest[phase])
        for kind, key, _ in BUDGET_KINDS:
            cap = budgets.get(key)
            if cap is None:
                _remove(BUDGET, (name, kind))
            else:
                BUDGET.labels(name, kind).set(max(0.0, float(cap) - float(spend.get(key) or 0)))


def forget_evolution(name: str) -> None:
    with _lock:
        for phase in PHASES:
            _remove(HYP_PHASE, (name, phase))
            _remove(HYP_PHASE_SECONDS, (name, phase))
        for kind, _, _ in BUDGET_KINDS:
            _remove(BUDGET, (name, kind))


def observe_guardrails(rollout: str, guardrails: Iterable[tuple[str, str, bool]]) -> None:
    """The latest readout's guardrail verdicts of one rollout: (arm, metric, breached)."""
    with _lock:
        for arm, metric, breached in guardrails:
            GUARDRAIL.labels(rollout, arm, metric).set(1.0 if breached else 0.0)


def observe_effects(rollout: str, effects: Iterable[Any]) -> None:
    """The latest readout's effects of one rollout (reconcile.observations.Effect): what the decision read, so a
    dashboard shows the operator's own interval, not a recomputation. A value the readout lacks is removed."""
    with _lock:
        for e in effects:
            for value, v in (("estimate", e.estimate), ("lower", e.ci_low), ("upper", e.ci_high),
                             ("planned", e.planned_effect)):
                if v is None:
                    _remove(EFFECT, (rollout, e.arm, e.metric, value))
                else:
                    EFFECT.labels(rollout, e.arm, e.metric, value).set(float(v))


def forget_rollout(rollout: str) -> None:
    with _lock:
        for g in (GUARDRAIL, EFFECT):
            for labels in [k for k in _label_sets(g) if k[0] == rollout]:
                _remove(g, labels)


def _label_sets(g: Gauge) -> list[tuple[str, ...]]:
    return list(getattr(g, "_metrics", {}).keys())


def _remove(g: Gauge, labels: tuple[str, ...]) -> None:
    try:
        g.remove(*labels)
    except KeyError:
        pass
