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
OPENAI_API_KEY for LLM agents, CAMBRIAN_PROPOSER_TIMEOUT (seconds per LLM attempt, default 120) and
CAMBRIAN_PROPOSER_ATTEMPTS (default 3): LLM proposers run off the reconcile path (proposing.OffPathProposer),
every proposer in a child process per wake-up (proposing.ChildProposer).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from datetime import datetime, timezone
from typing import Any

import kopf
from kopf._core.reactor.inventory import ResourceMemories  # not exported; kopf.operator(memories=) takes one

from cambrian.operator import api, indexed, loop, metrics
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import rollout as R

log = logging.getLogger("cambrian.operator")

GROUP, VERSION = api.GROUP, api.VERSION
FINALIZER = "cambrian.dev/finalizer"
APPROVE = loop.APPROVE
INTERVAL = float(os.environ.get("CAMBRIAN_OPERATOR_INTERVAL", "15"))
RETRY_DELAY = 10.0
# How long a Job's or Pod's burst of updates may take before its Hypothesis is stepped once over them.
SETTLE_SECONDS = float(os.environ.get("CAMBRIAN_OPERATOR_SETTLE", "2"))


# How long kopf's per-object worker waits for the object's next event before it exits (see configure).
WORKER_IDLE_SECONDS = 0.5


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Settings and the platform
# ---------------------------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = InputAnnotationsProgress(loop.ROLLOUT_INPUTS, prefix=GROUP)
    settings.persistence.diffbase_storage = ChangeHandledDiffBase(
        CHANGE_HANDLED_KINDS, prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # kopf keeps a worker per object until it has had no event for this long, and the worker holds that
    # object's last watch event (a whole Job or Pod: 35-40 KB decoded) meanwhile. Its default, 5 s, kept about
    # a thousand of them alive at 1000 Hypotheses in flight; a Job's or Pod's burst of updates comes closer.
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    settings.scanning.disabled = True  # no CRD scanning: the handlers name their resources (no cluster-wide list)
    _bookkeeping(memo)
    memo.setdefault("write_status", write_status)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # --verbose keeps every line
        objects_log = logging.getLogger("kopf.objects")
        if not any(isinstance(f, QuietEventHandlers) for f in objects_log.filters):
            objects_log.addFilter(QuietEventHandlers())
    if getattr(memo, "platform", None) is None:
        from cambrian.operator.platform.kubernetes import KubernetesPlatform, load_operator_config
        from cambrian.operator.proposing import ChildProposer, OffPathProposer

        load_kube_config()
        timeout = float(os.environ.get("CAMBRIAN_PROPOSER_TIMEOUT", "120"))
        memo.platform = KubernetesPlatform(api_client=shared_api_client(),
                                           prometheus_url=os.environ.get("CAMBRIAN_PROMETHEUS_URL"),
                                           promql_url=os.environ.get("CAMBRIAN_PROMQL_URL") or None,
                                           prometheus_timeout=float(os.environ.get("CAMBRIAN_PROMETHEUS_TIMEOUT", "5")),
                                           proposer=OffPathProposer(ChildProposer(timeout_s=timeout), timeout_s=timeout,
                                                                    attempts=int(os.environ.get("CAMBRIAN_PROPOSER_ATTEMPTS", "3"))),
                                           config=load_operator_config(os.environ.get("CAMBRIAN_OPERATOR_CONFIG")),
                                           background_events=True)
    events = getattr(memo.platform, "_events", None)
    if events is not None and getattr(memo, "settle", None) is not None:
        events.gate = memo.settle.idle  # Events wait while admissions are queued, as the Jobs do (Settle.then)
    if os.environ.get("CAMBRIAN_METRICS_PORT", "8000").lower() not in ("off", "none", ""):
        log.info("operator metrics on port %s", metrics.serve())


# The handlers that run on every watch event of a Hypothesis, its Job and its Pod (they only schedule steps).
EVENT_HANDLERS = ("hypothesis_event", "hypothesis_gone", "training_job_event", "training_pod_event")


class QuietEventHandlers(logging.Filter):
    """kopf logs each successful handler call at INFO; for the event handlers that is 14 lines per Hypothesis
    saying nothing (what a step did is logged by the step). Their failures are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        msg = record.getMessage()
        return not (msg.endswith("succeeded.") and any(f"'{h}'" in msg for h in EVENT_HANDLERS))


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


# Kept-alive connections of the shared client: one per thread that sends requests (24 first-step, 24 follow-up
# and 4 settle workers, the side requests of a step, the event posters, kopf's handler threads). The client's
# default (5 per CPU: 10 on 2 cores) made the others open a TLS connection per request and drop it
# ("Connection pool is full, discarding connection" at 5,000 Hypotheses).
POOL_CONNECTIONS = 72
_API_CLIENT: Any = None
_API_CLIENT_CONFIG: Any = None  # the default Configuration it was made from
_API_CLIENT_LOCK = threading.Lock()


def shared_api_client() -> Any:
    """The process' one ApiClient (after load_kube_config): one connection pool, so requests reuse kept-alive
    TLS connections. A new ApiClient per call (what `client.CustomObjectsApi()` makes) deep-copies the
    configuration and opens a new TLS connection per request: 12% of the operator's CPU at 1000 Hypotheses.
    Made again when the default configuration is replaced (load_kube_config stores a new one), so a
    re-login or another kubeconfig is followed as a fresh ApiClient would."""
    global _API_CLIENT, _API_CLIENT_CONFIG
    from kubernetes import client

    with _API_CLIENT_LOCK:
        default = client.Configuration.get_default()
        if _API_CLIENT is None or _API_CLIENT_CONFIG is not default:
            config = client.Configuration.get_default_copy()
            config.connection_pool_maxsize = max(config.connection_pool_maxsize or 0, POOL_CONNECTIONS)
            _API_CLIENT, _API_CLIENT_CONFIG = client.ApiClient(config), default
        return _API_CLIENT


def _custom():
    from kubernetes import client

    return client.CustomObjectsApi(shared_api_client())


# Kinds with create/update handlers, the only ones whose events need kopf's diff base (a deep copy of the
# body per event, then diffed): Hypotheses, Jobs and Pods have event and index handlers only.
CHANGE_HANDLED_KINDS = frozenset({"Evolution", "Rollout"})


class ChangeHandledDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds the diff base of every event of every watched kind, also of kinds that have no
    change handler to use it (8% of the operator's CPU at 1000 Hypotheses, spent deep-copying Pods and
    Jobs). Only the kinds in `kinds` get it; the others an empty essence (no diff, no cause)."""

    def __init__(self, kinds: frozenset[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.kinds = kinds

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        kind = body.get("kind")
        if kind is not None and kind not in self.kinds:  # no kind (never from kopf): the full essence, to be safe
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


# Kinds with only index and event handlers: nothing kopf records about one of their objects outlives its event.
EVENT_ONLY_KINDS = frozenset({"Hypothesis", "Job", "Pod"})


class EventOnlyMemories(ResourceMemories):
    """kopf keeps a record per watched object for as long as it exists: a copy of the memo, an error throttler,
    indexing and daemon state (about 1.3 KiB; three per Hypothesis with its Job and Pod, 40 MiB at 10,000). It
    serves change handlers (progress, resume), timers and daemons, and retries of failed index functions;
    kinds in `kinds` have none of these (our index functions only slim a body and cannot fail on it), so
    their events get a fresh record that is not kept. Given to kopf.operator by `cambrian operator run`."""

    def __init__(self, kinds: frozenset[str] = EVENT_ONLY_KINDS) -> None:
        super().__init__()
        self.kinds = kinds

    async def recall(self, raw_body: Any, *, memobase: Any = None, noticed_by_listing: bool = False,
                     ephemeral: bool = False) -> Any:
        return await super().recall(raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing,
                                    ephemeral=ephemeral or raw_body.get("kind") in self.kinds)


class InputAnnotationsProgress(kopf.AnnotationsProgressStorage):
    """kopf's progress storage takes every annotation under its prefix (ours, cambrian.dev) for its own and clears
    it from the essence that change handlers' diffs are taken of. So a change of cambrian.dev/approve, /retired or
    /released woke no Rollout: a live one saw it at its next tick, a concluded one (no timer) never, and one its
    Evolution released kept its arms, router and status.arms[].ready true. The annotations in `inputs` stay in the
    essence (the diff base too), so the Rollouts' metadata.annotations change handler runs on them."""

    def __init__(self, inputs: frozenset[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.inputs = inputs

    def clear(self, *, essence: Any) -> Any:
        kept = {k: v for k, v in ((essence.get("metadata") or {}).get("annotations") or {}).items() if k in self.inputs}
        out = super().clear(essence=essence)
        if kept:
            out.setdefault("metadata", {}).setdefault("annotations", {}).update(kept)
        return out


# Kinds whose events only feed an index and schedule a settled step (no change handler, no timer, no patch of
# their own): of several queued events of one object, only the last one matters.
LATEST_ONLY_KINDS = frozenset({"Job", "Pod"})


def latest_only(process: Any, kinds: frozenset[str] = LATEST_ONLY_KINDS) -> Any:
    """kopf's per-object processor, skipping an event of `kinds` when a newer event of the same object is already
    queued (kopf sets the stream's `pressure` then): kopf 1.45 processes every watch event in full (indexes,
    handler selection, loggers, about a millisecond each) and no longer batches them, and a Job's and its Pod's
    dozen updates pile up while the event loop is behind in a burst. The newer event replaces the skipped one's
    index values and schedules the same settled step; a DELETED event is never skipped."""
    if getattr(process, "_latest_only", False):
        return process

    async def process_latest(*, raw_event: Any, stream_pressure: Any = None, **kwargs: Any) -> Any:
        if (stream_pressure is not None and stream_pressure.is_set() and raw_event.get("type") != "DELETED"
                and (raw_event.get("object") or {}).get("kind") in kinds):
            return None  # no patch of ours to wait for
        return await process(raw_event=raw_event, stream_pressure=stream_pressure, **kwargs)

    process_latest._latest_only = True  # type: ignore[attr-defined]
    return process_latest


def install_latest_only() -> None:
    """kopf builds each watcher's processor from this module attribute when the operator starts its tasks: set
    at import (before `kopf run -m` or `cambrian operator run` start them)."""
    from kopf._core.reactor import processing

    processing.process_resource_event = latest_only(processing.process_resource_event)


install_latest_only()


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


def status_patch(olds: list[dict[str, Any]], new: Any) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns each of `olds` into the new status: only the top-level
    keys that changed in any of them, sent whole, with null for every key (at any depth) that one of them
    has and the new status lacks, so that no key a step removed survives the merge. A step that changed
    nothing sends nothing."""
    wire = new.wire()
    whole = _whole(wire, olds)
    return {key: value for key, value in whole.items() if any(old.get(key) != wire.get(key) for old in olds)}


def _whole(value: Any, before: list[Any]) -> Any:
    """`value` as a merge patch over any of `before`: objects keep what they have and null what only
    an earlier value had (a merge patch merges objects key by key; lists and scalars it replaces)."""
    if not isinstance(value, dict):
        return value
    earlier = [b for b in before if isinstance(b, dict)]
    out: dict[str, Any] = {key: None for b in earlier for key in b if key not in value}
    out.update({key: _whole(v, [b[key] for b in earlier if key in b]) for key, v in value.items()})
    return out


def write_status(kind: str, namespace: str, name: str, change: dict[str, Any]) -> None:
    """Write a status patch now (the operator's way; unit tests leave it to kopf's patch). Called with the
    object's step lock held, so the writes of one object land in the order they were computed. kopf
    would send a handler's patch only after the handler returned: a timer's and a change handler's
    patches of one Evolution then landed in either order, and the older one, relative to a status
    that no longer was, left the status half of each (a blocked reason with a condition from before)."""
    from kubernetes.client.exceptions import ApiException

    try:
        _custom().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, loop.PLURALS[kind], name,
                                                        {"status": change})
    except ApiException as exc:
        if exc.status == 404:
            return  # deleted meanwhile: nothing is left to write to (as kopf's own patch would have found)
        raise kopf.TemporaryError(f"{kind} {namespace}/{name}: status write: {exc.status} {exc.reason}",
                                  delay=RETRY_DELAY) from exc


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


class Stepped:
    """The statuses this process's kopf-driven steps stepped from and produced, per object.

    kopf runs an object's timer beside its change handlers, and writes a handler's status only after the
    handler returns (its own annotations first, then the status: two requests, two watch events). So a step
    can get a body whose status predates the last step's patch: with a 1 s interval the Evolution's create
    handler and its first tick both saw no phase, and the Started Event was posted twice. And with three steps
    in flight a body can carry the *middle* one's status (the first patch landed, the second not yet): stepping
    it as it is repeated the second step's transitions (the BundleNotServable Warning was posted twice). So
    every status a step of this process stepped from or produced, since the last unknown one, is remembered:
    a body carrying any of them continues from the newest result; a body with any other status (someone
    else's change) is stepped as it is and starts a new chain. The operator writes each status patch itself,
    under the object's lock (write_status), relative to both the stored status and the one the step began
    from, so the writes land in order and each leaves the whole new status.
    (Hypotheses write their own status and read it back: indexed.Written.)"""

    KEEP = 6  # statuses remembered per object: more than the steps of one object ever in flight at once

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_uid: dict[str, list[dict[str, Any]]] = {}  # oldest first; the last is the newest result
        self.locks = indexed.KeyedLocks()  # the steps of one object take turns

    def newest(self, body: dict[str, Any]) -> dict[str, Any]:
        uid = (body.get("metadata") or {}).get("uid", "")
        status = dict(body.get("status") or {})
        with self._lock:
            chain = self._by_uid.get(uid)
            if chain is None or status == chain[-1]:
                return body
            if status not in chain:
                del self._by_uid[uid]
                return body
            return {**body, "status": chain[-1]}

    def record(self, body: dict[str, Any], start: dict[str, Any], new: dict[str, Any]) -> None:
        """A step of `body` went from status `start` (the body's own, or newest()'s) to `new`."""
        uid = (body.get("metadata") or {}).get("uid", "")
        stored = dict(body.get("status") or {})
        with self._lock:
            chain = self._by_uid.get(uid)
            if chain is None or chain[-1] != start:
                if new == start == stored:
                    return  # nothing changed and nothing is in flight
                chain = [stored] if stored == start else [stored, start]
            if new != chain[-1]:
                chain.append(new)
            self._by_uid[uid] = chain[-self.KEEP:]

    def forget(self, uid: str) -> None:
        with self._lock:
            self._by_uid.pop(uid, None)
        self.locks.forget(uid)


def _stepped(memo: kopf.Memo) -> Stepped:
    with _REPORTED:
        stepped = getattr(memo, "stepped", None)
        if stepped is None:
            stepped = memo.stepped = Stepped()
        return stepped


def _step(kind: str, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, objects: loop.Objects,
          admit_first: bool = False) -> loop.Step | None:
    """Gather -> core -> apply (cambrian.operator.loop), then persist the new status as a patch. None when
    there was nothing to do: the object failed until its spec changes. A failed apply writes nothing."""
    stored = dict(body)
    old = dict(stored.get("status") or {})
    meta = loop.meta_of(stored)
    if _reported(memo, meta):
        return None
    stepped = _stepped(memo) if kind in CHANGE_HANDLED_KINDS else None
    write = getattr(memo, "write_status", None) if stepped is not None else None  # Hypotheses: step_hypothesis
    with stepped.locks(meta.uid) if stepped is not None else contextlib.nullcontext():
        start = stepped.newest(stored) if stepped is not None else stored
        try:
            s = loop.step(kind, start, objects, memo.platform, now(), _cache(memo),
                          first_report=lambda meta: not _reported(memo, meta, mark=True), admit_first=admit_first)
        except loop.ApplyFailed as exc:
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
        if s.result is None:
            return None
        began = dict(start.get("status") or {})
        # relative to both the stored status and the one this step began from (the newest this process wrote,
        # which a stale body does not carry yet): whichever the server holds, the patch leaves the whole new one
        change = status_patch([old, began], s.result.status)
        if change and write is not None:
            write(kind, meta.namespace or "default", meta.name, change)
        elif change:
            for key, value in change.items():
                patch.status[key] = value
        if stepped is not None:
            stepped.record(stored, began, s.result.status.wire())
    return None if s.failed else s


# ---------------------------------------------------------------------------------------------
# Indexes: the watch-fed state every step reads (operator/indexed.py), instead of LISTs per tick
# ---------------------------------------------------------------------------------------------
# The index functions are async: they only slim a body (microseconds), so kopf runs them on its event loop.
# Sync ones waited, for every event of every Pod, Job and Hypothesis, for one of kopf's 6 executor threads
# (min(32, CPUs + 4)), which the Evolutions' timers and sweeps hold while their steps send requests; the
# watch events queued behind them, each a full body, in kopf's per-object queues.

MANAGED = {"app.kubernetes.io/managed-by": "cambrian-operator"}


@kopf.index(GROUP, VERSION, "evolutions")
async def evolutions_idx(body: kopf.Body, **_: Any) -> dict:
    return indexed.custom_keys(body)


@kopf.index(GROUP, VERSION, "hypotheses")
async def hypotheses_idx(body: kopf.Body, **_: Any) -> dict:
    return indexed.custom_keys(body, packed=True)


@kopf.index(GROUP, VERSION, "rollouts")
async def rollouts_idx(body: kopf.Body, **_: Any) -> dict:
    return indexed.custom_keys(body)


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
async def jobs_idx(body: kopf.Body, **_: Any) -> dict:
    return indexed.job_keys(body)


@kopf.index("v1", "pods", labels={**MANAGED, "job-name": kopf.PRESENT})
async def pods_idx(body: kopf.Body, **_: Any) -> dict:
    return indexed.pod_keys(body)


class LoopLag:
    """How late kopf's event loop runs a timer: a probe sleeps `every` seconds in the loop and records how much
    later it woke. `behind()`: the last wake-up came more than `limit` late, or is overdue by that much now (a
    loop busy with a backlog of watch events runs its timers late). Never behind while no probe runs."""

    def __init__(self, limit: float = 0.5, every: float = 0.1) -> None:
        self.limit, self.every = limit, every
        self.late, self.woke = 0.0, None

    async def probe(self) -> None:
        import asyncio
        import time

        while True:
            self.woke = time.monotonic()
            await asyncio.sleep(self.every)
            self.late = time.monotonic() - self.woke - self.every

    def behind(self) -> bool:
        import time

        woke = self.woke
        return woke is not None and (self.late > self.limit or time.monotonic() - woke - self.every > self.limit)


@kopf.on.startup()
async def probe_loop_lag(memo: kopf.Memo, **_: Any) -> None:
    """The Job lane's pace (indexed.Settle.paced) follows how far the event loop is behind."""
    import asyncio

    _bookkeeping(memo)
    memo.loop_lag_task = asyncio.get_running_loop().create_task(memo.loop_lag.probe())


@kopf.on.cleanup()
async def stop_loop_lag_probe(memo: kopf.Memo, **_: Any) -> None:
    """The probe loops forever: end it with the operator, or the loop closes over a pending task."""
    import asyncio
    import contextlib

    task = memo.get("loop_lag_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _bookkeeping(memo: kopf.Memo) -> None:
    """Per-process state of the event-driven Hypothesis steps (operator/indexed.py)."""
    memo.setdefault("written", indexed.Written())
    memo.setdefault("submitted", indexed.Submitted())
    memo.setdefault("locks", indexed.KeyedLocks())
    memo.setdefault("retry", set())
    memo.setdefault("shared", {})  # what every object's copy of the memo shares (see _cluster)
    # in the operator's memo, so that every object's copy shares them: a Hypothesis is stepped from its own
    # events and from its Job's and Pod's, each with the memo copy of the object whose event it was
    memo.setdefault("failed_generations", {})
    memo.setdefault("loop_cache", {})
    memo.setdefault("stepped", Stepped())  # likewise: an Evolution's create handler and its timer share it
    memo.setdefault("loop_lag", LoopLag())
    if "settle" not in memo:
        memo.settle = indexed.Settle(SETTLE_SECONDS, behind=memo.loop_lag.behind) if SETTLE_SECONDS > 0 else None


def _cluster(memo: kopf.Memo, kw: dict[str, Any]) -> loop.Objects:
    """The indexes as loop.Objects (and as the platform's Job/Pod reads); the API server when a caller
    (a test, a script) runs a handler without kopf's indexes."""
    c = getattr(memo, "cluster", None)
    if c is None and "hypotheses_idx" in kw:
        # kopf gives every object a shallow copy of the operator's memo: one IndexedCluster for all of them,
        # kept in a dict that the copies share, not one per object (30,000 at 10,000 Hypotheses).
        shared = memo.shared if "shared" in memo else {}
        c = shared.get("cluster")
        if c is None:
            c = indexed.IndexedCluster({"evolutions": kw["evolutions_idx"], "hypotheses": kw["hypotheses_idx"],
                                        "rollouts": kw["rollouts_idx"]}, kw["jobs_idx"], kw["pods_idx"],
                                       getattr(memo, "written", None), getattr(memo, "submitted", None))
            shared["cluster"] = c
            if hasattr(memo.platform, "observed"):
                memo.platform.observed = c
    return c or _ClusterObjects()


# ---------------------------------------------------------------------------------------------
# Hypothesis: event-driven. No timer and no kopf bookkeeping on the object (no finalizer, no
# annotations): its own changes, its Job's and Pod's changes and the Evolution's sweep step it, and
# each step writes at most one status patch. Finished Hypotheses get no step and send nothing.
# ---------------------------------------------------------------------------------------------


def reconcile_hypothesis(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, objects: loop.Objects | None = None,
                         admit_first: bool = False) -> loop.Step | None:
    """One step of one Hypothesis, its new status into `patch` (`admit_first`: see step_hypothesis)."""
    return _step("Hypothesis", body, patch, memo, objects or _ClusterObjects(), admit_first=admit_first)


def _budget_turn(memo: kopf.Memo, objects: Any, ns: str, hyp: dict[str, Any]) -> Any:
    """Under an evaluations budget the steps of one Evolution's Hypotheses take turns: each counts its peers' runs
    as it starts one (hypothesis.runs_left), so two at once on the Settle workers would each miss the other's run
    and both start past the cap. The lock is held until the status is written and recorded (what the next reads)."""
    evo = indexed.evolution_of(hyp)
    spec = ((objects.get("evolutions", ns, evo) or {}).get("spec") or {}) if evo else {}
    if ((spec.get("agent") or {}).get("budgets") or {}).get("evaluations") is None:
        return contextlib.nullcontext()
    return memo.locks(f"evaluations-budget/{ns}/{evo}")


def step_hypothesis(memo: kopf.Memo, objects: Any, ns: str, name: str, admit_first: bool = False) -> bool:
    """Step the freshest known body of a Hypothesis and write its status (one PATCH when it changed).
    One step at a time per object; a failed apply is retried by the Evolution's next sweep.
    `admit_first`: a Proposed one is only validated and its answer written (H.reconcile's admit_first); True
    then says that it was admitted and its next step (the training Job) is due at once."""
    _bookkeeping(memo)
    first = objects.get("hypotheses", ns, name)
    if first is None or (first.get("status") or {}).get("phase") in H.TERMINAL:
        return False
    uid = first["metadata"].get("uid", "")
    with _budget_turn(memo, objects, ns, first), memo.locks(uid):
        body = objects.get("hypotheses", ns, name)  # again: another step may have written meanwhile
        if body is None:
            return False
        patch = kopf.Patch()
        try:
            s = reconcile_hypothesis(kopf.Body(body), patch, memo, objects, admit_first=admit_first)
        except kopf.TemporaryError as exc:
            log.warning("hypothesis %s/%s: %s; retrying at the next sweep", ns, name, exc)
            memo.retry.add((ns, name))
            return False
        memo.retry.discard((ns, name))
        if patch.status:
            after = _custom().patch_namespaced_custom_object_status(GROUP, VERSION, ns, "hypotheses", name,
                                                                    {"status": dict(patch.status)})
            getattr(objects, "written", memo.written).record(body, after)
        return admit_first and s is not None and s.result.requeue_after == H.ADMITTED


def _hypothesis_source(memo: kopf.Memo, kw: dict[str, Any], ns: str, name: str | None, settle: bool = False) -> None:
    """Step a Hypothesis now, or (`settle`: a Job's or Pod's update) once that burst of updates settled.
    Either way on the Settle workers, not in kopf's handler thread: the handler returns at once, so kopf
    drops the event's body instead of holding it (and the events queued behind it) while the step's
    requests run; what waits is a key, and the step reads the freshest index when it runs."""
    if not name:
        return
    objects = _cluster(memo, kw)
    if getattr(memo, "settle", None) is None:
        step_hypothesis(memo, objects, ns, name)
        return

    def later() -> None:
        try:
            step_hypothesis(memo, objects, ns, name)
        except Exception as exc:  # noqa: BLE001 - retried by the Evolution's sweep
            log.warning("hypothesis %s/%s: %s", ns, name, exc)
            memo.retry.add((ns, name))

    def admit() -> None:
        """A new Hypothesis' first step writes its validation alone; its Job follows on the next lane, which
        waits while first steps are queued: in a burst every object gets its phase (one status PATCH each)
        before the Jobs, each of which brings the API server a Pod and a dozen writes of the Job controller,
        the scheduler and the kubelet (issue 16: time to first phase)."""
        try:
            if step_hypothesis(memo, objects, ns, name, admit_first=True):
                memo.settle.then(later, (ns, name))
        except Exception as exc:  # noqa: BLE001 - retried by the Evolution's sweep
            log.warning("hypothesis %s/%s: %s", ns, name, exc)
            memo.retry.add((ns, name))

    if settle:
        memo.settle((ns, name), later)
    else:
        memo.settle.now(admit, (ns, name))


async def _source(memo: kopf.Memo, kw: dict[str, Any], ns: str, name: str | None, settle: bool) -> None:
    """_hypothesis_source from an async event handler: it only schedules, unless there is no Settle (then the
    step runs on a thread, never on kopf's event loop)."""
    if getattr(memo, "settle", None) is None:
        import asyncio

        await asyncio.to_thread(_hypothesis_source, memo, kw, ns, name, settle)
    else:
        _hypothesis_source(memo, kw, ns, name, settle)


# The event handlers are async: they only schedule a step (microseconds), so they run on kopf's event loop
# instead of hopping to its thread pool and queueing there behind the other objects' events, which delayed
# a new Hypothesis' first step by seconds at 1000 objects.
@kopf.on.event(GROUP, VERSION, "hypotheses",
               when=lambda type, status, **_: type != "DELETED" and (status or {}).get("phase") not in H.TERMINAL)
async def hypothesis_event(body: kopf.Body, memo: kopf.Memo, type: str | None, **kw: Any) -> None:
    """A new Hypothesis (or one found at start) is stepped at once; a changed one once its burst of
    updates settled: the update may be our own status write coming back before we noted it, and its
    Job may not be in the index yet (stepping at once would create it a second time)."""
    if memo.written.is_ours(body):
        return  # our own status write coming back: the Job's and Pod's events drive the next step
    await _source(memo, kw, body.metadata.namespace or "default", body.metadata.name, type not in (None, "ADDED"))


@kopf.on.event(GROUP, VERSION, "hypotheses", when=lambda type, **_: type == "DELETED")
async def hypothesis_gone(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.written.forget(body.metadata.uid)
    memo.locks.forget(body.metadata.uid)


@kopf.on.event("batch", "v1", "jobs", labels={**MANAGED, "cambrian.dev/owner-kind": "hypothesis"})
async def training_job_event(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """A training Job changed (started, finished, deleted): step its Hypothesis."""
    await _source(memo, kw, body.metadata.namespace or "default", indexed.owner_name(body, "Hypothesis"), True)


@kopf.on.event("v1", "pods", labels={**MANAGED, "job-name": kopf.PRESENT})
async def training_pod_event(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """A training Pod changed (unschedulable, an image that cannot be pulled, its termination message)."""
    ns = body.metadata.namespace or "default"
    cluster = _cluster(memo, kw)
    job = cluster.job_named(ns, body.metadata.labels.get("job-name", "")) if hasattr(cluster, "job_named") else None
    if job is not None:
        await _source(memo, kw, ns, indexed.owner_name(job, "Hypothesis"), True)


# ---------------------------------------------------------------------------------------------
# Rollout
# ---------------------------------------------------------------------------------------------


def reconcile_rollout(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, objects: loop.Objects | None = None) -> None:
    s = _step("Rollout", body, patch, memo, objects or _ClusterObjects())
    if s is not None and s.analysis is not None:
        metrics.observe_guardrails(s.meta.name, s.analysis.guardrails)
        metrics.observe_effects(s.meta.name, s.analysis.effects)


@kopf.on.create(GROUP, VERSION, "rollouts")
@kopf.on.update(GROUP, VERSION, "rollouts", field="spec")
@kopf.on.update(GROUP, VERSION, "rollouts", field="metadata.annotations")
def rollout_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    reconcile_rollout(body, patch, memo, _cluster(memo, kw))


@kopf.timer(GROUP, VERSION, "rollouts", interval=INTERVAL, initial_delay=INTERVAL,
            when=lambda status, **_: (status or {}).get("phase") not in R.CONCLUDED)
def rollout_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    """Readouts are due by the clock; a concluded Rollout has none and costs nothing."""
    reconcile_rollout(body, patch, memo, _cluster(memo, kw))


@kopf.on.delete(GROUP, VERSION, "rollouts")
def rollout_deleted(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """Every user back on control before the arms go (owner references then remove the rest)."""
    try:
        loop.finalize_rollout(dict(body), _cluster(memo, kw), memo.platform)
    except loop.ApplyFailed as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    _stepped(memo).forget(body.metadata.uid)
    metrics.forget_rollout(body["metadata"]["name"])


# ---------------------------------------------------------------------------------------------
# Evolution
# ---------------------------------------------------------------------------------------------


def reconcile_evolution(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, objects: loop.Objects | None = None) -> None:
    s = _step("Evolution", body, patch, memo, objects or _ClusterObjects())
    if s is None:
        return
    spec = api.parse_spec("Evolution", dict(body.get("spec") or {}))
    metrics.observe_evolution(s.meta.name, s.hypotheses, spec.agent.budgets.wire(), s.result.status.spend.wire(), now())


# Hypothesis phases that wait on the Evolution (its budget, its baseline, its existence), not on an event.
SWEPT_PHASES = ("Proposed", "Validated")


def sweep_hypotheses(memo: kopf.Memo, objects: Any, ns: str, evolution: str) -> None:
    """Step the Evolution's Hypotheses whose state can move without an event of their own (see
    indexed.sweep), and those whose last step failed to apply. Index reads only: no request unless a
    step changes something."""
    if not hasattr(objects, "of_evolution"):
        return
    hyps = objects.of_evolution("hypotheses", ns, evolution)
    due = {h["metadata"]["name"] for h in indexed.sweep(hyps, objects.of_evolution("rollouts", ns, evolution), SWEPT_PHASES)}
    due |= {name for (n, name) in list(memo.retry) if n == ns and any(h["metadata"]["name"] == name for h in hyps)}
    # a new Hypothesis whose first step is queued is left to it: stepping it here too, in creation order like the
    # queue, waited for that step's lock and stepped it again for nothing (thousands at once in a burst)
    pending = getattr(getattr(memo, "settle", None), "first_pending", None)
    for name in sorted(due):
        if pending is not None and pending((ns, name)):
            continue
        try:
            step_hypothesis(memo, objects, ns, name)
        except Exception as exc:  # noqa: BLE001 - one Hypothesis' write failing must not stop the sweep
            log.warning("hypothesis %s/%s: %s", ns, name, exc)
            memo.retry.add((ns, name))


@kopf.on.create(GROUP, VERSION, "evolutions")
@kopf.on.update(GROUP, VERSION, "evolutions", field="spec")
def evolution_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    reconcile_evolution(body, patch, memo, _cluster(memo, kw))


@kopf.timer(GROUP, VERSION, "evolutions", interval=INTERVAL, initial_delay=INTERVAL,
            when=lambda status, **_: (status or {}).get("phase") != "Failed")
def evolution_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    """Wake-ups and reviews are due by the clock; the sweep is the level-based safety net of its Hypotheses."""
    objects = _cluster(memo, kw)
    reconcile_evolution(body, patch, memo, objects)
    sweep_hypotheses(memo, objects, body.metadata.namespace or "default", body.metadata.name)


@kopf.on.delete(GROUP, VERSION, "evolutions", optional=True)
def evolution_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _stepped(memo).forget(body.metadata.uid)
    metrics.forget_evolution(body["metadata"]["name"])
