"""The operator's footprint at scale (issue 16): what it imports, what it builds per watch event, how many
requests a Hypothesis costs, and which work waits on what. Each test fails on the code before the fix it names."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import kopf

from cambrian.operator import handlers as HD
from cambrian.operator import heap
from cambrian.operator import indexed
from cambrian.operator.loop import PLURALS
from cambrian.operator.platform.base import apply_actions
from cambrian.operator.platform.kubernetes import EventPoster, KubernetesPlatform
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile.actions import Owner, RecordJournal
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import JobObservation

from .test_indexed import EVO, HYP, CountingApi, cluster, platform, stepping
from .test_operator_imports import WAKEUP_ACTION

HEAVY = ("torch", "scipy", "numpy", "pandas", "optuna", "sklearn")


def test_the_operator_modules_import_no_heavy_library():
    """Before: cambrian.stats' package init imported scipy.stats (60 MiB of RSS) for the noise floor of every
    Hypothesis. The statistics a readout needs are imported when a readout is due."""
    code = ("import json, sys\n"
            "import cambrian.operator.handlers, cambrian.operator.platform.kubernetes, cambrian.operator.proposing\n"
            "import cambrian.operator.loop, cambrian.stats.noise\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
            "from cambrian.stats import decide, SufficientStats  # still there, on first use\n"
            "print(json.dumps(['scipy' in sys.modules, callable(decide)]))\n")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.strip().splitlines()[-2:]
    assert json.loads(first) == [], f"the operator's modules imported {first}"
    assert json.loads(second) == [True, True]


def test_kopf_builds_diff_bases_only_for_kinds_with_change_handlers():
    """Before: kopf deep-copied every Pod, Job and Hypothesis event into a diff base nobody read (8% of CPU)."""
    store = HD.ChangeHandledDiffBase(HD.CHANGE_HANDLED_KINDS, prefix="cambrian.dev", key="last-handled-configuration")
    pod = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}})
    evo = kopf.Body({"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "e"},
                     "spec": {"cadence": {"offline": "24h"}}})
    assert store.build(body=pod) == {}
    assert store.build(body=evo)["spec"] == {"cadence": {"offline": "24h"}}
    # every kind with a create/update/timer handler (which read the diff) gets its diff base
    registry = kopf.get_default_registry()
    kinds = {p: k for k, p in PLURALS.items()}
    handled = {h.selector.any_name for h in registry._changing.get_all_handlers() + registry._spawning.get_all_handlers()}
    assert handled and {kinds[p] for p in handled} <= HD.CHANGE_HANDLED_KINDS


def test_successful_event_handler_calls_are_not_logged():
    """kopf logged every event handler call at INFO: 14 lines per Hypothesis that said nothing."""
    f = HD.QuietEventHandlers()
    watching = {h.id for h in kopf.get_default_registry()._watching.get_all_handlers()}
    assert watching == set(HD.EVENT_HANDLERS)

    def rec(level, msg):
        return logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None)
    assert not f.filter(rec(logging.INFO, "Handler 'training_pod_event' succeeded."))
    assert f.filter(rec(logging.ERROR, "Handler 'training_pod_event' failed with an exception. Will retry."))
    assert f.filter(rec(logging.INFO, "Handler 'evolution_changed' succeeded."))


def test_requests_share_one_api_client():
    """Before: `client.CustomObjectsApi()` per call made a new ApiClient (a deep copy of the configuration) and
    a new TLS connection for every status write."""
    assert HD._custom().api_client is HD._custom().api_client is HD.shared_api_client()


def test_a_new_kubeconfig_gets_a_new_shared_client():
    """load_kube_config replaces the default configuration: the shared client follows it (a client kept
    from before sent a later test's requests to no host at all)."""
    from kubernetes import client

    before = client.Configuration.get_default()
    first = HD.shared_api_client()
    try:
        fresh = client.Configuration()
        fresh.host = "https://127.0.0.1:6443"
        client.Configuration.set_default(fresh)
        second = HD.shared_api_client()
        assert second is not first and second.configuration.host == "https://127.0.0.1:6443"
        assert HD.shared_api_client() is second
    finally:
        client.Configuration.set_default(before)


def test_the_shared_client_keeps_a_connection_for_every_requesting_thread():
    """Before: the client's default pool (5 per CPU, 10 on 2 cores) for 24 first-step workers, 4 settle workers,
    the side requests, the event poster and kopf's threads: every request beyond 10 in flight opened a new TLS
    connection and dropped it ("Connection pool is full, discarding connection" at 5,000 Hypotheses)."""
    from cambrian.operator import indexed
    from cambrian.operator.platform import kubernetes as K

    pool = HD.shared_api_client().rest_client.pool_manager.connection_pool_kw["maxsize"]
    settle = indexed.Settle.__init__.__defaults__[:3]  # (workers, first_workers, next_workers)
    side = K._side_requests()._max_workers
    assert pool >= sum(settle) + side + K.EVENT_THREADS + 6  # + the event posters + asyncio's executor on 2 cores


class _Settle:
    def __init__(self):
        self.later, self.now_calls = [], []

    def __call__(self, key, fn):
        self.later.append(key)

    def now(self, fn, key=None):
        self.now_calls.append(fn)


def test_a_new_hypothesis_is_stepped_on_the_step_workers_not_in_kopfs_handler():
    """Before: the first step (ConfigMap, Job, events, status) ran inside kopf's handler, which held the
    event's body and the events queued behind it for as long (488 MiB peak at 1000 Hypotheses); and the
    handlers, sync, waited in kopf's thread pool behind other objects' events."""
    c = cluster(EVO, HYP)
    api = CountingApi(store=HYP)
    p = platform()
    memo = kopf.Memo(platform=p, settle=_Settle(), cluster=c)
    HD._bookkeeping(memo)
    asyncio.run(HD.hypothesis_event(kopf.Body(HYP), memo, "ADDED"))
    assert api.calls == [] and p.batch.calls == [] and len(memo.settle.now_calls) == 1
    asyncio.run(HD.hypothesis_event(kopf.Body(HYP), memo, "MODIFIED"))
    assert memo.settle.later == [("ns", "h")]
    # the event handlers run on kopf's event loop (they only schedule): no hop to its thread pool
    assert all(inspect.iscoroutinefunction(getattr(HD, h)) for h in HD.EVENT_HANDLERS)


def test_a_job_created_but_not_yet_in_the_index_is_not_created_again(monkeypatch):
    """Before: a step between our Job create and the Job's watch event saw no Job and created it again
    (HTTP 409 for its ConfigMap and its Job: 8% of the Hypotheses at 300)."""
    c, api, p, memo = stepping(monkeypatch)
    HD.step_hypothesis(memo, c, "ns", "h")
    assert p.batch.calls == ["create_namespaced_job"]
    HD.step_hypothesis(memo, c, "ns", "h")  # the Job's ADDED event has not come yet
    assert p.batch.calls == ["create_namespaced_job"]
    assert p.core.calls.count("create_namespaced_config_map") == 1


def test_submitted_jobs_are_forgotten_once_seen_or_old():
    s = indexed.Submitted(ttl=0.2)
    job = {"metadata": {"name": "j", "namespace": "ns", "labels": {"cambrian.dev/owner-kind": "hypothesis",
                                                                   "cambrian.dev/owner": "h"}}, "spec": {}}
    s.add(job)
    key = ("ns", "hypothesis", "h")
    assert [j["metadata"]["name"] for j in s.unseen(key, [])] == ["j"]
    assert s.unseen(key, ["j"]) == [] and s.unseen(key, []) == []  # seen: dropped
    s.add(job)
    time.sleep(0.3)
    assert s.unseen(key, []) == []  # too old: the next step creates it again (idempotent)


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_a_job_going_from_pending_to_running_writes_no_status():
    """Before: the Training condition's reason followed the Pod (JobCreated -> Pending -> Running), one
    status write each (3.75 status writes per Hypothesis at 300; now 2: Training and Scored)."""
    from cambrian.operator import api

    meta = Meta("h", "uid-h", "ns", 1)
    spec = api.parse_spec("Hypothesis", HYP["spec"])
    evo = api.parse_spec("Evolution", EVO["spec"])
    ctx = H.EvolutionContext("evo", "uid-e", evo, evo.baseline)
    started = H.reconcile(meta, spec, api.HypothesisStatus(), ctx, [], None, T0).status
    assert started.phase == "Training"
    for state in ("Pending", "Running"):
        seen = H.reconcile(meta, spec, started, ctx, [JobObservation(started.job_name, state)], None, T0)
        assert seen.status.wire() == started.wire(), state
    queued = H.reconcile(meta, spec, started, ctx, [JobObservation(started.job_name, "Suspended")], None, T0)
    assert [c.reason for c in queued.status.conditions if c.type == "Training"] == ["Suspended"]


class _Events:
    def __init__(self):
        self.posted = []

    def create_namespaced_event(self, ns, event, **kw):
        self.posted.append(event)


def test_one_steps_journal_is_one_event_per_object_and_type():
    """Before: a new Hypothesis' first step posted three Events (Proposed, Validated, TrainingStarted)."""
    p = KubernetesPlatform.__new__(KubernetesPlatform)
    p.core = _Events()
    h, e = Owner("Hypothesis", "h", "uid-h", "ns"), Owner("Evolution", "e", "uid-e", "ns")
    apply_actions(p, [RecordJournal(h, "Resumed", "spec changed"), RecordJournal(h, "Proposed", "proposed"),
                      RecordJournal(h, "Validated", "applies"), RecordJournal(h, "TrainingStarted", "attempt 1"),
                      RecordJournal(h, "Blocked", "no PVC", warning=True), RecordJournal(e, "Proposed", "wake-up 1"),
                      RecordJournal(e, "Woke", "up")])
    got = [(ev["involvedObject"]["name"], ev["type"], ev["reason"], ev["message"]) for ev in p.core.posted]
    assert got == [("h", "Normal", "Resumed", "spec changed"),  # not a progress entry: its own reason stays visible
                   ("h", "Normal", "TrainingStarted", "Proposed: proposed; Validated: applies; TrainingStarted: attempt 1"),
                   ("h", "Warning", "Blocked", "no PVC"), ("e", "Normal", "Proposed", "wake-up 1"), ("e", "Normal", "Woke", "up")]
    # readers that compare journals get the entries back (the parity test compares them with local mode's)
    entries = [e for ev in p.core.posted for e in KubernetesPlatform.journal_entries(ev["reason"], ev["message"])]
    assert entries == [("Resumed", "spec changed"), ("Proposed", "proposed"), ("Validated", "applies"),
                       ("TrainingStarted", "attempt 1"), ("Blocked", "no PVC"), ("Proposed", "wake-up 1"), ("Woke", "up")]
    assert KubernetesPlatform.journal_entries("TrainingStarted", "attempt 2 as job j") == [
        ("TrainingStarted", "attempt 2 as job j")]


def test_events_are_posted_in_order_off_the_reconcile_thread_and_survive_failures():
    posted, done = [], threading.Event()

    def post(ns, event):
        if event["reason"] == "bad":
            raise RuntimeError("API down")
        posted.append((threading.current_thread().name, event["reason"]))
        if event["reason"] == "last":
            done.set()

    poster = EventPoster(post, threads=4)
    for reason in ("a", "bad", "b", "last"):
        poster("ns", {"reason": reason, "involvedObject": {"kind": "Hypothesis", "name": "h"}})
    assert done.wait(10)
    assert posted == [("event-poster", "a"), ("event-poster", "b"), ("event-poster", "last")]


def test_events_of_many_objects_go_out_on_several_threads_each_objects_in_order():
    """Before: one thread posted every Event; at 10,000 Hypotheses across 10 it posted 1,913 of about 9,500 in the
    benchmark's window (each POST waits on a busy API server)."""
    posted, lock, done = {}, threading.Lock(), threading.Event()

    def post(ns, event):
        time.sleep(0.01)  # an API server's answer
        with lock:
            posted.setdefault(event["involvedObject"]["uid"], []).append((threading.get_ident(), event["reason"]))
            if sum(map(len, posted.values())) == 40 * 3:
                done.set()

    poster = EventPoster(post, threads=4)
    for reason in ("Proposed", "TrainingStarted", "Scored"):
        for i in range(40):
            poster("ns", {"reason": reason, "involvedObject": {"kind": "Hypothesis", "name": f"h{i}", "uid": f"u{i}"}})
    assert done.wait(10)
    assert all([r for _, r in seq] == ["Proposed", "TrainingStarted", "Scored"] for seq in posted.values())
    assert len({t for seq in posted.values() for t, _ in seq}) > 1


WAKEUP = r"""
import json, sys
""" + WAKEUP_ACTION + r"""batch = P.ChildProposer(timeout_s=120)(action, [])
loaded = sorted(m for m in ("optuna", "numpy", "cambrian.agents.proposers.builtin") if m in sys.modules)
same = P.ClusterProposer()(action, [])  # in this process now: the answer must be the same
print(json.dumps({"loaded": loaded, "n": len(batch.items), "same": batch.items == same.items}))
"""


def test_a_wakeup_runs_in_a_child_process_and_leaves_its_libraries_there():
    """Before: the built-in proposer imported optuna and numpy into the operator at the first wake-up, and kept
    them (about 20 MiB of its idle RSS)."""
    out = subprocess.run([sys.executable, "-P", "-c", WAKEUP], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"loaded": [], "n": got["n"], "same": True} and got["n"] > 0


def test_a_hung_or_failing_proposer_process_ends_with_an_error(tmp_path):
    """A hung attempt is killed at its timeout (a thread could only be abandoned); a crash says why."""
    import pytest

    from cambrian.operator.proposing import ChildProposer

    hung, crash = tmp_path / "hung", tmp_path / "crash"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    crash.write_text("#!/bin/sh\necho 'no module named optuna' >&2\nexit 3\n")
    for f in (hung, crash):
        f.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ChildProposer(timeout_s=1, python=str(hung))(_wakeup(), [])
    assert time.monotonic() - start < 10
    with pytest.raises(RuntimeError, match="exited 3: no module named optuna"):
        ChildProposer(timeout_s=30, python=str(crash))(_wakeup(), [])


def _wakeup():
    from cambrian.operator.reconcile.actions import ProposeHypotheses

    return ProposeHypotheses(Owner("Evolution", "evo", "uid", "ns"), 1, "evo-w1", (("explore", 1),), ("optimizer",))


def test_wakeups_and_batches_survive_the_trip_to_the_child():
    from cambrian.operator import proposing as P

    action = _wakeup()
    assert P.action_from_wire(json.loads(json.dumps(P.action_wire(action)))) == action
    batch = P.ProposalBatch(items=[({"component": "optimizer"}, {"a": "b"})], notes=["n"], tokens=3, dollars=0.5)
    back = P.batch_from_wire(json.loads(json.dumps(P.batch_wire(batch))))
    assert (back.items, back.notes, back.tokens, back.dollars) == (batch.items, batch.notes, 3, 0.5)


def test_index_handlers_run_on_kopfs_event_loop():
    """Before: the index functions were sync, so every event of every Pod, Job and Hypothesis waited for one of
    kopf's 6 executor threads (held by the Evolutions' timers and sweeps), its body queued in kopf meanwhile."""
    indexers = kopf.get_default_registry()._indexing.get_all_handlers()
    assert {h.id for h in indexers} == {"evolutions_idx", "hypotheses_idx", "rollouts_idx", "jobs_idx", "pods_idx"}
    assert all(inspect.iscoroutinefunction(h.fn) for h in indexers)
    pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"job-name": "j"}, "managedFields": [{}]},
           "spec": {"containers": []}, "status": {"phase": "Running"}}
    assert {k: indexed.unpack(v) for k, v in asyncio.run(HD.pods_idx(kopf.Body(pod))).items()} == {
        ("ns", "j"): indexed.slim_pod(pod)}


def test_every_objects_memo_shares_one_indexed_cluster():
    """Before: kopf's memo is a shallow copy per object, and the IndexedCluster was stored on that copy: one
    per object (and the platform's `observed` replaced at each)."""
    import copy

    base = kopf.Memo(platform=platform())
    HD._bookkeeping(base)
    kw = {name: {} for name in ("evolutions_idx", "hypotheses_idx", "rollouts_idx", "jobs_idx", "pods_idx")}
    first = HD._cluster(copy.copy(base), kw)  # kopf: memo = copy.copy(memobase) for each new object
    assert isinstance(first, indexed.IndexedCluster)
    assert HD._cluster(copy.copy(base), kw) is first and base.platform.observed is first
    assert first.written is base.written  # the bookkeeping the steps share


def test_a_written_status_is_kept_slim_until_the_watch_delivers_it():
    """Before: the PATCH answer was kept whole (managedFields and all) for every object in flight."""
    w = indexed.Written()
    after = {**HYP, "metadata": {**HYP["metadata"], "resourceVersion": "11", "managedFields": [{"m": 1}] * 20},
             "status": {"phase": "Training"}}
    w.record(HYP, after)
    newest = w.newest(dict(HYP))
    assert newest["status"] == {"phase": "Training"} and newest["metadata"]["resourceVersion"] == "11"
    assert "managedFields" not in newest["metadata"]


def test_a_failure_is_reported_once_whichever_objects_event_stepped_it():
    """Before: the record of reported failures was made on the memo copy of the object whose event ran the
    step (the Hypothesis', its Job's or its Pod's), so a step from another of them reported it again."""
    import copy

    base = kopf.Memo(platform=platform())
    HD._bookkeeping(base)
    meta = Meta.from_obj(HYP)
    via_pod, via_hypothesis = copy.copy(base), copy.copy(base)
    assert not HD._reported(via_pod, meta, mark=True)
    assert HD._reported(via_hypothesis, meta)
    assert HD._cache(via_pod) is HD._cache(via_hypothesis)


def test_kopf_keeps_no_record_per_hypothesis_job_or_pod():
    """Before: kopf kept a record (memo copy, throttler, indexing and daemon state) per watched object for as long
    as it existed: three per Hypothesis. Kinds with only index and event handlers get a fresh one per event."""
    memories = HD.EventOnlyMemories()
    memo = kopf.Memo(shared={})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "uid": "u-p"}}
    evo = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "e", "uid": "u-e"}}

    async def recall():
        first = await memories.recall(pod, memobase=memo)
        again = await memories.recall(pod, memobase=memo)
        kept = await memories.recall(evo, memobase=memo)
        return first, again, kept, await memories.recall(evo, memobase=memo)
    first, again, kept, kept_again = asyncio.run(recall())
    assert first is not again and first.memo.shared is memo.shared  # the shared state still reaches every event
    assert kept is kept_again and list(memories.iter_all_memories()) == [kept]
    # only safe while these kinds have no change handlers, timers or daemons (those keep state in the record)
    registry = kopf.get_default_registry()
    stateful = registry._changing.get_all_handlers() + registry._spawning.get_all_handlers()
    kinds = {p: k for k, p in PLURALS.items()}
    assert not {kinds.get(h.selector.any_name, h.selector.any_name) for h in stateful} & HD.EVENT_ONLY_KINDS
    assert {h.selector.any_name for h in registry._watching.get_all_handlers()} == {"hypotheses", "jobs", "pods"}


def test_thousands_of_index_values_are_kept_packed():
    """Before: the index kept each slim Hypothesis, Job and Pod as dicts (about 2-3 KB each, 30,000 of them at
    10,000 Hypotheses); now as JSON text, decoded by each read into the same dict."""
    import sys

    from .test_indexed import HYP as hyp

    def deep(o):
        if isinstance(o, dict):
            return sys.getsizeof(o) + sum(deep(k) + deep(v) for k, v in o.items())
        if isinstance(o, list):
            return sys.getsizeof(o) + sum(deep(v) for v in o)
        return sys.getsizeof(o)
    body = {**hyp, "status": {"phase": "Training", "conditions": [
        {"type": t, "status": "True", "reason": "R", "message": "m" * 40, "lastTransitionTime": "2026-01-01T00:00:00Z"}
        for t in ("Validated", "Training")], "jobName": "h-train-1-abcdef01", "attempts": 1}}
    values = list(asyncio.run(HD.hypotheses_idx(kopf.Body(body))).values())  # by name and by Evolution
    value = values[0]
    assert len(values) == 2 and values[1] is value
    assert isinstance(value, str) and deep(value) * 2 < deep(indexed.slim_custom(body))
    c = cluster(EVO, body)
    assert c.get("hypotheses", "ns", "h") == indexed.slim_custom(body)
    assert c.of_evolution("hypotheses", "ns", "evo") == [indexed.slim_custom(body)]


def test_the_sweep_leaves_a_hypothesis_whose_first_step_is_queued_to_that_step(monkeypatch):
    """Before: each Evolution's sweep stepped the Proposed Hypotheses of a burst in creation order, as the first-step
    queue does: it waited for their locks and stepped them a second time."""
    import threading

    c, api, p, memo = stepping(monkeypatch)
    gate, ran = threading.Event(), threading.Event()
    memo.settle = indexed.Settle(0.1, first_workers=1)
    HD._bookkeeping(memo)
    memo.settle.now(gate.wait)  # the only first-step worker is busy: h's first step stays queued
    memo.settle.now(lambda: (HD.step_hypothesis(memo, c, "ns", "h"), ran.set()), ("ns", "h"))
    try:
        assert memo.settle.first_pending(("ns", "h"))
        HD.sweep_hypotheses(memo, c, "ns", "evo")
        assert api.calls == [] and p.batch.calls == []  # left to the queued step
    finally:
        gate.set()  # else the worker never ends and the test process cannot exit
    assert ran.wait(5)
    assert p.batch.calls == ["create_namespaced_job"] and not memo.settle.first_pending(("ns", "h"))


def test_memory_freed_after_a_burst_goes_back_to_the_system():
    """Before: what threads allocated in a burst (decoded answers, index text) was freed but stayed mapped in
    glibc's per-thread arenas, so the RSS kept the burst's high-water mark."""
    code = (
        "import threading\n"
        "from cambrian.operator import heap\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "limited = heap.limit_arenas()\n"
        "kept = []\n"
        "def burst():\n"
        "    objs = [bytes(1500) for _ in range(20000)]\n"
        "    kept.extend(objs[::200])  # a few survive, scattered through the heap\n"
        "threads = [threading.Thread(target=burst) for _ in range(6)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "before = rss(); heap.trim(); after = rss()\n"
        "print(limited, (before - after) // 2**20)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    limited, freed_mib = out.stdout.split()
    if heap._libc() is None:  # not glibc: nothing to tune
        assert limited == "False"
        return
    assert limited == "True" and int(freed_mib) >= 50  # of the 170 MiB the burst had in use


def test_admission_answers_alone_and_the_next_reconcile_creates_the_job_once():
    """Before: a new Hypothesis' first phase came with its Job (ConfigMap and Job POSTs, then the status): in a
    burst the phases waited on the Jobs (10,000 across 10: first steps 22-31/s, up to 220 s behind the creates)."""
    from cambrian.operator import api
    from cambrian.operator.reconcile.actions import CreateTrainingJob

    meta = Meta("h", "uid-h", "ns", 1)
    spec = api.parse_spec("Hypothesis", HYP["spec"])
    evo = api.parse_spec("Evolution", EVO["spec"])
    ctx = H.EvolutionContext("evo", "uid-e", evo, evo.baseline)
    admitted = H.reconcile(meta, spec, api.HypothesisStatus(), ctx, [], None, T0, admit_first=True)
    assert admitted.status.phase == "Validated" and admitted.requeue_after == H.ADMITTED
    assert admitted.kinds() == ["RecordJournal", "RecordJournal"]  # Proposed, Validated: nothing created
    # the next reconcile (the follow-up, or a restarted operator's first one) goes on from the persisted Validated
    for admit in (False, True):
        started = H.reconcile(meta, spec, admitted.status, ctx, [], None, T0, admit_first=admit)
        assert started.status.phase == "Training" and started.kinds().count("CreateTrainingJob") == 1, admit
    job = JobObservation(started.status.job_name, "Pending")
    again = H.reconcile(meta, spec, started.status, ctx, [job], None, T0, admit_first=True)
    assert not any(isinstance(a, CreateTrainingJob) for a in again.actions)
    # a delta that does not apply is answered by the admission too
    bad = api.parse_spec("Hypothesis", {**HYP["spec"], "delta": {"patch": {"no_such_setting": 1}}})
    assert H.reconcile(meta, bad, api.HypothesisStatus(), ctx, [], None, T0, admit_first=True).status.phase == "Rejected"


def test_a_new_hypothesis_gets_its_phase_before_its_job_requests(monkeypatch):
    """The first step's only request is the status PATCH; its Job comes with the follow-up step, and its Events
    (Proposed, Validated, TrainingStarted) are still one POST: requests per object stay 2 Events + 3 status writes
    + ConfigMap + Job = 7 (target 8)."""
    c, api, p, memo = stepping(monkeypatch)
    posted = []
    p.record = lambda action: posted.append((action.event, action.message))
    p._held, p._held_lock = {}, threading.Lock()  # background events: a run before TrainingStarted waits
    assert HD.step_hypothesis(memo, c, "ns", "h", admit_first=True) is True
    assert api.calls == ["patch_namespaced_custom_object_status"] and p.batch.calls == [] and p.core.calls == []
    assert memo.written.newest(c.get("hypotheses", "ns", "h"))["status"]["phase"] == "Validated"
    assert posted == []
    assert HD.step_hypothesis(memo, c, "ns", "h") is False
    assert api.calls == ["patch_namespaced_custom_object_status"] * 2 and p.batch.calls == ["create_namespaced_job"]
    assert [e for e, _ in posted] == ["TrainingStarted"]
    assert [e for e, _ in KubernetesPlatform.journal_entries("TrainingStarted", posted[0][1])] == [
        "Proposed", "Validated", "TrainingStarted"]
    # a restarted operator's first step of the admitted one creates its Job once
    assert HD.step_hypothesis(memo, c, "ns", "h", admit_first=True) is False
    assert p.batch.calls == ["create_namespaced_job"]


def test_held_progress_events_go_alone_when_no_next_step_joins_them():
    p = KubernetesPlatform.__new__(KubernetesPlatform)
    p.core = _Events()
    p._held, p._held_lock = {}, threading.Lock()
    h = Owner("Hypothesis", "h", "uid-h", "ns")
    apply_actions(p, [RecordJournal(h, "Proposed", "proposed"), RecordJournal(h, "Validated", "applies")])
    p.flush_held()
    assert p.core.posted == []  # not old enough
    p.flush_held(older_than=0)
    assert [(ev["reason"], ev["message"]) for ev in p.core.posted] == [("Validated", "Proposed: proposed; Validated: applies")]
    p.flush_held(older_than=0)
    assert len(p.core.posted) == 1
    # an admission that is rejected is not held: nothing follows it
    apply_actions(p, [RecordJournal(h, "Proposed", "proposed"), RecordJournal(h, "Rejected", "bad", warning=True)])
    assert [ev["reason"] for ev in p.core.posted] == ["Validated", "Proposed", "Rejected"]


def test_follow_up_steps_wait_while_first_steps_are_queued():
    """The follow-ups (Jobs) of admitted Hypotheses run after the queued admissions, not beside them."""
    settle = indexed.Settle(0.1, first_workers=1, next_workers=2)
    order, gate, done = [], threading.Event(), threading.Event()
    settle.now(gate.wait)  # the first-step worker is busy
    settle.now(lambda: order.append("admit-b"), ("ns", "b"))  # queued behind it
    settle.then(lambda: (order.append("job-a"), done.set()), ("ns", "a"))
    try:
        time.sleep(0.3)
        assert order == [] and settle.first_pending(("ns", "a")) and settle.first_pending(("ns", "b"))
    finally:
        gate.set()
    assert done.wait(5)  # once b's admission has left the queue
    time.sleep(0.05)
    assert sorted(order) == ["admit-b", "job-a"]
    assert not settle.first_pending(("ns", "a")) and not settle.first_pending(("ns", "b"))


def test_follow_ups_wait_until_the_admissions_have_gone_quiet():
    """Before: a follow-up waited only while an admission was queued; with 24 admission workers none stayed queued,
    so a burst's Jobs ran beside its admissions (10,000 objects on an idle machine: phases 4.2x the no-op's)."""
    settle = indexed.Settle(0.1, first_workers=2, next_workers=1, quiet=0.4)
    gate, done = threading.Event(), threading.Event()
    settle.now(gate.wait, ("ns", "b"))  # an admission running, none queued
    settle.then(done.set, ("ns", "a"))
    try:
        assert not done.wait(0.3)
    finally:
        gate.set()
    ended = time.monotonic()
    assert done.wait(5) and time.monotonic() - ended >= 0.3  # a quiet spell after the last admission
    # a steady stream of admissions does not starve the follow-ups
    steady = indexed.Settle(0.1, first_workers=1, next_workers=1, quiet=30, max_wait=0.3)
    steady.now(lambda: None)
    job = threading.Event()
    steady.then(job.set)
    assert job.wait(5)


def test_events_wait_while_admissions_are_queued():
    """Events are best effort: in a burst the API server answers the queued admissions (each object's phase) first."""
    settle = indexed.Settle(0.1, first_workers=1)
    gate, posted = threading.Event(), threading.Event()
    poster = EventPoster(lambda ns, event: posted.set(), threads=1)
    poster.gate = settle.idle
    settle.now(gate.wait)  # the first-step worker is busy
    settle.now(lambda: None, ("ns", "b"))  # an admission queued behind it
    poster("ns", {"reason": "TrainingStarted", "involvedObject": {"kind": "Hypothesis", "name": "a", "uid": "u"}})
    try:
        assert not posted.wait(0.3)
    finally:
        gate.set()
    assert posted.wait(5)


def test_the_operator_gates_its_events_on_the_admissions(monkeypatch):
    from cambrian.operator.platform import kubernetes as K

    monkeypatch.setattr(HD, "load_kube_config", lambda: None)
    monkeypatch.setattr(HD, "shared_api_client", lambda: None)
    monkeypatch.setenv("CAMBRIAN_METRICS_PORT", "off")
    memo = kopf.Memo()
    HD.configure(settings=kopf.OperatorSettings(), memo=memo)
    assert isinstance(memo.platform, K.KubernetesPlatform) and memo.platform._events.gate == memo.settle.idle


def test_queued_job_and_pod_events_are_processed_only_at_their_latest():
    """Before: kopf processed each of a Pod's and a Job's queued updates in full (indexes, handler selection),
    though the next one replaces what it indexed. Driven through kopf's own per-object worker and queue."""
    from kopf._core.reactor import processing, queueing

    assert processing.process_resource_event._latest_only  # installed when the handlers are imported
    seen: list[tuple[str, str, int]] = []

    async def process(*, raw_event, **_):
        seen.append((raw_event["object"]["kind"], raw_event["type"], raw_event["object"]["n"]))

    async def run(kind: str, types: list[str]) -> None:
        stream = queueing.Stream(backlog=asyncio.Queue(), pressure=asyncio.Event())
        for n, t in enumerate(types):
            stream.pressure.set()  # as kopf's watcher does before each put
            await stream.backlog.put({"type": t, "object": {"kind": kind, "n": n}})
        settings = kopf.OperatorSettings()
        settings.queueing.idle_timeout = 0.05  # the worker ends once its queue is empty
        await queueing.worker(signaller=asyncio.Condition(), settings=settings, processor=HD.latest_only(process),
                              streams={"k": stream}, key="k")

    asyncio.run(run("Pod", ["ADDED", "MODIFIED", "MODIFIED"]))
    asyncio.run(run("Job", ["MODIFIED", "DELETED", "ADDED"]))
    asyncio.run(run("Hypothesis", ["ADDED", "MODIFIED"]))
    assert seen == [("Pod", "MODIFIED", 2),
                    ("Job", "DELETED", 1), ("Job", "ADDED", 2),
                    ("Hypothesis", "ADDED", 0), ("Hypothesis", "MODIFIED", 1)]


def test_per_hypothesis_creates_send_the_body_without_the_clients_model_round_trip(monkeypatch):
    """Before: the kubernetes client validated each Job, ConfigMap and Event dict into its pydantic models and
    serialized them back (14% of the operator's CPU at 3,000 Hypotheses). The same request goes out, and a
    refusal is the same ApiException."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from cambrian.operator.platform import kubernetes as K

    sent = []

    class Answer:
        def __init__(self, status):
            self.status, self.reason, self.data, self.headers = status, "r", b"{}", {}
            self.response = self

        def read(self):
            return self.data

        def getheaders(self):
            return {}

        def release_conn(self):
            pass

    api = client.ApiClient(client.Configuration(host="https://k8s.test"))
    status = [201]
    monkeypatch.setattr(api.rest_client, "request", lambda method, url, headers=None, body=None, **kw: (
        sent.append((method, url, headers.get("Content-Type"), body)), Answer(status[0]))[1])
    for cls, method in ((client.BatchV1Api, "create_namespaced_job"), (client.CoreV1Api, "create_namespaced_config_map")):
        monkeypatch.setattr(cls, method, lambda *a, **k: (_ for _ in ()).throw(AssertionError("the typed client")))
    p = K.KubernetesPlatform(api_client=api)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    K._discard(p.batch.create_namespaced_job("ns", job, _preload_content=False))
    assert sent == [("POST", "https://k8s.test/apis/batch/v1/namespaces/ns/jobs", "application/json", job)]
    status[0] = 409
    try:
        p.core.create_namespaced_config_map("ns", {"metadata": {"name": "c"}}, _preload_content=False)
        raise AssertionError("no exception")
    except ApiException as exc:
        assert exc.status == 409
    assert sent[-1][1] == "https://k8s.test/api/v1/namespaces/ns/configmaps"


def test_follow_ups_wait_while_the_event_loop_is_behind():
    """Before: once a burst's admissions were done, its Jobs went out at full pace and their Job and Pod events
    queued faster than kopf processed them (RSS 996 MiB at 10,000). A follow-up now waits while the loop is
    behind, and at most `pace_wait` seconds."""
    behind = threading.Event()
    behind.set()
    settle = indexed.Settle(0.1, first_workers=1, next_workers=1, quiet=0.0, behind=behind.is_set, pace_wait=30)
    done = threading.Event()
    settle.then(done.set)
    assert not done.wait(0.5)
    behind.clear()
    assert done.wait(5)
    capped = indexed.Settle(0.1, first_workers=1, next_workers=1, quiet=0.0, behind=lambda: True, pace_wait=0.3)
    done = threading.Event()
    capped.then(done.set)
    assert done.wait(5)


def test_the_loop_lag_probe_says_when_the_event_loop_runs_late():
    lag = HD.LoopLag(limit=0.2, every=0.05)
    assert not lag.behind()  # no probe: never behind

    async def main():
        task = asyncio.create_task(lag.probe())
        await asyncio.sleep(0.2)
        calm = lag.behind()
        time.sleep(0.5)  # a handler holding the loop
        late_now = lag.behind()  # the probe is overdue
        await asyncio.sleep(0)
        task.cancel()
        return calm, late_now

    calm, late_now = asyncio.run(main())
    assert not calm and late_now


def test_the_loop_lag_probe_starts_with_the_operator_and_ends_with_it():
    """kopf's startup handler starts the probe and its cleanup handler ends it: nothing left pending."""
    async def main():
        memo = kopf.Memo()
        await HD.probe_loop_lag(memo=memo)
        task = memo.loop_lag_task
        await asyncio.sleep(0.15)
        running = not task.done() and memo.loop_lag.woke is not None
        await HD.stop_loop_lag_probe(memo=memo)
        return running, task

    running, task = asyncio.run(main())
    assert running and task.cancelled()
