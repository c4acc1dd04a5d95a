"""One reconcile step, shared by the kopf handlers (cluster) and the local driver (local mode).

    step = loop.step("Rollout", obj, objects, platform, now)   # gather -> core -> apply
    persist(step.result.status)                                 # the caller's storage: a kopf patch or a file

Gathering the observations (children, the Evolution, Prometheus, the Online Agent), calling the pure
core and applying its actions is the same on both platforms; only where objects are read from
(`Objects`: the API server or the local store) and where the new status is written differ. If applying
an action fails, `ApplyFailed` is raised and the caller must NOT persist the status: the next step
replays from the old one, and deterministic child names make the replay safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol

from cambrian.errors import CambrianError, ConfigError
from cambrian.operator import api
from cambrian.operator.platform.base import MetricsUnavailable, apply_actions
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import readout as RD
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile import views
from cambrian.operator.reconcile.common import Meta, Result, set_condition
from cambrian.operator.reconcile.observations import Analysis, RolloutObservation, TopK

log = logging.getLogger("cambrian.operator")

APPROVE = "cambrian.dev/approve"
PLURALS = {"Evolution": "evolutions", "Hypothesis": "hypotheses", "Rollout": "rollouts"}


class Objects(Protocol):
    """Read access to the stored custom objects (plain dicts, as the API server returns them)."""

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]: ...


class InvalidSpec(ConfigError):
    """The object's spec does not validate; `status` is its stored status with Ready=False/InvalidSpec."""

    def __init__(self, message: str, status: Any):
        super().__init__(message)
        self.status = status


class ApplyFailed(CambrianError):
    """An action could not be applied: do not persist the new status (the next step replays)."""


@dataclass
class Step:
    meta: Meta
    result: Result
    hypotheses: list[dict[str, Any]] = field(default_factory=list)  # Evolution: its Hypothesis objects
    analysis: Analysis | None = None  # Rollout: the readout taken at this step, if one was due


def meta_of(obj: dict[str, Any]) -> Meta:
    return Meta.from_obj(obj)


def parse(kind: str, obj: dict[str, Any], meta: Meta, now: datetime) -> tuple[Any, Any]:
    """(spec, status) of a stored object; an invalid spec raises InvalidSpec carrying the status to report."""
    status = api.parse_status(kind, obj.get("status") or {})
    try:
        return api.parse_spec(kind, dict(obj.get("spec") or {})), status
    except ConfigError as exc:
        status.conditions = set_condition(status.conditions, "Ready", False, "InvalidSpec", str(exc), now,
                                          meta.generation)
        status.observed_generation = meta.generation
        raise InvalidSpec(str(exc), status) from None


def step(kind: str, obj: dict[str, Any], objects: Objects, platform: Any, now: datetime,
         cache: dict | None = None) -> Step:
    """Gather observations, run the core, apply its actions through `platform`; the caller persists."""
    s = RECONCILERS[kind](obj, objects, platform, now, {} if cache is None else cache)
    try:
        apply_actions(platform, s.result.actions)
    except Exception as exc:  # API errors, conflicts, dead processes: retry from the persisted status
        raise ApplyFailed(f"applying {len(s.result.actions)} action(s) failed: {exc}") from exc
    return s


# ---------------------------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------------------------


def _hypothesis(obj: dict, objects: Objects, platform: Any, now: datetime, cache: dict) -> Step:
    meta = meta_of(obj)
    spec, status = parse("Hypothesis", obj, meta, now)
    ns = meta.namespace or "default"
    evo_obj = objects.get("evolutions", ns, spec.evolution_ref.name)
    ctx = None
    if evo_obj is not None:
        try:
            evo_spec = api.parse_spec("Evolution", evo_obj.get("spec"))
        except ConfigError:
            evo_spec = None
        if evo_spec is not None:
            evo_status = api.parse_status("Evolution", evo_obj.get("status"))
            ctx = H.EvolutionContext(
                name=evo_obj["metadata"]["name"], uid=evo_obj["metadata"].get("uid", ""), spec=evo_spec,
                baseline=E.effective_baseline(evo_spec, evo_status),
                budget_exhausted=E.exhausted_budget(evo_spec, evo_status.spend),
            )
    jobs = platform.training_jobs(H.owner_of(meta)) if status.phase in ("Training", "Validated") else []
    rollout = views.rollout_for(meta.name, objects.list("rollouts", ns)) if status.phase in ("Scored", "Live") else None
    return Step(meta, H.reconcile(meta, spec, status, ctx, jobs, rollout, now))


# ---------------------------------------------------------------------------------------------
# Rollout
# ---------------------------------------------------------------------------------------------


def serving_of(objects: Objects, ns: str, spec: api.RolloutSpec) -> tuple[api.Serving, str | None]:
    """The serving settings and bundle claim of the rollout's Evolution (defaults without one)."""
    if spec.evolution_ref is not None:
        evo = objects.get("evolutions", ns, spec.evolution_ref.name)
        if evo is not None:
            try:
                es = api.parse_spec("Evolution", evo.get("spec"))
                return es.serving, es.storage.claim_name
            except ConfigError:
                pass
    return api.Serving(), None


def _rollout(obj: dict, objects: Objects, platform: Any, now: datetime, cache: dict) -> Step:
    meta = meta_of(obj)
    spec, status = parse("Rollout", obj, meta, now)
    ns = meta.namespace or "default"
    serving, claim = serving_of(objects, ns, spec)
    owner = R.owner_of(meta)
    analysis = None
    if R.readout_due(status, now):
        try:
            r = platform.prometheus_readout(meta.name)
            analysis = RD.analyse(spec, status, r.stats, now, r.exposures, r.cohorts)
        except MetricsUnavailable as exc:
            log.warning("rollout %s/%s: no readout: %s", ns, meta.name, exc)
        except ValueError as exc:  # the statistics refused the data: decide nothing this time
            log.warning("rollout %s/%s: analysis failed: %s", ns, meta.name, exc)
    obs = RolloutObservation(
        arms=platform.arms(owner),
        weights=platform.router_weights(owner, serving.wire()),
        analysis=analysis,
        approval=(meta.annotations.get(APPROVE) or None),
    )
    return Step(meta, R.reconcile(meta, spec, status, serving, claim, obs, now), analysis=analysis)


def finalize_rollout(obj: dict, objects: Objects, platform: Any) -> None:
    """On deletion: every user back on control before the arms go."""
    meta = meta_of(obj)
    try:
        spec = api.parse_spec("Rollout", dict(obj.get("spec") or {}))
    except ConfigError:
        return  # never admitted: nothing was deployed
    serving, _ = serving_of(objects, meta.namespace or "default", spec)
    routed = platform.router_weights(R.owner_of(meta), serving.wire()) is not None
    try:
        apply_actions(platform, R.finalize(meta, spec, serving, routed))
    except Exception as exc:
        raise ApplyFailed(f"finalizing rollout {meta.name} failed: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Evolution
# ---------------------------------------------------------------------------------------------


def _champion_metrics(platform: Any, meta: Meta, status: api.EvolutionStatus, hyps: list[dict],
                      cache: dict) -> dict[str, float] | None:
    """Offline metrics of the current champion: its Hypothesis's proxy metrics, or the baseline job's."""
    if status.champion.hypothesis:
        h = next((h for h in hyps if h["metadata"]["name"] == status.champion.hypothesis), None)
        if h is not None:
            return {k: float(v["value"]) for k, v in ((h.get("status") or {}).get("proxyMetrics") or {}).items()}
    known = cache.setdefault("baseline_metrics", {})
    if meta.uid not in known:
        name = E.baseline_job_name(meta)
        job = next((j for j in platform.training_jobs(E.owner_of(meta)) if j.name == name), None)
        if job is None or job.metrics is None:
            return None
        known[meta.uid] = {k: float(v) for k, v in job.metrics.items() if isinstance(v, (int, float))}
    return known[meta.uid]


def _top_k(spec: api.EvolutionSpec, status: api.EvolutionStatus, meta: Meta, hyps: list[dict], platform: Any,
           cache: dict, now: datetime) -> TopK | None:
    """The Online Agent's selection, only when a review is due (an LLM ranker is asked once per review)."""
    if not status.champion.bundle or (status.next_review_at is not None and now < status.next_review_at):
        return None
    from cambrian.operator.proposing import select_top_k

    try:
        sel = select_top_k(spec, E.effective_baseline(spec, status), hyps,
                           _champion_metrics(platform, meta, status, hyps, cache))
    except Exception as exc:  # noqa: BLE001 - the agent failing must not stop the loop: fall back to the stand-in
        log.warning("evolution %s: online agent failed (%s); using the deterministic ranking", meta.name, exc)
        return None
    return TopK(start=tuple(sel.start), retire=tuple(sel.retire), ranked_by=sel.ranked_by, note=sel.note)


def _evolution(obj: dict, objects: Objects, platform: Any, now: datetime, cache: dict) -> Step:
    meta = meta_of(obj)
    spec, status = parse("Evolution", obj, meta, now)
    ns = meta.namespace or "default"
    hyps = [h for h in objects.list("hypotheses", ns) if views.belongs_to(h, meta.name)]
    ros = [r for r in objects.list("rollouts", ns) if views.belongs_to(r, meta.name)]
    baseline_job = None
    if status.champion.bundle is None:
        name = E.baseline_job_name(meta)
        baseline_job = next((j for j in platform.training_jobs(E.owner_of(meta)) if j.name == name), None)
    result = E.reconcile(
        meta, spec, status, [views.hypothesis_view(h) for h in hyps], [views.rollout_view(r) for r in ros],
        baseline_job, views.spend(hyps, baseline_attempts=1), now,
        top_k=_top_k(spec, status, meta, hyps, platform, cache, now),
    )
    return Step(meta, result, hypotheses=hyps)


RECONCILERS: dict[str, Callable[[dict, Objects, Any, datetime, dict], Step]] = {
    "Evolution": _evolution, "Hypothesis": _hypothesis, "Rollout": _rollout,
}
