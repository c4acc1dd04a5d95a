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

from cambrian.operator import api, loop, metrics
from cambrian.operator.reconcile import hypothesis as H

log = logging.getLogger("cambrian.operator")

GROUP, VERSION = api.GROUP, api.VERSION
FINALIZER = "cambrian.dev/finalizer"
APPROVE = loop.APPROVE
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
# Shared plumbing: one step of cambrian.operator.loop (shared with the local driver), persisted as a patch
# ---------------------------------------------------------------------------------------------


class _ClusterObjects:
    """loop.Objects over the API server."""

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return _get(plural, namespace, name)

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        return _list(plural, namespace)


def _persist(patch: kopf.Patch, old: dict[str, Any], new: Any) -> None:
    """Patch only what changed, so an idle timer tick sends nothing."""
    wire = new.wire()
    for key in old:
        if key not in wire:
            patch.status[key] = None  # merge patch: null removes
    for key, value in wire.items():
        if old.get(key) != value:
            patch.status[key] = value


def _cache(memo: kopf.Memo) -> dict:
    return memo.setdefault("loop_cache", {}) if hasattr(memo, "setdefault") else {}


_REPORTED = threading.Lock()


def _reported(memo: kopf.Memo, meta: Any, mark: bool = False) -> bool:
    """Was a failure of this generation already reported by this process? A timer and a change handler
    of the same object run concurrently on the same old status, so the status alone cannot tell."""
    with _REPORTED:
        seen = memo.setdefault("failed_generations", {}) if hasattr(memo, "setdefault") else {}
        if seen.get(meta.uid) == meta.generation:
            return True
        if mark:
            seen[meta.uid] = meta.generation
        return False


def _step(kind: str, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> loop.Step | None:
    """Gather -> core -> apply (cambrian.operator.loop), then persist the new status as a patch. None when
    there was nothing to do: the object failed until its spec changes. A failed apply writes nothing."""
    old = dict(body.get("status") or {})
    if _reported(memo, loop.meta_of(dict(body))):
        return None
    try:
        s = loop.step(kind, dict(body), _ClusterObjects(), memo.platform, now(), _cache(memo),
                      first_report=lambda meta: not _reported(memo, meta, mark=True))
    except loop.ApplyFailed as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    if s.result is None:
        return None
    _persist(patch, old, s.result.status)
    return None if s.failed else s


# ---------------------------------------------------------------------------------------------
# Hypothesis
# ---------------------------------------------------------------------------------------------


def reconcile_hypothesis(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    _step("Hypothesis", body, patch, memo)


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


def reconcile_rollout(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    s = _step("Rollout", body, patch, memo)
    if s is not None and s.analysis is not None:
        metrics.observe_guardrails(s.meta.name, s.analysis.guardrails)


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
    try:
        loop.finalize_rollout(dict(body), _ClusterObjects(), memo.platform)
    except loop.ApplyFailed as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    metrics.forget_rollout(body["metadata"]["name"])


# ---------------------------------------------------------------------------------------------
# Evolution
# ---------------------------------------------------------------------------------------------


def reconcile_evolution(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    s = _step("Evolution", body, patch, memo)
    if s is None:
        return
    spec = api.parse_spec("Evolution", dict(body.get("spec") or {}))
    metrics.observe_evolution(s.meta.name, s.hypotheses, spec.agent.budgets.wire(), s.result.status.spend.wire(), now())


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
