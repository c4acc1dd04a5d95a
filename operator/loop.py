"""One reconcile step, shared by the kopf handlers (cluster) and the local driver (local mode).

    step = loop.step("Rollout", obj, objects, platform, now)   # gather -> core -> apply
    persist(step.result.status)                                 # the caller's storage: a kopf patch or a file

Gathering the observations (children, the Evolution, Prometheus, the Online Agent), calling the pure
core and applying its actions is the same on both platforms; only where objects are read from
(`Objects`: the API server or the local store) and where the new status is written differ. If applying
an action fails, `ApplyFailed` is raised and the caller must NOT persist the status: the next step
replays from the old one, and deterministic child names make the replay safe.

What can only fail again is reported once and then left alone until the spec changes: an invalid spec
or a child the platform refuses for good (`ActionRefused(permanent=True)`) makes the object Failed
(`Step.failed`, the status to persist, its Warning event recorded), and every later step is a no-op
(`Step.result is None`) until metadata.generation moves. A refusal outside the spec (RBAC, a quota) is
reported the same way but tried again at the next step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol

from cambrian.errors import CambrianError, ConfigError
from cambrian.operator import api
from cambrian.operator.platform.base import ActionRefused, MetricQueryRefused, MetricsUnavailable, apply_actions
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import fidelity as FI
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile import promql as PQ
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile import views
from cambrian.operator.reconcile import common as C
from cambrian.operator.reconcile.actions import A_APPROVE, A_RELEASED, A_RETIRED
from cambrian.operator.reconcile.champion import serving_name
from cambrian.operator.reconcile.common import Meta, Result
from cambrian.operator.reconcile.observations import Analysis, RolloutObservation, TopK

log = logging.getLogger("cambrian.operator")

APPROVE = A_APPROVE
# The annotations a Rollout's step reads (a person's or its Evolution's word): a change of one must wake it, since a
# concluded Rollout has no timer (handlers.InputAnnotationsProgress).
ROLLOUT_INPUTS = frozenset({A_APPROVE, A_RETIRED, A_RELEASED})
PLURALS = {"Evolution": "evolutions", "Hypothesis": "hypotheses", "Rollout": "rollouts"}


class Objects(Protocol):
    """Read access to the stored custom objects (plain dicts, as the API server returns them)."""

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]: ...


class ApplyFailed(CambrianError):
    """An action could not be applied: do not persist the new status (the next step replays)."""


@dataclass
class Step:
    meta: Meta
    result: Result | None  # None: the object failed until its spec changes, and it has not changed
    hypotheses: list[dict[str, Any]] = field(default_factory=list)  # Evolution: its Hypothesis objects
    analysis: Analysis | None = None  # Rollout: the readout taken at this step, if one was due
    failed: bool = False  # result is a failure report (Failed, or blocked by a refusal): persist it as it is


def meta_of(obj: dict[str, Any]) -> Meta:
    return Meta.from_obj(obj)


def step(kind: str, obj: dict[str, Any], objects: Objects, platform: Any, now: datetime,
         cache: dict | None = None, first_report: Callable[[Meta], bool] = lambda meta: True,
         admit_first: bool = False) -> Step:
    """Gather observations, run the core, apply its actions through `platform`; the caller persists
    `step.result.status` (unless `result` is None). `first_report(meta)` says whether this process has not
    yet reported a failure of this generation (a timer and a change handler can race on one object).
    `admit_first` (Hypothesis only): see reconcile.hypothesis.reconcile; `result.requeue_after == 0` then says
    that the object was admitted and wants its next step at once."""
    meta = meta_of(obj)
    status = api.parse_status(kind, obj.get("status") or {})
    if C.blocked(status, meta.generation):
        return Step(meta, None)
    try:
        spec = api.parse_spec(kind, dict(obj.get("spec") or {}))
    except ConfigError as exc:
        failure = C.fail_until_spec_changes(meta, kind, status, C.INVALID_SPEC, str(exc), now)
        return _report(platform, meta, failure, first_report(meta))
    s = RECONCILERS[kind](meta, spec, status, objects, platform, now, {} if cache is None else cache,
                          **({"admit_first": True} if admit_first else {}))
    try:
        apply_actions(platform, s.result.actions)
    except ActionRefused as exc:
        if exc.namespace_terminating:  # it goes with its namespace: nothing to report, nothing to retry
            log.info("%s %s/%s: namespace is being deleted, not stepped", kind, meta.namespace, meta.name)
            return Step(meta, None)
        log.warning("%s %s/%s: %s", kind, meta.namespace, meta.name, exc)
        if exc.permanent:
            failure = C.fail_until_spec_changes(meta, kind, status, C.REFUSED, str(exc), now)
            return _report(platform, meta, failure, first_report(meta))
        return _report(platform, meta, C.waiting_on(meta, kind, status, str(exc), now), True)
    except Exception as exc:  # API errors, conflicts, dead processes: retry from the persisted status
        raise ApplyFailed(f"applying {len(s.result.actions)} action(s) failed: {exc}") from exc
    C.clear_waiting(s.result.status, now, meta.generation)
    return s


def _report(platform: Any, meta: Meta, failure: Result, post_events: bool) -> Step:
    """Record a failure's events (best effort: the status is what counts) and hand it back to persist."""
    for action in failure.actions if post_events else []:
        try:
            platform.record(action)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record %s: %s", action.event, exc)
    return Step(meta, failure, failed=True)


# ---------------------------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------------------------


def _hypothesis(meta: Meta, spec: Any, status: Any, objects: Objects, platform: Any, now: datetime,
                cache: dict, admit_first: bool = False) -> Step:
    ns = meta.namespace or "default"
    evo_obj = objects.get("evolutions", ns, spec.evolution_ref.name)
    ctx = None
    problem = None
    if evo_obj is not None:
        evo_status = api.parse_status("Evolution", evo_obj.get("status"))
        try:
            evo_spec = api.parse_spec("Evolution", evo_obj.get("spec"))
        except ConfigError:
            evo_spec = None
            problem = "its spec is invalid (see its status); waiting until it is fixed"
        if evo_spec is not None and C.failed_until_spec_changes(evo_status):
            evo_spec, problem = None, f"failed: {evo_status.reason}; waiting until its spec changes"
        if evo_spec is not None:
            champ = evo_status.champion.hypothesis
            champ_obj = objects.get("hypotheses", ns, champ) if champ else None
            look_ref, look_missing = FI.reference_for(evo_spec, evo_status)
            ctx = H.EvolutionContext(
                name=evo_obj["metadata"]["name"], uid=evo_obj["metadata"].get("uid", ""), spec=evo_spec,
                baseline=E.effective_baseline(evo_spec, evo_status),
                budget_exhausted=E.exhausted_budget(evo_spec, evo_status.spend),
                reference=N.reference_metrics(evo_status, (champ_obj or {}).get("status") if champ_obj else None),
                first_look_reference=look_ref, first_look_unavailable=look_missing,
                evolution_runs=E.evolution_runs(evo_spec, evo_status),
                peers=lambda evo=spec.evolution_ref.name: [views.hypothesis_view(h) for h in
                                                           of_evolution(objects, "hypotheses", ns, evo)],
                decided=frozenset(evo_status.handled_decisions), superseded=frozenset(evo_status.superseded),
                ledger=evo_status.spend_ledger,
            )
    jobs = platform.training_jobs(H.owner_of(meta)) if status.phase in ("Training", "Validated") else []
    rollout = views.rollout_for(meta.name, objects.list("rollouts", ns)) if status.phase in ("Scored", "Live") else None
    return Step(meta, H.reconcile(meta, spec, status, ctx, jobs, rollout, now, evolution_problem=problem,
                                  admit_first=admit_first))


# ---------------------------------------------------------------------------------------------
# Rollout
# ---------------------------------------------------------------------------------------------


def _evolution_of(objects: Objects, ns: str, spec: api.RolloutSpec) -> dict | None:
    return objects.get("evolutions", ns, spec.evolution_ref.name) if spec.evolution_ref is not None else None


def serving_of(objects: Objects, ns: str, spec: api.RolloutSpec) -> tuple[api.Serving, str | None]:
    """The serving settings and bundle claim of the rollout's Evolution (defaults without one)."""
    evo = _evolution_of(objects, ns, spec)
    if evo is not None:
        try:
            es = api.parse_spec("Evolution", evo.get("spec"))
            return es.serving, es.storage.claim_name
        except ConfigError:
            pass
    return api.Serving(), None


def _rollout(meta: Meta, spec: Any, status: Any, objects: Objects, platform: Any, now: datetime,
             cache: dict) -> Step:
    ns = meta.namespace or "default"
    serving, claim = serving_of(objects, ns, spec)
    owner = R.owner_of(meta)
    analysis, unavailable, refused = None, None, None
    if status.observed_generation != meta.generation and status.phase in (None, "Pending", "Deploying", "Failed"):
        # a new spec, before it starts: its PromQL is parsed by the Prometheus that will run it
        templates = PQ.check_queries(spec)
        try:
            if templates:
                platform.check_promql(meta.name, templates)
        except MetricQueryRefused as exc:
            refused = str(exc)
        except MetricsUnavailable as exc:  # checked again by every readout, which decides nothing on a refusal
            log.warning("rollout %s/%s: its PromQL is not checked yet: %s", ns, meta.name, exc)
    if R.readout_due(status, now):
        # imported when a readout is due: the statistics (scipy) stay out of an operator with no live Rollout
        from cambrian.operator.reconcile import readout as RD

        try:
            r = platform.prometheus_readout(meta.name, PQ.queries(spec, status, now))
            analysis = RD.analyse(spec, status, r.stats, now, r.exposures, r.cohorts, r.values)
        except MetricQueryRefused as exc:
            log.warning("rollout %s/%s: no readout: %s", ns, meta.name, exc)
            unavailable = f"Prometheus refuses a query of the spec: {exc}"
        except MetricsUnavailable as exc:
            log.warning("rollout %s/%s: no readout: %s", ns, meta.name, exc)
            unavailable = str(exc)
        except ValueError as exc:  # the statistics refused the data: decide nothing this time
            log.warning("rollout %s/%s: analysis failed: %s", ns, meta.name, exc)
            unavailable = f"analysis failed: {exc}"
    route = _route(platform, owner, serving)
    obs = RolloutObservation(
        arms=platform.arms(owner),
        weights=platform.router_weights(owner, serving.wire()),
        services=platform.router_services(owner, serving.wire()),
        analysis=analysis,
        approval=(meta.annotations.get(APPROVE) or None),
        retired=(meta.annotations.get(A_RETIRED) or None),
        released=(meta.annotations.get(A_RELEASED) or None),
        unavailable=unavailable,
        refused=refused,
        route=route,
        router_ready=route is not None and platform.router_ready(owner),
    )
    return Step(meta, R.reconcile(meta, spec, status, serving, claim, obs, now), analysis=analysis)


def _route(platform: Any, owner: Any, serving: api.Serving) -> Any:
    """spec.serving.httpRoute as the platform reads it (None without one)."""
    return platform.http_route(owner, serving.wire()) if serving.http_route is not None else None


def finalize_rollout(obj: dict, objects: Objects, platform: Any) -> None:
    """On deletion: every user back on control before the arms go."""
    meta = meta_of(obj)
    try:
        spec = api.parse_spec("Rollout", dict(obj.get("spec") or {}))
    except ConfigError:
        return  # never admitted: nothing was deployed
    ns = meta.namespace or "default"
    serving, _ = serving_of(objects, ns, spec)
    owner = R.owner_of(meta)
    routed = platform.router_weights(owner, serving.wire()) is not None
    evo = _evolution_of(objects, ns, spec)
    evo_meta = meta_of(evo) if evo is not None else None
    champion = serving_name(evo_meta.name, evo_meta.uid) if evo_meta else None  # where its route goes back to
    try:
        apply_actions(platform, R.finalize(meta, spec, serving, routed, _route(platform, owner, serving), champion))
    except ActionRefused as exc:  # the object is going away: log it, never block its deletion
        log.warning("rollout %s/%s: cleanup refused: %s", meta.namespace, meta.name, exc)
    except Exception as exc:
        raise ApplyFailed(f"finalizing rollout {meta.name} failed: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Evolution
# ---------------------------------------------------------------------------------------------


def _top_k(spec: api.EvolutionSpec, status: api.EvolutionStatus, meta: Meta, hyps: list[dict], platform: Any,
           cache: dict, now: datetime) -> TopK | None:
    """The Online Agent's selection, only when a review is due (an LLM ranker is asked once per review)."""
    if not status.champion.bundle or (status.next_review_at is not None and now < status.next_review_at):
        return None
    from cambrian.operator.proposing import select_top_k

    try:
        sel = select_top_k(spec, E.effective_baseline(spec, status), hyps)
    except Exception as exc:  # noqa: BLE001 - the agent failing must not stop the loop: fall back to the stand-in
        log.warning("evolution %s: online agent failed (%s); using the deterministic ranking", meta.name, exc)
        return None
    predictions = tuple((h, float(p["mean"]), float(p["sd"])) for h, p in sorted((sel.predictions or {}).items()))
    return TopK(start=tuple(sel.start), retire=tuple(sel.retire), ranked_by=sel.ranked_by, note=sel.note,
                predictions=predictions)


def of_evolution(objects: Objects, plural: str, namespace: str, evolution: str) -> list[dict[str, Any]]:
    """One Evolution's Hypotheses or Rollouts: from the by-Evolution index when `objects` has one
    (operator/indexed.py), else the namespace's list filtered. With the list, every Evolution's tick read
    every object of the namespace: O(Evolutions x objects) per interval (issue 16, 10 Evolutions)."""
    by_evolution = getattr(objects, "of_evolution", None)
    if by_evolution is not None:
        return by_evolution(plural, namespace, evolution)
    return [o for o in objects.list(plural, namespace) if views.belongs_to(o, evolution)]


def _evolution(meta: Meta, spec: Any, status: Any, objects: Objects, platform: Any, now: datetime,
               cache: dict) -> Step:
    ns = meta.namespace or "default"
    hyps = of_evolution(objects, "hypotheses", ns, meta.name)
    ros = of_evolution(objects, "rollouts", ns, meta.name)
    baseline_jobs = []
    # the baseline's seeds until it is champion; the champion's first-look seeds until measured (spec.fidelity)
    names = set(N.baseline_job_names(meta, spec) if status.champion.bundle is None else ())
    names.update(FI.reference_job_names(meta, spec, status, E.effective_baseline(spec, status)))
    if names:
        baseline_jobs = [j for j in platform.training_jobs(E.owner_of(meta)) if j.name in names]
    spent = views.spend(hyps, baseline_attempts=E.evolution_runs(spec, status),
                        evolution_annotations=meta.annotations)
    result = E.reconcile(
        meta, spec, status, [views.hypothesis_view(h) for h in hyps], [views.rollout_view(r) for r in ros],
        baseline_jobs, spent, now,
        top_k=_top_k(spec, status, meta, hyps, platform, cache, now),
        champion_serving=(platform.champion_serving(E.owner_of(meta), spec.serving.wire())
                          if status.champion.bundle else None),
    )
    return Step(meta, result, hypotheses=hyps)


RECONCILERS: dict[str, Callable[[Meta, Any, Any, Objects, Any, datetime, dict], Step]] = {
    "Evolution": _evolution, "Hypothesis": _hypothesis, "Rollout": _rollout,
}
