"""Pure conversions from stored objects (plain dicts, as the API server or the local store keeps
them) to the small views the reconcilers take, plus the spend roll-up of an Evolution."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterable, Mapping

from cambrian.operator.api import trainer_delta_json
from cambrian.operator.reconcile.actions import A_APPLIED, A_RELEASED, A_REPAIR_ASKED, A_SPEND_COUNTED
from cambrian.operator.reconcile.ledger import parse_mark, plus
from cambrian.operator.reconcile.observations import HypothesisView, RolloutView, Spend

A_TOKENS = "cambrian.dev/tokens"
A_DOLLARS = "cambrian.dev/dollars"
# On an Evolution: the LLM spend of wake-ups that created no Hypothesis to carry it (every proposal was
# rejected, or the carrier was refused), as JSON {"through": last wake-up charged, "tokens", "dollars"}.
# Without it, a proposer whose every answer fails validation would spend without limit.
A_UNATTRIBUTED = "cambrian.dev/unattributed-spend"
# On a Rollout the core started: the surrogate's predicted online effect of its treatment, as JSON
# {"hypothesis", "mean", "sd", "by"}: what the report sets beside the measured effect.
A_PREDICTED = "cambrian.dev/predicted-effect"


def hypothesis_view(obj: Mapping[str, Any]) -> HypothesisView:
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj.get("metadata") or {}
    delta = spec.get("delta") or {}
    trainer_delta = trainer_delta_json(spec.get("component"), delta)
    return HypothesisView(
        name=meta["name"],
        phase=status.get("phase"),
        component=spec.get("component", ""),
        offline_metric=status.get("offlineMetric"),
        offline_score=status.get("offlineScore"),
        bundle_uri=status.get("bundleUri"),
        attempts=int(status.get("attempts") or 0),
        created=str(meta.get("creationTimestamp") or ""),
        delta=trainer_delta,
        verdict=status.get("verdict"),
        failure_stage=status.get("failureStage"),
        repair_of=(spec.get("origin") or {}).get("repairOf"),
        persona=(spec.get("origin") or {}).get("persona"),
        gain=status.get("gain"),
        noise_floor=status.get("noiseFloor"),
        baseline=status.get("baseline"),
        proxy_metrics=status.get("proxyMetrics"),
        evaluations=evaluations(status),
        confirmations=int(status.get("confirmations") or 0),
        wakeup=(spec.get("origin") or {}).get("wakeup"),
        undecided_tests=tuple(status.get("undecidedTests") or ()),
        repair_asked=(meta.get("annotations") or {}).get(A_REPAIR_ASKED) or None,
        spent=hypothesis_spend(obj),
        counted=parse_mark((meta.get("annotations") or {}).get(A_SPEND_COUNTED)),
    )


def evaluations(status: Mapping[str, Any]) -> int:
    """Training runs a Hypothesis has cost (what counts against spec.agent.budgets.evaluations): a first look
    (spec.fidelity) is one run like a full one."""
    return int(status.get("attempts") or 0) + int(status.get("confirmations") or 0) + sum(
        int(v) for v in (status.get("confirmationRetries") or {}).values()) + int(
        (status.get("firstLook") or {}).get("runs") or 0)


def parse_time(value: Any) -> datetime | None:
    """A stored timestamp: RFC 3339 text as the API server and the local store keep it, or a datetime where the
    client already parsed it; None when absent."""
    if not value:
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def rollout_view(obj: Mapping[str, Any]) -> RolloutView:
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj.get("metadata") or {}
    treatments = spec.get("treatments") or []
    by_arm = {t.get("name"): t for t in treatments}
    winner = by_arm.get(status.get("winner")) if status.get("winner") else None
    return RolloutView(
        name=meta["name"],
        phase=status.get("phase"),
        hypotheses=tuple(t["hypothesisRef"]["name"] for t in treatments if t.get("hypothesisRef")),
        decision=status.get("decision"),
        winner_hypothesis=(winner or {}).get("hypothesisRef", {}).get("name") if winner else None,
        winner_bundle=(winner or {}).get("bundle") if winner else None,
        reason=status.get("reason"),
        effects=tuple(status.get("effects") or ()),
        arms=tuple((t["hypothesisRef"]["name"], t.get("name") or "") for t in treatments if t.get("hypothesisRef")),
        control_bundle=(spec.get("control") or {}).get("bundle"),
        retired=status.get("retired") or None,
        applied=(meta.get("annotations") or {}).get(A_APPLIED) or None,
        released=(meta.get("annotations") or {}).get(A_RELEASED) or None,
        started_at=parse_time(status.get("startedAt")),
        outcomes=tuple((a.get("name") or "", a["outcome"], a.get("reason") or "")
                       for a in status.get("arms") or [] if a.get("outcome")),
    )


def rollout_for(hypothesis: str, rollouts: Iterable[Mapping[str, Any]]) -> RolloutView | None:
    """The rollout that serves this hypothesis as a treatment now, else the newest that did (a hypothesis is
    tested again after a launch overtook its rollout; creation times have one-second resolution)."""
    objs = sorted(rollouts, key=lambda r: str((r.get("metadata") or {}).get("creationTimestamp") or ""))
    mine = [v for v in map(rollout_view, objs) if hypothesis in v.hypotheses]
    live = [v for v in mine if not v.concluded]
    return (live or mine)[-1] if mine else None


def belongs_to(obj: Mapping[str, Any], evolution: str) -> bool:
    return ((obj.get("spec") or {}).get("evolutionRef") or {}).get("name") == evolution


def unattributed(annotations: Mapping[str, str] | None) -> dict[str, Any]:
    """The Evolution's A_UNATTRIBUTED record ({"through": 0, ...} when absent or unreadable)."""
    try:
        d = json.loads((annotations or {}).get(A_UNATTRIBUTED) or "{}")
        return {"through": int(d.get("through") or 0), "tokens": int(d.get("tokens") or 0),
                "dollars": float(d.get("dollars") or 0.0)}
    except (ValueError, TypeError, AttributeError):
        return {"through": 0, "tokens": 0, "dollars": 0.0}


def charge_unattributed(annotations: Mapping[str, str] | None, wakeup: int, tokens: int, dollars: float) -> str | None:
    """The A_UNATTRIBUTED value after charging wake-up `wakeup`; None when it was charged already (wake-ups
    are numbered in order, so a replay after a restart never charges twice)."""
    d = unattributed(annotations)
    if wakeup <= d["through"]:
        return None
    return json.dumps({"through": wakeup, "tokens": d["tokens"] + int(tokens),
                       "dollars": round(d["dollars"] + float(dollars), 6)}, sort_keys=True)


def hypothesis_spend(obj: Mapping[str, Any]) -> Spend:
    """What one Hypothesis cost: its wake-up's LLM spend when it carries it, its GPU hours and training runs."""
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    status = obj.get("status") or {}
    return Spend(tokens=int(float(ann.get(A_TOKENS, 0) or 0)), dollars=float(ann.get(A_DOLLARS, 0) or 0),
                 gpu_hours=float(status.get("gpuHours") or 0), evaluations=evaluations(status))


def spend(hypotheses: Iterable[Mapping[str, Any]], baseline_attempts: int = 0,
          evolution_annotations: Mapping[str, str] | None = None) -> Spend:
    """What the Hypotheses that exist now show, with the Evolution's own runs and unattributed LLM spend (the
    Evolution adds what deleted ones spent: reconcile/ledger.py)."""
    extra = unattributed(evolution_annotations)
    total = Spend(tokens=extra["tokens"], dollars=extra["dollars"], evaluations=baseline_attempts)
    for h in map(hypothesis_spend, hypotheses):
        total = plus(total, h)
    return total
