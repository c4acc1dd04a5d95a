"""The watch-fed state (operator/indexed.py) and the event-driven Hypothesis step over it.

Before: every timer tick of every Hypothesis sent GET evolution + LIST jobs + LIST pods (+ LIST
rollouts once Scored), and Scored Hypotheses kept ticking. Now the step reads kopf's indexes and
writes one status PATCH only when something changed; these tests count the requests."""

from __future__ import annotations

import kopf

from cambrian.operator import handlers as HD
from cambrian.operator import indexed
from cambrian.operator.indexed import L_OWNER, L_OWNER_KIND
from cambrian.operator.platform.kubernetes import KubernetesPlatform, _terminated, parse_job, pod_blocker

EVO = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution",
       "metadata": {"name": "evo", "namespace": "ns", "uid": "uid-e", "generation": 1, "resourceVersion": "1"},
       "spec": {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}},
                "training": {"image": "t:1"}}}
HYP = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis",
       "metadata": {"name": "h", "namespace": "ns", "uid": "uid-h", "generation": 1, "resourceVersion": "10",
                    "managedFields": [{"manager": "kubectl"}]},
       "spec": {"evolutionRef": {"name": "evo"}, "component": "optimizer", "explanation": "x",
                "delta": {"patch": {"lr": 0.02}}}}


class Index(dict):
    """kopf's Index: key -> a collection of values (one per object)."""

    def add(self, keys: dict) -> None:
        for k, v in keys.items():
            self[k] = [v]


def cluster(*objs, jobs=(), pods=()):
    customs = {"evolutions": Index(), "hypotheses": Index(), "rollouts": Index()}
    for o in objs:
        customs[{"Evolution": "evolutions", "Hypothesis": "hypotheses", "Rollout": "rollouts"}[o["kind"]]].add(
            indexed.custom_keys(o, packed=o["kind"] == "Hypothesis"))  # as handlers.py's index functions
    ji, pi = Index(), Index()
    for j in jobs:
        ji.add(indexed.job_keys(j))
    for p in pods:
        pi.add(indexed.pod_keys(p))
    return indexed.IndexedCluster(customs, ji, pi)


class CountingApi:
    """Every API call the platform or the handler makes, by method name; each returns what a server would."""

    def __init__(self, store=None):
        self.calls: list[str] = []
        self.store = store

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            if name == "patch_namespaced_custom_object_status":
                body = dict(self.store)
                body["status"] = {**(body.get("status") or {}), **args[-1]["status"]}
                body["metadata"] = {**body["metadata"], "resourceVersion": str(int(body["metadata"]["resourceVersion"]) + 1)}
                return body
            return None
        return call


def platform():
    p = KubernetesPlatform.__new__(KubernetesPlatform)
    p.core, p.batch, p.apps, p.custom = CountingApi(), CountingApi(), CountingApi(), CountingApi()
    p.api, p.prometheus_url, p.proposer, p.config, p.observed = None, None, None, {}, None
    p._client = None
    p.record = lambda action: p.core.calls.append("create_namespaced_event")
    return p


def test_slim_objects_keep_what_the_core_reads_and_drop_the_rest():
    pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"job-name": "j"}, "managedFields": [{}] * 50,
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"containers": [{"name": "trainer", "image": "x", "env": [{}] * 20}]},
           "status": {"phase": "Succeeded", "podIP": "1.2.3.4",
                      "initContainerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 0}}}],
                      "containerStatuses": [{"name": "scorer", "state": {"terminated": {
                          "exitCode": 0, "message": '{"v": 1, "ok": true, "metrics": {"val_loss": 0.5}}'}}}]}}
    job = {"metadata": {"name": "j", "namespace": "ns", "uid": "uj", "annotations": {"cambrian.dev/bundle-uri": "b"},
                        "labels": {"cambrian.dev/owner-kind": "hypothesis", "cambrian.dev/owner": "h"},
                        "ownerReferences": [{"kind": "Hypothesis", "name": "h", "uid": "uid-h"}]},
           "spec": {"suspend": False, "template": {"spec": {"containers": [{"name": "trainer"}] * 3}}},
           "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}
    sp, sj = indexed.slim_pod(pod), indexed.slim_job(job)
    assert "spec" not in sp and "managedFields" not in sp["metadata"] and "podIP" not in sp["status"]
    assert "containers" not in str(sj["spec"])
    # the observation from the slim copies is the one from the full objects
    assert parse_job(sj, [sp]) == parse_job(job, [pod])
    assert parse_job(sj, [sp]).metrics == {"val_loss": 0.5}
    assert "managedFields" not in indexed.slim_custom(HYP)["metadata"]


def test_slim_copies_keep_only_conditions_and_states_that_are_read():
    """A Job's and a Pod's conditions that hold, a Pod's running state and a Job's owner reference fields are
    never read (parse_job, pod_blocker, _terminated, owner_name): 10,000 of each are kept at once."""
    job = {"metadata": {"name": "j", "namespace": "ns", "ownerReferences": [
               {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "name": "h", "uid": "u",
                "controller": True, "blockOwnerDeletion": True}]},
           "spec": {"suspend": False},
           "status": {"conditions": [
               {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "m",
                "lastTransitionTime": "2026-01-01T00:00:00Z"},
               {"type": "Suspended", "status": "False", "reason": "r"},
               {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "m"}],
               "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z"}}
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "up", "resourceVersion": "7",
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"phase": "Succeeded",
                      "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                      "initContainerStatuses": [{"name": "prepare", "state": {"terminated": {
                          "exitCode": 0, "startedAt": "t", "finishedAt": "t", "containerID": "c"}}}],
                      "containerStatuses": [
                          {"name": "scorer", "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                                      "message": '{"v": 1, "metrics": {"auc": 0.7}}',
                                                                      "finishedAt": "t"}}},
                          {"name": "side", "state": {"running": {"startedAt": "t"}}}]}}
    sj, sp = indexed.slim_job(job), indexed.slim_pod(pod)
    assert sj["status"]["conditions"] == [{"type": "SuccessCriteriaMet", "status": "True"},
                                          {"type": "Complete", "status": "True"}]
    assert sj["metadata"]["ownerReferences"] == [{"kind": "Hypothesis", "name": "h", "uid": "u"}]
    assert sp["status"]["conditions"] == [] and sp["metadata"] == {
        "name": "p", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"}
    assert sp["status"]["containerStatuses"][1] == {"name": "side", "state": {}}
    assert sp["status"]["initContainerStatuses"] == [{"name": "prepare", "state": {"terminated": {"exitCode": 0}}}]
    assert parse_job(sj, [sp]) == parse_job(job, [pod]) and parse_job(sj, [sp]).metrics == {"auc": 0.7}
    assert indexed.owner_name(sj, "Hypothesis") == "h"
    failed = {**pod, "status": {**pod["status"], "initContainerStatuses": [
        {"name": "prepare", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "t"}}}],
        "containerStatuses": []}}
    assert _terminated([indexed.slim_pod(failed)]) == _terminated([failed]) is not None


def stepping(monkeypatch):
    """One Evolution and its Hypothesis in the indexes, a counting status API and a platform that sees them:
    (indexes, status API, platform, memo) for stepping the Hypothesis as the handlers do."""
    c = cluster(EVO, HYP)
    api = CountingApi(store=HYP)
    monkeypatch.setattr(HD, "_custom", lambda: api)
    p = platform()
    p.observed = c
    return c, api, p, kopf.Memo(platform=p)


def test_the_hypothesis_step_reads_indexes_and_writes_one_patch(monkeypatch):
    """Before: GET evolution, LIST jobs, LIST pods on every tick. Now: no read request at all."""
    c, api, p, memo = stepping(monkeypatch)
    HD.step_hypothesis(memo, c, "ns", "h")
    assert api.calls == ["patch_namespaced_custom_object_status"]
    assert p.core.calls.count("create_namespaced_config_map") == 1 and p.batch.calls == ["create_namespaced_job"]
    assert not any(x.startswith(("list_", "read_", "get_")) for x in p.core.calls + p.batch.calls + p.custom.calls)
    # the watch has delivered the Job but not our write yet: the next step starts from our write, not
    # from the stale body, so nothing is created, posted or written twice
    events = p.core.calls.count("create_namespaced_event")
    job = {"metadata": {"name": memo.written.newest(c.get("hypotheses", "ns", "h"))["status"]["jobName"],
                        "namespace": "ns", "labels": {"cambrian.dev/owner-kind": "hypothesis", "cambrian.dev/owner": "h"},
                        "ownerReferences": [{"kind": "Hypothesis", "name": "h", "uid": "uid-h"}]},
           "spec": {}, "status": {}}
    c.jobs.add(indexed.job_keys(job))
    HD.step_hypothesis(memo, c, "ns", "h")
    assert p.batch.calls == ["create_namespaced_job"] and p.core.calls.count("create_namespaced_config_map") == 1
    assert p.core.calls.count("create_namespaced_event") == events
    # our own write's event is recognised (and skipped by the Hypothesis' event handler)
    assert c.written.is_ours(api.store | {"metadata": {**api.store["metadata"], "resourceVersion": "11"}})


def test_written_follows_a_chain_of_our_own_writes_until_the_watch_catches_up():
    w = indexed.Written()
    b0 = {"metadata": {"uid": "u", "resourceVersion": "1"}, "status": {"phase": "Proposed"}}
    b1 = {"metadata": {"uid": "u", "resourceVersion": "2"}, "status": {"phase": "Training"}}
    b2 = {"metadata": {"uid": "u", "resourceVersion": "3"}, "status": {"phase": "Scored"}}
    w.record(b0, b1)
    w.record(b1, b2)
    assert w.newest(b0)["status"]["phase"] == "Scored"
    assert w.newest(b2) is b2  # delivered: the record is dropped
    assert w.newest(b0) is b0


def test_the_sweep_leaves_finished_hypotheses_alone():
    def h(name, phase):
        return {"metadata": {"name": name}, "status": {"phase": phase} if phase else {}}

    hyps = [h("new", None), h("val", "Validated"), h("train", "Training"), h("done", "Scored"),
            h("picked", "Scored"), h("live", "Live"), h("won", "Launched"), h("bad", "Failed")]
    ro = {"metadata": {"name": "ro"}, "spec": {"treatments": [{"name": "t", "hypothesisRef": {"name": "picked"}}]}}
    assert [x["metadata"]["name"] for x in indexed.sweep(hyps, [ro], HD.SWEPT_PHASES)] == ["new", "val", "picked", "live"]
    # back in Scored after a rollout that decided nothing about it: left alone until a new rollout names it
    back = {"metadata": {"name": "picked"}, "status": {"phase": "Scored", "undecidedTests": ["ro"]}}
    assert indexed.sweep([back], [ro], HD.SWEPT_PHASES) == []
    ro2 = {"metadata": {"name": "ro-t2"}, "spec": ro["spec"]}
    assert indexed.sweep([back], [ro, ro2], HD.SWEPT_PHASES) == [back]


def test_the_sweep_steps_trained_hypotheses_that_wait_for_the_baseline():
    """A Job that finished before the baseline's seeds sends no further event: only the Evolution's
    sweep can judge it once the noise floor exists (50 such Hypotheses stayed in Training before)."""
    from cambrian.operator.reconcile.hypothesis import WAITING_FOR_BASELINE

    def h(name, reason):
        return {"metadata": {"name": name}, "status": {"phase": "Training", "conditions": [
            {"type": "Validated", "reason": "DeltaApplies"}, {"type": "Training", "reason": reason}]}}

    from cambrian.operator.reconcile.confirmation import WAITING as WAITING_FOR_TURN

    hyps = [h("running", "JobCreated"), h("waiting", WAITING_FOR_BASELINE), h("turn", WAITING_FOR_TURN)]
    # and one promising run waiting for its turn to be confirmed: its peers' runs, not its own, move it
    assert [x["metadata"]["name"] for x in indexed.sweep(hyps, [], HD.SWEPT_PHASES)] == ["waiting", "turn"]


def test_a_finished_job_waits_for_its_pods_last_status_from_the_other_watch():
    """The Job's Complete can arrive before the Pod's terminated state (two watch streams): reading
    metrics then would fail a Hypothesis that succeeded."""
    job = {"metadata": {"name": "j", "namespace": "ns", "labels": {"cambrian.dev/owner-kind": "hypothesis",
                                                                    "cambrian.dev/owner": "h"},
                        "ownerReferences": [{"kind": "Hypothesis", "name": "h", "uid": "uid-h"}]},
           "spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    running_pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"job-name": "j"}},
                   "status": {"phase": "Running", "containerStatuses": [{"name": "scorer", "state": {"running": {}}}]}}
    from cambrian.operator.reconcile.actions import Owner

    p = platform()
    p.observed = cluster(jobs=[job], pods=[running_pod])
    (seen,) = p.training_jobs(Owner("Hypothesis", "h", "uid-h", "ns"))
    assert seen.state == "Running"
    done = {**running_pod, "status": {"phase": "Succeeded", "containerStatuses": [{"name": "scorer", "state": {
        "terminated": {"exitCode": 0, "message": '{"v": 1, "ok": true, "metrics": {"val_loss": 0.5}}'}}}]}}
    p.observed = cluster(jobs=[job], pods=[done])
    (seen,) = p.training_jobs(Owner("Hypothesis", "h", "uid-h", "ns"))
    assert seen.state == "Succeeded" and seen.metrics == {"val_loss": 0.5}
    assert not p.batch.calls and not p.core.calls


def test_a_burst_of_job_and_pod_updates_makes_one_step():
    """Before: one step (and one status write) per Job or Pod update: Pending, Running, Scored."""
    import threading
    import time

    ran: list[str] = []
    done = threading.Event()
    settle = indexed.Settle(0.2)
    t0 = time.monotonic()
    for _ in range(5):  # job created, active, pod scheduled, running, terminated
        settle(("ns", "h"), lambda: (ran.append("h"), done.set()))
    settle(("ns", "other"), lambda: ran.append("other"))
    assert done.wait(5) and time.monotonic() - t0 >= 0.2
    time.sleep(0.1)
    assert sorted(ran) == ["h", "other"]
    settle(("ns", "h"), lambda: ran.append("h again"))  # a later update is stepped again
    time.sleep(0.5)
    assert ran.count("h again") == 1


def test_an_evolution_step_reads_its_own_objects_from_the_by_evolution_index(monkeypatch):
    """Before: each Evolution's tick listed every Hypothesis and Rollout of the namespace and filtered them:
    with 10 Evolutions and 5,000 Hypotheses, 50,000 objects read per interval."""
    from datetime import datetime, timezone

    from cambrian.operator import loop

    other = {**HYP, "metadata": {**HYP["metadata"], "name": "h2", "uid": "uid-h2"},
             "spec": {**HYP["spec"], "evolutionRef": {"name": "evo-2"}}}
    c = cluster(EVO, HYP, other)
    assert [h["metadata"]["name"] for h in loop.of_evolution(c, "hypotheses", "ns", "evo")] == ["h"]

    def no_list(plural, ns):
        raise AssertionError(f"listed every {plural} of {ns}")
    monkeypatch.setattr(c, "list", no_list)
    p = platform()
    p.observed = c
    s = loop.step("Evolution", EVO, c, p, datetime(2026, 3, 1, tzinfo=timezone.utc))
    assert [h["metadata"]["name"] for h in s.hypotheses] == ["h"]

    class Listed:  # objects without the index (the local store, a script): the namespace's list, filtered
        def list(self, plural, ns):
            return [HYP, other] if plural == "hypotheses" else []
    assert [h["metadata"]["name"] for h in loop.of_evolution(Listed(), "hypotheses", "ns", "evo-2")] == ["h2"]


def test_index_copies_share_keys_and_common_strings_between_objects():
    """Before: every decoded body kept its own copy of every key and value (a Job, Pod and Hypothesis in the
    indexes took 21 KB per Hypothesis at the bench; about half once shared and slimmed)."""
    import json

    job = {"metadata": {"name": "j", "namespace": "ns", "labels": {L_OWNER_KIND: "hypothesis", L_OWNER: "h"}},
           "spec": {"suspend": False},
           "status": {"conditions": [{"type": "Failed", "status": "True", "lastProbeTime": "t",
                                      "lastTransitionTime": "2026-01-01T00:00:00Z", "message": "m" * 100}],
                      "startTime": "2026-01-01T00:00:00Z", "ready": 0, "uncountedTerminatedPods": {}}}
    a, b = (indexed.slim_job(json.loads(json.dumps(job))) for _ in range(2))
    assert a == b and parse_job(a, []) == parse_job(job, [])
    (ka,), (kb,) = ([k for k in x["status"]["conditions"][0] if k == "lastTransitionTime"] for x in (a, b))
    assert ka is kb and a["metadata"]["namespace"] is b["metadata"]["namespace"]
    assert a["status"]["startTime"] is b["status"]["startTime"]
    assert set(a["status"]) == {"conditions", "startTime"} and "lastProbeTime" not in a["status"]["conditions"][0]
    pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"job-name": "j", "controller-uid": "u"},
                        "annotations": {"kwok": "x"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                          "reason": "Unschedulable", "message": "no gpu",
                                                          "lastProbeTime": None}],
                      "containerStatuses": [{"name": "scorer", "image": "i", "imageID": "", "restartCount": 0,
                                             "state": {"waiting": {"reason": "ErrImagePull", "message": "m"}}}]}}
    sp = indexed.slim_pod(pod)
    assert sp["status"]["containerStatuses"] == [{"name": "scorer", "state": {"waiting": {"reason": "ErrImagePull",
                                                                                         "message": "m"}}}]
    assert "labels" not in sp["metadata"] and "annotations" not in sp["metadata"]
    assert pod_blocker([sp]) == pod_blocker([pod]) is not None
    assert {k: indexed.unpack(v) for k, v in indexed.pod_keys(pod).items()} == {("ns", "j"): sp}


def test_hypotheses_stepped_at_once_take_turns_for_the_last_evaluation(monkeypatch):
    """The Settle workers step many Hypotheses at once. With one evaluation left, two Validated ones stepped on two
    threads each counted the other's runs before either status was written, and both started a Job."""
    import threading
    import time

    class Many(dict):  # kopf's Index: one value per object under a key
        def add(self, keys: dict) -> None:
            for k, v in keys.items():
                self.setdefault(k, []).append(v)

    evo = {**EVO, "spec": {**EVO["spec"], "agent": {"budgets": {"evaluations": 4}}}}  # 3 baseline seeds + 1
    hyps = {n: {**HYP, "metadata": {**HYP["metadata"], "name": n, "uid": f"uid-{n}"},
                "status": {"phase": "Validated", "observedGeneration": 1}} for n in ("h1", "h2")}
    customs = {"evolutions": Many(), "hypotheses": Many(), "rollouts": Many()}
    customs["evolutions"].add(indexed.custom_keys(evo))
    for h in hyps.values():
        customs["hypotheses"].add(indexed.custom_keys(h, packed=True))
    c = indexed.IndexedCluster(customs, Many(), Many())

    class SlowStatusApi(CountingApi):
        def __getattr__(self, name):
            def patch(group, version, ns, plural, hyp, change):
                time.sleep(0.3)  # the status PATCH takes a while: the other thread steps meanwhile
                body = hyps[hyp]
                return {**body, "status": {**body["status"], **change["status"]},
                        "metadata": {**body["metadata"], "resourceVersion": "11"}}
            return patch

    monkeypatch.setattr(HD, "_custom", lambda: SlowStatusApi())
    p = platform()
    p.observed = c
    memo = kopf.Memo(platform=p)
    threads = [threading.Thread(target=HD.step_hypothesis, args=(memo, c, "ns", n)) for n in hyps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.batch.calls == ["create_namespaced_job"]
    phases = sorted(c.get("hypotheses", "ns", n)["status"]["phase"] for n in hyps)
    assert phases == ["Training", "Validated"]
