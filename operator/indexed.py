"""Watch-fed state for the kopf operator: what the reconcile steps read, without LIST calls per tick.

kopf's indexes (`@kopf.index` in handlers.py) keep, per watched namespace, the Evolutions,
Hypotheses, Rollouts, training Jobs and their Pods as the watch streams deliver them. This module
holds what the handlers do with them, free of kopf so that it is tested on plain dicts:

- `slim_*`: what an index stores of an object (only the fields the reconcile core reads: a Pod's
  spec, a Job's pod template and managedFields are dropped, which keeps the operator small at
  10,000 objects);
- `IndexedCluster`: `loop.Objects` (get/list of custom objects) and the Jobs/Pods that
  `KubernetesPlatform.training_jobs` reads, over those indexes;
- `Written`: a status this process wrote that the watch has not delivered yet. Several sources
  reconcile one Hypothesis (its own events, its Job's and Pod's events, the Evolution's sweep); a
  step that started from the body before our own write would replay it (a second Job create, the
  same events twice). `Written.newest(body)` returns the freshest known body instead.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Iterable, Mapping

L_OWNER_KIND, L_OWNER = "cambrian.dev/owner-kind", "cambrian.dev/owner"  # platform/kubernetes.py's labels

# What the reconcile reads of a Job and of a Pod (kubernetes.parse_job, pod_blocker, _terminated,
# _missing_prerequisite, training_jobs); a Pod is read through its Job, by name and creation time.
_META = ("name", "namespace", "uid", "labels", "annotations", "ownerReferences", "creationTimestamp",
         "generation", "resourceVersion", "deletionTimestamp")
_POD_META = ("name", "namespace", "creationTimestamp", "deletionTimestamp")
_POD_STATUS = ("phase", "conditions", "containerStatuses", "initContainerStatuses")
_POD_CONDITION = ("type", "status", "reason", "message")
_CONTAINER = ("name", "state")
# A container's state as read: why it waits (pod_blocker), how it ended (_pod_end); "running" is never read.
_CONTAINER_STATE = {"waiting": ("reason", "message"), "terminated": ("exitCode", "reason", "message")}
_JOB_STATUS = ("conditions", "startTime", "completionTime", "active")
_JOB_CONDITION = ("type", "status")
# parse_job reads the conditions that hold (status True): of a failure also why and when
_JOB_FAILED_CONDITION = ("type", "status", "reason", "message", "lastTransitionTime")
_JOB_FAILED = ("Failed", "FailureTarget")
_OWNER_REF = ("kind", "name", "uid")  # owner_name and training_jobs' uid check

# Strings up to this length are interned in the slim copies: JSON decoding gives every object its own copy of
# every key ("lastTransitionTime", label names) and of the values that thousands of objects share (the
# namespace, "True", condition reasons, the same second's timestamps). Longer ones (messages) are mostly unique.
SHARED_STR = 64


def compact(value: Any) -> Any:
    """A copy of a decoded JSON value whose dict keys and short strings are shared between objects (interned):
    what an index keeps for each of 10,000 objects costs a third of the decoded body or less."""
    if isinstance(value, dict):
        return {(sys.intern(k) if type(k) is str else k): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    if type(value) is str and len(value) <= SHARED_STR:
        return sys.intern(value)
    return value


def pack(slim: Mapping[str, Any]) -> str:
    """An index value as compact JSON text, decoded again by every read (`unpack`): a slim Hypothesis, Job or Pod
    takes a third to half of its size as dicts, even with shared keys (a dict, a list and their slots per level),
    and 10,000 of each are kept at once; a read decodes 0.5-2 KB (microseconds)."""
    return json.dumps(slim, separators=(",", ":"))


def unpack(value: Any) -> Any:
    """An index value as the core reads it: a packed one decoded (a new dict per read), others as they are."""
    return json.loads(value) if type(value) is str else value


def _meta(body: Mapping[str, Any], fields: tuple[str, ...] = _META) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {k: meta[k] for k in fields if k in meta}


def _only(items: Any, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: i[k] for k in fields if k in i} for i in items or ()]


def slim_custom(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Evolution, Hypothesis or Rollout as the core reads it (no managedFields)."""
    return compact(_slim_custom(body))


def _slim_custom(body: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k != "metadata"}
    out["metadata"] = _meta(body)
    return out


def slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    return compact(_slim_job(body))


def _slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    pod_spec = ((spec.get("template") or {}).get("spec") or {})
    kept = {"suspend": spec.get("suspend")}
    if pod_spec.get("priorityClassName"):
        kept["template"] = {"spec": {"priorityClassName": pod_spec["priorityClassName"]}}
    slim_status = {k: status[k] for k in _JOB_STATUS if k in status}
    if "conditions" in slim_status:
        slim_status["conditions"] = [
            {k: c[k] for k in (_JOB_FAILED_CONDITION if c.get("type") in _JOB_FAILED else _JOB_CONDITION) if k in c}
            for c in slim_status["conditions"] or () if c.get("status") == "True"]
    meta = _meta(body)
    if "ownerReferences" in meta:
        meta["ownerReferences"] = _only(meta["ownerReferences"], _OWNER_REF)
    return {"metadata": meta, "spec": kept, "status": slim_status}


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    return compact(_slim_pod(body))


def _slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    slim_status = {k: status[k] for k in _POD_STATUS if k in status}
    if "conditions" in slim_status:  # only one that does not hold is read (PodScheduled False: unschedulable)
        slim_status["conditions"] = _only([c for c in slim_status["conditions"] or () if c.get("status") != "True"],
                                          _POD_CONDITION)
    for key in ("containerStatuses", "initContainerStatuses"):
        if key in slim_status:
            slim_status[key] = [{**c, "state": _state(c.get("state") or {})} if "state" in c else c
                                for c in _only(slim_status[key], _CONTAINER)]
    return {"metadata": _meta(body, _POD_META), "status": slim_status}


def _state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: {f: v[f] for f in fields if f in v} for k, fields in _CONTAINER_STATE.items()
            if isinstance(v := state.get(k), Mapping)}


def evolution_of(body: Mapping[str, Any]) -> str | None:
    """The Evolution a Hypothesis or Rollout belongs to (spec.evolutionRef.name)."""
    return ((body.get("spec") or {}).get("evolutionRef") or {}).get("name")


def _items(store: Any) -> list:
    """A snapshot of a kopf index store, its packed values decoded; the event loop may change it while a handler
    thread reads."""
    for _ in range(5):
        try:
            return [unpack(v) for v in list(store or ())]
        except RuntimeError:  # changed size during iteration: read again
            continue
    return [unpack(v) for v in list(store or ())]


def _rv(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


class Submitted:
    """Jobs this process created that the Job index has not delivered yet. On a busy operator the Jobs'
    watch can lag seconds behind: a step in that gap saw no Job and created it again (an HTTP 409 for
    its ConfigMap and Job each, 8% of the Hypotheses at 300). Until the index shows a Job (or `ttl`
    seconds passed: the next step then creates it again, which is idempotent), it is read as the slim
    copy of what was sent, a Job without status: Pending."""

    def __init__(self, ttl: float = 120.0):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._jobs: dict[tuple, dict[str, tuple[float, dict[str, Any]]]] = {}  # owner key -> {name: (time, job)}

    def add(self, job: Mapping[str, Any]) -> None:
        import time

        key, slim = _owner_key(job), slim_job(job)
        if key is not None:
            with self._lock:
                self._jobs.setdefault(key, {})[slim["metadata"]["name"]] = (time.monotonic(), slim)

    def unseen(self, key: tuple, seen: Iterable[str]) -> list[dict[str, Any]]:
        """The submitted Jobs of an owner key that are not in `seen` (forgetting the seen and the old ones)."""
        import time

        with self._lock:
            jobs = self._jobs.get(key)
            if not jobs:
                return []
            limit, seen = time.monotonic() - self.ttl, set(seen)
            for name in [n for n, (t, _) in jobs.items() if n in seen or t < limit]:
                del jobs[name]
            if not jobs:
                del self._jobs[key]
            return [job for _, job in jobs.values()]


def _owner_key(job: Mapping[str, Any]) -> tuple | None:
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    if not (labels.get(L_OWNER_KIND) and labels.get(L_OWNER)):
        return None
    return (meta.get("namespace") or "default", labels[L_OWNER_KIND], labels[L_OWNER])


class IndexedCluster:
    """`loop.Objects` and the platform's Job/Pod reads over kopf indexes.

    `customs[plural]`: key ("name", ns, name) and ("evolution", ns, evolution) -> the object;
    `jobs`: key (ns, owner-kind, owner label) -> Job; `pods`: key (ns, job name) -> Pod."""

    def __init__(self, customs: Mapping[str, Mapping], jobs: Mapping, pods: Mapping, written: "Written | None" = None,
                 submitted: "Submitted | None" = None):
        self.customs, self.jobs, self.pods = customs, jobs, pods
        self.written = written or Written()
        self.submitted = submitted or Submitted()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = _items(self.customs[plural].get(("name", namespace, name)))
        return self.written.newest(found[0]) if found else None

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        """Every object of `plural` in `namespace` (the loop filters by Evolution itself)."""
        index = self.customs[plural]
        keys = [k for k in _items(index.keys()) if k[0] == "name" and k[1] == namespace]
        return [self.written.newest(o) for k in keys for o in _items(index.get(k))]

    def of_evolution(self, plural: str, namespace: str, evolution: str) -> list[dict[str, Any]]:
        return [self.written.newest(o) for o in _items(self.customs[plural].get(("evolution", namespace, evolution)))]

    def jobs_of(self, namespace: str, owner_kind: str, owner_label: str) -> list[dict[str, Any]]:
        """The owner's Jobs in the index, and those this process created that the index has not shown yet."""
        found = _items(self.jobs.get((namespace, owner_kind, owner_label)))
        names = [(j.get("metadata") or {}).get("name") for j in found]
        return found + self.submitted.unseen((namespace, owner_kind, owner_label), names)

    def pods_of(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return _items(self.pods.get((namespace, job)))

    def job_named(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = _items(self.jobs.get(("job", namespace, name)))
        return found[0] if found else None


def custom_keys(body: Mapping[str, Any], packed: bool = False) -> dict[tuple, Any]:
    """Index keys of a custom object: by name, and by Evolution for Hypotheses and Rollouts. `packed`: the value
    as JSON text (`pack`: the Hypotheses, thousands of them), else a compact dict (Evolutions, Rollouts: few,
    read on every step)."""
    meta = body.get("metadata") or {}
    ns = meta.get("namespace") or "default"
    slim = pack(_slim_custom(body)) if packed else slim_custom(body)
    keys: dict[tuple, Any] = {("name", ns, meta.get("name")): slim}
    evo = evolution_of(body)
    if evo:
        keys[("evolution", ns, evo)] = slim
    return keys


def job_keys(body: Mapping[str, Any]) -> dict[tuple, dict[str, Any]]:
    """A Job under its owner's labels (what training_jobs looks up) and under its name (for its Pods)."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    ns, slim = meta.get("namespace") or "default", pack(_slim_job(body))
    keys: dict[tuple, Any] = {("job", ns, meta.get("name")): slim}
    if labels.get(L_OWNER_KIND) and labels.get(L_OWNER):
        keys[(ns, labels[L_OWNER_KIND], labels[L_OWNER])] = slim
    return keys


def pod_keys(body: Mapping[str, Any]) -> dict[tuple, Any]:
    meta = body.get("metadata") or {}
    return {(meta.get("namespace") or "default", (meta.get("labels") or {}).get("job-name")): pack(_slim_pod(body))}


def owner_name(body: Mapping[str, Any], kind: str) -> str | None:
    """The name of the controlling owner of `kind` (labels may hold a shortened name; references do not)."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind:
            return ref.get("name")
    return None


class Written:
    """Statuses this process wrote, by the resourceVersion they replaced, until the watch catches up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._after: dict[str, dict[str, dict[str, Any]]] = {}  # uid -> {replaced rv: body after our write}
        self._ours: dict[str, str] = {}  # uid -> the resourceVersion of our last write

    def record(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        uid = (before.get("metadata") or {}).get("uid", "")
        with self._lock:
            # slim, as the index keeps it: the PATCH answer carries managedFields, held until the watch catches up
            self._after.setdefault(uid, {})[_rv(before)] = slim_custom(after)
            self._ours[uid] = _rv(after)

    def is_ours(self, body: Mapping[str, Any]) -> bool:
        """Is this the object as our own last write left it? Its event brings nothing to react to."""
        with self._lock:
            return self._ours.get((body.get("metadata") or {}).get("uid", "")) == _rv(body) != ""

    def newest(self, body: dict[str, Any]) -> dict[str, Any]:
        uid = (body.get("metadata") or {}).get("uid", "")
        with self._lock:
            chain = self._after.get(uid)
            if not chain:
                return body
            if _rv(body) not in chain:  # the watch delivered our last write (or a later change)
                del self._after[uid]
                return body
            seen = set()
            while _rv(body) in chain and _rv(body) not in seen:
                seen.add(_rv(body))
                body = chain[_rv(body)]
            return body

    def forget(self, uid: str) -> None:
        with self._lock:
            self._after.pop(uid, None)
            self._ours.pop(uid, None)


class KeyedLocks:
    """One lock per object uid: the sources that reconcile one Hypothesis take turns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, uid: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        with self._lock:
            self._locks.pop(uid, None)


def sweep(hypotheses: Iterable[Mapping[str, Any]], rollouts: Iterable[Mapping[str, Any]],
          waiting: Iterable[str]) -> list[Mapping[str, Any]]:
    """The Hypotheses of one Evolution whose state can move without an event of their own: in a
    phase of `waiting` (Proposed, Validated: the Evolution's budget or baseline; Training is fed by
    its Job's and Pod's events, and at start by the initial listing, except once trained and waiting
    for the baseline's noise floor or for its turn to be confirmed), Live (its Rollout concludes or is deleted) or
    Scored and named by a Rollout it has not counted as undecided (-> Live, or its decision). Finished ones (Scored
    outside any such rollout, Launched,
    Retired, Failed, Rejected) are left alone: they cost nothing."""
    from cambrian.operator.reconcile.confirmation import WAITING as WAITING_FOR_TURN
    from cambrian.operator.reconcile.hypothesis import WAITING_FOR_BASELINE
    from cambrian.operator.reconcile.views import rollout_view

    listed: dict[str, set[str]] = {}  # hypothesis -> the rollouts that name it
    for r in rollouts:
        view = rollout_view(r)
        for n in view.hypotheses:
            listed.setdefault(n, set()).add(view.name)
    waiting = set(waiting)
    out = []
    for h in hypotheses:
        status = h.get("status") or {}
        phase = status.get("phase") or "Proposed"
        on_evolution = phase == "Training" and any(  # trained, its Job done: the baseline or its peers move it
            c.get("type") == "Training" and c.get("reason") in (WAITING_FOR_BASELINE, WAITING_FOR_TURN)
            for c in status.get("conditions") or ())
        pending = listed.get((h.get("metadata") or {}).get("name"), set()) - set(status.get("undecidedTests") or ())
        if phase in waiting or phase == "Live" or on_evolution or (phase == "Scored" and pending):
            out.append(h)
    return out


class Settle:
    """Run `fn` for a key once its burst of events has settled: the first event schedules it `delay`
    seconds later, the others in that window join it (a Job's created/active/complete and its Pod's
    scheduled/running/terminated updates come in bursts; one step over the freshest index then writes
    one status instead of one per update). One thread keeps the schedule; steps run on `workers`.
    `now(fn, key)` runs a step at once on workers of its own (a new object's first step), so that new objects
    are not queued behind the settled steps of older ones; `then(fn, key)` runs its follow-up (an admitted
    Hypothesis' Job) on a third set of workers, each waiting until the first steps have gone quiet (none
    queued or running, none ended in the last `quiet` seconds; at most `max_wait` seconds);
    `first_pending(key)` says until either has run that it will."""

    # A first step waits on the API server for most of its time (ConfigMap and Job, then the status), so several
    # run at once. At 2,000 new objects the last first phase came about 30 s after the last create with 12, 24 or
    # 48 of them (within the runs' spread: the API server's answers set the pace); 24 leaves room on a less
    # loaded API server (bench/README.md, operator).
    def __init__(self, delay: float, workers: int = 4, first_workers: int = 24, next_workers: int = 24,
                 quiet: float = 1.0, max_wait: float = 300.0, behind: Any = None, pace_wait: float = 10.0):
        import heapq
        from concurrent.futures import ThreadPoolExecutor

        self.delay, self._heapq = delay, heapq
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Any]] = []
        self._due: dict[Any, Any] = {}
        self._n = 0
        self._pending: dict[Any, int] = {}  # key -> its first steps and follow-ups queued or running
        # first steps queued or running, and when the last one ended: follow-ups wait for a quiet spell. Waiting
        # only while some were queued let the Jobs of a burst's early objects run beside its later admissions
        # (24 workers take a new object at once): each Job brings the API server a Pod and a dozen writes, and
        # on an idle machine the phases of 10,000 objects came 4.2x later than a no-op operator's (issue 16)
        self._first_active, self._first_ended = 0, 0.0
        self.quiet, self.max_wait = quiet, max_wait
        # `behind()`: is the process' event loop behind its watch events (handlers.LoopLag)? A follow-up then waits
        # (at most `pace_wait` s): each Job brings about ten Job and Pod watch events, and once a burst's admissions
        # were done its 10,000 Jobs at full pace queued their decoded events faster than kopf processed them
        # (RSS 996 MiB, bdcd5de)
        self.behind, self.pace_wait = behind, pace_wait
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="settle")
        # a first step is mostly waiting on the API server (ConfigMap, Job, status): more of them in flight
        self._first = ThreadPoolExecutor(first_workers, thread_name_prefix="step")
        self._next = ThreadPoolExecutor(next_workers, thread_name_prefix="step-next")
        threading.Thread(target=self._loop, daemon=True, name="settle").start()

    def __call__(self, key: Any, fn: Any) -> None:
        import time

        with self._cond:
            if key in self._due:
                return
            self._due[key] = fn
            self._n += 1
            self._heapq.heappush(self._heap, (time.monotonic() + self.delay, self._n, key))
            self._cond.notify()

    def now(self, fn: Any, key: Any = None) -> None:
        import time

        with self._cond:
            self._first_active += 1
            if key is not None:
                self._pending[key] = self._pending.get(key, 0) + 1

        def run() -> None:
            try:
                self._run(fn, key)
            finally:
                with self._cond:
                    self._first_active -= 1
                    self._first_ended = time.monotonic()
                    if not self._first_active:
                        self._cond.notify_all()
        self._first.submit(run)

    def then(self, fn: Any, key: Any = None) -> None:
        """Run `fn` once the first steps have gone quiet (they go first: one status write each, while `fn` brings
        more) and the event loop is not behind (`paced`)."""
        with self._cond:
            if key is not None:
                self._pending[key] = self._pending.get(key, 0) + 1

        def run() -> None:
            self.idle()
            self.paced()
            self._run(fn, key)
        self._next.submit(run)

    def paced(self) -> None:
        """Wait while `behind()` says so, at most `pace_wait` seconds."""
        import time

        give_up = time.monotonic() + self.pace_wait
        while self.behind is not None and self.behind() and time.monotonic() < give_up:
            time.sleep(0.05)

    def idle(self) -> None:
        """Wait until the first steps have gone quiet, or `max_wait` seconds (a steady stream of new objects
        must not starve their Jobs)."""
        import time

        give_up = time.monotonic() + self.max_wait
        with self._cond:
            while True:
                now = time.monotonic()
                quiet_at = self._first_ended + self.quiet
                if now >= give_up or (not self._first_active and now >= quiet_at):
                    return
                self._cond.wait(min(give_up, quiet_at) - now if not self._first_active else give_up - now)

    def _run(self, fn: Any, key: Any) -> None:
        try:
            fn()
        finally:
            if key is not None:
                with self._cond:
                    left = self._pending.pop(key) - 1
                    if left:
                        self._pending[key] = left

    def first_pending(self, key: Any) -> bool:
        """Is a first step of `key`, or its follow-up, queued or running?"""
        with self._cond:
            return key in self._pending

    def _loop(self) -> None:
        import time

        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, key = self._heapq.heappop(self._heap)
                fn = self._due.pop(key)
            self._pool.submit(fn)
