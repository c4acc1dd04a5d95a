"""kopf handlers for cluster mode: thin and level-based.

Every handler does the same three things: gather the actual state (the object, its children, its
Evolution, Prometheus) into plain observations, call the pure core, then apply the core's actions
through the Kubernetes platform and persist the new status. Timers re-run this periodically, so a
missed event or an operator restart only delays work; create/update handlers react at once.
If applying an action fails, the status is NOT written (TemporaryError): the next run replays from
the persisted status, and deterministic child names make the replay safe.

Run with `cambrian operator run` (operator/cli.py) or `kopf run -m cambrian.operator.handlers`.
Environment: CAMBRIAN_PROMETHEUS_URL, CAMBRIAN_OPERATOR_INTERVAL (seconds, default 15),
CAMBRIAN_OPERATOR_CONFIG (the chart's operator.yaml: pod templates), CAMBRIAN_METRICS_PORT (the
Prometheus exporter, default 8000; 0 picks a free port; "off" disables it), GEMINI_API_KEY /
OPENAI_API_KEY for LLM agents.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timezone
from typing import Any

import kopf

from cambrian.errors import ConfigError
from cambrian.operator import api, metrics
from cambrian.operator.platform.base import ActionRefused, MetricsUnavailable, apply_actions
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import readout as RD
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile import views
from cambrian.operator.reconcile import common as C
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import RolloutObservation

log = logging.getLogger("cambrian.operator")

GROUP, VERSION = api.GROUP, api.VERSION
FINALIZER = "cambrian.dev/finalizer"
APPROVE = "cambrian.dev/approve"
INTERVAL = float(os.environ.get("CAMBRIAN_OPERATOR_INTERVAL", "15"))
RETRY_DELAY = 10.0


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Settings and the platform
# ---------------------------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.scanning.disabled = True  # no CRD scanning: the handlers name their resources (no cluster-wide list)
    if getattr(memo, "platform", None) is None:
        from cambrian.operator.platform.kubernetes import KubernetesPlatform, load_operator_config
        from cambrian.operator.proposing import ClusterProposer

        load_kube_config()
        memo.platform = KubernetesPlatform(prometheus_url=os.environ.get("CAMBRIAN_PROMETHEUS_URL"),
                                           proposer=ClusterProposer(),
                                           config=load_operator_config(os.environ.get("CAMBRIAN_OPERATOR_CONFIG")))
    if os.environ.get("CAMBRIAN_METRICS_PORT", "8000").lower() not in ("off", "none", ""):
        log.info("operator metrics on port %s", metrics.serve())


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    """In a pod: the service account; elsewhere: $KUBECONFIG as it is now (not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def load_kube_config() -> None:
    """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        # read $KUBECONFIG now: the client's default path was fixed when it was imported
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)


def _custom():
    from kubernetes import client

    return client.CustomObjectsApi()


def _list(plural: str, namespace: str) -> list[dict[str, Any]]:
    return _custom().list_namespaced_custom_object(GROUP, VERSION, namespace, plural).get("items", [])


def _get(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.rest import ApiException

    try:
        return _custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


# ---------------------------------------------------------------------------------------------
# Shared plumbing
# ---------------------------------------------------------------------------------------------


def _meta(body: kopf.Body) -> Meta:
    m = body["metadata"]
    return Meta(m["name"], m.get("uid", ""), m.get("namespace"), m.get("generation"), dict(m.get("annotations") or {}))


def _spec(kind: str, body: kopf.Body, status: Any, patch: kopf.Patch, meta: Meta, memo: kopf.Memo) -> Any:
    """Parse the spec. An invalid one (admitted before the CRD learnt a rule, or wrong where the CRD
    cannot look: spec.baseline) makes the object Failed with a Warning event, once per generation;
    returns None then, and nothing more is tried until the spec changes."""
    try:
        return api.parse_spec(kind, dict(body.get("spec") or {}))
    except ConfigError as exc:
        if not C.blocked(status, meta.generation):
            _fail_until_spec_changes(memo, patch, dict(body.get("status") or {}), kind, meta, status,
                                     C.INVALID_SPEC, str(exc))
        return None


_REPORTED = threading.Lock()


def _reported(memo: kopf.Memo, meta: Meta, mark: bool = False) -> bool:
    """Was a failure of this generation already reported by this process? A timer and a change handler
    of the same object run concurrently on the same old status, so the status alone cannot tell."""
    with _REPORTED:
        seen = memo.setdefault("failed_generations", {})
        if seen.get(meta.uid) == meta.generation:
            return True
        if mark:
            seen[meta.uid] = meta.generation
        return False


def _fail_until_spec_changes(memo: kopf.Memo, patch: kopf.Patch, old: dict[str, Any], kind: str, meta: Meta,
                             status: Any, reason: str, message: str) -> None:
    result = C.fail_until_spec_changes(meta, kind, status, reason, message, now())
    if _reported(memo, meta, mark=True):
        result.actions = []  # the status is written again (the same), the event is not posted twice
    _fail(memo.platform, patch, old, result)


def _fail(platform: Any, patch: kopf.Patch, old: dict[str, Any], result: Any) -> None:
    """Persist a failure status and post its events (best effort: the status is what counts)."""
    for action in result.actions:
        try:
            platform.record(action)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record %s: %s", action.event, exc)
    _persist(patch, old, result.status)


def _persist(patch: kopf.Patch, old: dict[str, Any], new: Any) -> None:
    """Patch only what changed, so an idle timer tick sends nothing."""
    wire = new.wire()
    for key in old:
        if key not in wire:
            patch.status[key] = None  # merge patch: null removes
    for key, value in wire.items():
        if old.get(key) != value:
            patch.status[key] = value


def _apply(memo: kopf.Memo, actions: list, kind: str, meta: Meta, status: Any, old: dict[str, Any],
           patch: kopf.Patch) -> bool:
    """Apply the core's actions; True when all were. A refusal is reported on the object instead of
    retried blindly: a permanent one fails it until its spec changes, another one (RBAC, a quota, a
    missing HTTPRoute) is shown and tried again on the next tick. Other errors (network, conflicts,
    5xx) are retried soon from the persisted status."""
    try:
        apply_actions(memo.platform, actions)
        return True
    except ActionRefused as exc:
        log.warning("%s %s/%s: %s", kind, meta.namespace, meta.name, exc)
        if exc.permanent:
            _fail_until_spec_changes(memo, patch, old, kind, meta, status, C.REFUSED, str(exc))
        else:
            _fail(memo.platform, patch, old, C.waiting_on(meta, kind, status, str(exc), now()))
        return False
    except Exception as exc:  # API errors, conflicts, timeouts: retry from the persisted status
        raise kopf.TemporaryError(f"applying {len(actions)} action(s) failed: {exc}", delay=RETRY_DELAY) from exc


# ---------------------------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------------------------


def reconcile_hypothesis(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    meta = _meta(body)
    old = dict(body.get("status") or {})
    status = api.parse_status("Hypothesis", old)
    if C.blocked(status, meta.generation) or _reported(memo, meta):
        return
    spec = _spec("Hypothesis", body, status, patch, meta, memo)
    if spec is None:
        return
    ns = meta.namespace or "default"
    evo_obj = _get("evolutions", ns, spec.evolution_ref.name)
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
            ctx = H.EvolutionContext(
                name=evo_obj["metadata"]["name"], uid=evo_obj["metadata"].get("uid", ""), spec=evo_spec,
                baseline=E.effective_baseline(evo_spec, evo_status),
                budget_exhausted=E.exhausted_budget(evo_spec, evo_status.spend),
            )
    platform = memo.platform
    jobs = platform.training_jobs(H.owner_of(meta)) if status.phase == "Training" or status.phase == "Validated" else []
    rollout = views.rollout_for(meta.name, _list("rollouts", ns)) if status.phase in ("Scored", "Live") else None
    result = H.reconcile(meta, spec, status, ctx, jobs, rollout, now(), evolution_problem=problem)
    if _apply(memo, result.actions, "Hypothesis", meta, status, old, patch):
        C.clear_waiting(result.status, now(), meta.generation)
        _persist(patch, old, result.status)


@kopf.on.create(GROUP, VERSION, "hypotheses")
@kopf.on.update(GROUP, VERSION, "hypotheses", field="spec")
def hypothesis_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_hypothesis(body, patch, memo)


@kopf.timer(GROUP, VERSION, "hypotheses", interval=INTERVAL, initial_delay=INTERVAL,
            when=lambda status, **_: (status or {}).get("phase") not in H.TERMINAL)
def hypothesis_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_hypothesis(body, patch, memo)


# ---------------------------------------------------------------------------------------------
# Rollout
# ---------------------------------------------------------------------------------------------


def _serving(ns: str, spec: api.RolloutSpec) -> tuple[api.Serving, str | None]:
    if spec.evolution_ref is not None:
        evo = _get("evolutions", ns, spec.evolution_ref.name)
        if evo is not None:
            try:
                es = api.parse_spec("Evolution", evo.get("spec"))
                return es.serving, es.storage.claim_name
            except ConfigError:
                pass
    return api.Serving(), None


def reconcile_rollout(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    meta = _meta(body)
    old = dict(body.get("status") or {})
    status = api.parse_status("Rollout", old)
    if C.blocked(status, meta.generation) or _reported(memo, meta):
        return
    spec = _spec("Rollout", body, status, patch, meta, memo)
    if spec is None:
        return
    ns = meta.namespace or "default"
    serving, claim = _serving(ns, spec)
    platform = memo.platform
    owner = R.owner_of(meta)
    t = now()
    analysis = None
    if R.readout_due(status, t):
        try:
            r = platform.prometheus_readout(meta.name)
            analysis = RD.analyse(spec, status, r.stats, t, r.exposures, r.cohorts)
            metrics.observe_guardrails(meta.name, analysis.guardrails)
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
    result = R.reconcile(meta, spec, status, serving, claim, obs, t)
    if _apply(memo, result.actions, "Rollout", meta, status, old, patch):
        C.clear_waiting(result.status, now(), meta.generation)
        _persist(patch, old, result.status)


@kopf.on.create(GROUP, VERSION, "rollouts")
@kopf.on.update(GROUP, VERSION, "rollouts", field="spec")
@kopf.on.update(GROUP, VERSION, "rollouts", field=f"metadata.annotations")
def rollout_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_rollout(body, patch, memo)


@kopf.timer(GROUP, VERSION, "rollouts", interval=INTERVAL, initial_delay=INTERVAL)
def rollout_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_rollout(body, patch, memo)


@kopf.on.delete(GROUP, VERSION, "rollouts")
def rollout_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every user back on control before the arms go (owner references then remove the rest)."""
    meta = _meta(body)
    try:
        spec = api.parse_spec("Rollout", dict(body.get("spec") or {}))
    except ConfigError:
        return  # never admitted: nothing was deployed
    serving, _ = _serving(meta.namespace or "default", spec)
    routed = memo.platform.router_weights(R.owner_of(meta), serving.wire()) is not None
    try:
        apply_actions(memo.platform, R.finalize(meta, spec, serving, routed))
    except ActionRefused as exc:  # the object is going away: log it, never block its deletion
        log.warning("rollout %s/%s: cleanup refused: %s", meta.namespace, meta.name, exc)
    except Exception as exc:
        raise kopf.TemporaryError(f"cleanup of rollout {meta.name} failed: {exc}", delay=RETRY_DELAY) from exc
    metrics.forget_rollout(meta.name)


# ---------------------------------------------------------------------------------------------
# Evolution
# ---------------------------------------------------------------------------------------------


def _champion_metrics(platform: Any, meta: Meta, status: api.EvolutionStatus, hyps: list[dict],
                      memo: kopf.Memo) -> dict[str, float] | None:
    """Offline metrics of the current champion: its Hypothesis's proxy metrics, or the baseline Job's."""
    if status.champion.hypothesis:
        h = next((h for h in hyps if h["metadata"]["name"] == status.champion.hypothesis), None)
        if h is not None:
            return {k: float(v["value"]) for k, v in ((h.get("status") or {}).get("proxyMetrics") or {}).items()}
    cache = memo.setdefault("baseline_metrics", {}) if hasattr(memo, "setdefault") else {}
    if meta.uid not in cache:
        name = E.baseline_job_name(meta)
        job = next((j for j in platform.training_jobs(E.owner_of(meta)) if j.name == name), None)
        if job is None or job.metrics is None:
            return None
        cache[meta.uid] = {k: float(v) for k, v in job.metrics.items() if isinstance(v, (int, float))}
    return cache[meta.uid]


def _top_k(spec: api.EvolutionSpec, status: api.EvolutionStatus, meta: Meta, hyps: list[dict], platform: Any,
           memo: kopf.Memo, t: datetime) -> Any:
    """The Online Agent's selection, only when a review is due (an LLM ranker is asked once per review)."""
    if not status.champion.bundle or (status.next_review_at is not None and t < status.next_review_at):
        return None
    from cambrian.operator.proposing import select_top_k
    from cambrian.operator.reconcile.observations import TopK

    try:
        sel = select_top_k(spec, E.effective_baseline(spec, status), hyps,
                           _champion_metrics(platform, meta, status, hyps, memo))
    except Exception as exc:  # noqa: BLE001 - the agent failing must not stop the loop: fall back to the stand-in
        log.warning("evolution %s: online agent failed (%s); using the deterministic ranking", meta.name, exc)
        return None
    return TopK(start=tuple(sel.start), retire=tuple(sel.retire), ranked_by=sel.ranked_by, note=sel.note)


def reconcile_evolution(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    meta = _meta(body)
    old = dict(body.get("status") or {})
    status = api.parse_status("Evolution", old)
    if C.blocked(status, meta.generation) or _reported(memo, meta):
        return
    spec = _spec("Evolution", body, status, patch, meta, memo)
    if spec is None:
        return
    ns = meta.namespace or "default"
    platform = memo.platform
    hyps = [h for h in _list("hypotheses", ns) if views.belongs_to(h, meta.name)]
    ros = [r for r in _list("rollouts", ns) if views.belongs_to(r, meta.name)]
    baseline_job = None
    if status.champion.bundle is None:
        name = E.baseline_job_name(meta)
        baseline_job = next((j for j in platform.training_jobs(E.owner_of(meta)) if j.name == name), None)
    t = now()
    result = E.reconcile(
        meta, spec, status, [views.hypothesis_view(h) for h in hyps], [views.rollout_view(r) for r in ros],
        baseline_job, views.spend(hyps, baseline_attempts=1), t, top_k=_top_k(spec, status, meta, hyps, platform, memo, t),
    )
    if _apply(memo, result.actions, "Evolution", meta, status, old, patch):
        C.clear_waiting(result.status, now(), meta.generation)
        _persist(patch, old, result.status)
    metrics.observe_evolution(meta.name, hyps, spec.agent.budgets.wire(), result.status.spend.wire(), t)


@kopf.on.create(GROUP, VERSION, "evolutions")
@kopf.on.update(GROUP, VERSION, "evolutions", field="spec")
def evolution_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_evolution(body, patch, memo)


@kopf.timer(GROUP, VERSION, "evolutions", interval=INTERVAL, initial_delay=INTERVAL,
            when=lambda status, **_: (status or {}).get("phase") != "Failed")
def evolution_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_evolution(body, patch, memo)


@kopf.on.delete(GROUP, VERSION, "evolutions", optional=True)
def evolution_deleted(body: kopf.Body, **_: Any) -> None:
    metrics.forget_evolution(body["metadata"]["name"])
