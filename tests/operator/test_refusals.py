"""Objects the API server accepts but the operator could not act on (issue 21, item 3), without a
cluster: names and labels that fit the API's limits, refusals classified, prerequisites read from pod
and Deployment status, and the core reporting them once. The same cases against the real control
plane: tests/reliability/test_operator_refusals.py."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from cambrian.operator import api
from cambrian.operator.platform import kubernetes as K
from cambrian.operator.platform.base import ActionRefused, refusal_is_permanent
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import rollout as R
from cambrian.operator.reconcile.actions import (ArmWeight, CreateRollout, CreateTrainingJob, DeployArm, Owner,
                                                 RecordJournal, SetWeights, UpdateChampion)
from cambrian.operator.reconcile.champion import serving_name
from cambrian.operator.reconcile.common import Meta, child_name, label_value
from cambrian.operator.reconcile.observations import ArmObservation, JobObservation, RolloutObservation
from cambrian.operator.reconcile.observations import Spend as SpendObs

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LONG = "a-hypothesis-name-that-is-far-longer-than-the-sixty-three-characters-a-label-value-may-hold"


# ---- names and labels ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["h1", LONG, "x" * 63, "x" * 64, "9" + "a" * 80, "a." * 40, "-odd-" * 20])
def test_label_values_fit_and_are_stable(text):
    v = label_value(text)
    assert len(v) <= 63 and LABEL_VALUE.match(v), v
    assert v == label_value(text)  # deterministic: a selector built later finds the same value
    if len(text) <= 63 and LABEL_VALUE.match(text):
        assert v == text
    else:
        assert v != label_value(text + "x")  # a hash of the whole, not just the cut


@pytest.mark.parametrize("owner", ["h1", LONG, "1-starts-with-a-digit", "a.b.c", "x" * 253])
def test_child_names_are_dns_labels_that_depend_only_on_owner_and_step(owner):
    for step in ("train-1", "arm-control", "router", "baseline", "w12"):
        name = child_name(owner, "uid-1", step)
        assert len(name) <= 63 and DNS_1035.match(name), name
        assert name == child_name(owner, "uid-1", step)
        assert name != child_name(owner, "uid-2", step)


def _labels(obj):
    yield from (obj.get("metadata", {}).get("labels") or {}).items()
    tpl = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    yield from (tpl.get("labels") or {}).items()
    yield from (((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}).items()


def test_every_child_of_a_long_named_owner_has_valid_labels_and_names():
    """Before: the ConfigMap of a Hypothesis named over 63 characters was refused with 422 (its
    cambrian.dev/owner label), and retried every 10 s with an empty status."""
    owner = Owner("Hypothesis", LONG, "uid-long", "ns")
    meta = Meta(LONG, "uid-long", "ns", 1)
    job = CreateTrainingJob(H.job_name(meta, 1), owner, LONG, 1, {}, {"component": "optimizer", "patch": {"lr": 1}},
                            api.Training().wire(), {"world": {}}, None, H.bundle_path(meta, 1))
    ro_owner = Owner("Rollout", LONG, "uid-ro", "ns")
    arm = DeployArm(child_name(LONG, "uid-ro", "arm-control"), ro_owner, LONG, "control", "pvc://b/x", {}, None)
    weights = SetWeights(ro_owner, LONG, "salt", (ArmWeight("control", arm.name, 100),))
    evo_owner = Owner("Evolution", LONG, "uid-e", "ns")
    champion = UpdateChampion(evo_owner, serving_name(LONG, "uid-e"), "baseline", "pvc://b/x", None, None, "r1", {})
    objs = [K.training_configmap(job), K.training_job(job), *K.arm_manifests(arm), *K.router_manifests(weights, "ns"),
            K.rollout_object(CreateRollout(child_name(LONG, "uid-e", "ro-x"), evo_owner, {}, LONG)),
            *K.champion_manifests(champion)]
    for obj in objs:
        assert DNS_1035.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63
        for key, value in _labels(obj):
            assert len(value) <= 63 and LABEL_VALUE.match(value), (obj["kind"], key, value)
    assert K.training_job(job)["metadata"]["labels"][K.L_OWNER] == label_value(LONG)
    # the production server keeps a readable, stable name where it can (a Service name: DNS-1035, <= 63)
    assert serving_name("y" * 250, "u") != serving_name("y" * 250, "v")
    assert serving_name("feed", "u") == "feed-champion"
    for name in ("y" * 60, "1-feed", "a.b"):
        assert DNS_1035.match(serving_name(name, "u")) and len(serving_name(name, "u")) <= 63


# ---- refusals -----------------------------------------------------------------------------------


class FakeApiException(Exception):
    def __init__(self, status, message="", reason="Bad Request"):
        super().__init__(message)
        self.status, self.reason = status, reason
        self.body = json.dumps({"kind": "Status", "message": message})


@pytest.mark.parametrize("code,permanent", [(400, True), (422, True), (413, True), (403, False), (404, None),
                                            (409, None), (429, None), (500, None), (503, None)])
def test_refusals_are_classified(code, permanent):
    out = K.refusal(FakeApiException(code, "spec.x: Invalid value"), "Job j")
    if permanent is None:
        assert not isinstance(out, ActionRefused)  # retried as before
    else:
        assert isinstance(out, ActionRefused) and out.permanent is permanent and "spec.x: Invalid value" in str(out)
    assert refusal_is_permanent(code) is bool(permanent)


def test_a_create_in_a_terminating_namespace_is_told_apart_from_rbac():
    """The API server refuses creates in a namespace being deleted with a 403 whose Status cause is
    NamespaceTerminating: the object is going away with it, no permission is missing."""
    going = FakeApiException(403, 'configmaps "x" is forbidden: unable to create new content in namespace a '
                                  'because it is being terminated', reason="Forbidden")
    going.body = json.dumps({"kind": "Status", "message": "unable to create new content", "reason": "Forbidden",
                             "details": {"causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]}})
    rbac = FakeApiException(403, 'configmaps is forbidden: User "system:serviceaccount:x:y" cannot create',
                            reason="Forbidden")
    assert K.namespace_terminating(going) and not K.namespace_terminating(rbac)
    assert not K.namespace_terminating(FakeApiException(409, "exists"))
    out, denied = K.refusal(going, "ConfigMap x"), K.refusal(rbac, "ConfigMap x")
    assert isinstance(out, ActionRefused) and out.namespace_terminating and not out.permanent
    assert isinstance(denied, ActionRefused) and not denied.namespace_terminating


def test_an_event_lost_to_a_terminating_namespace_is_not_a_warning(caplog):
    going = FakeApiException(403, "forbidden", reason="Forbidden")
    going.body = json.dumps({"details": {"causes": [{"reason": "NamespaceTerminating"}]}})
    event = {"reason": "Blocked", "involvedObject": {"kind": "Hypothesis", "name": "h", "namespace": "a"}}
    with caplog.at_level("DEBUG", logger="cambrian.operator.kubernetes"):
        K._event_lost(event, going)
        K._event_lost(event, FakeApiException(403, 'events is forbidden: User "u" cannot create', "Forbidden"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and 'events is forbidden: User "u"' in warnings[0]


# ---- prerequisites from status ------------------------------------------------------------------


def _pod(name, phase="Pending", conditions=(), waiting=None, ts="2026-01-01T00:00:00Z"):
    status = {"phase": phase, "conditions": list(conditions)}
    if waiting:
        status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": waiting}}]
    return {"metadata": {"name": name, "creationTimestamp": ts}, "status": status}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": '0/3 nodes are available: persistentvolumeclaim "cambrian-bundles" not found.'}


def test_pod_blockers_name_the_missing_thing():
    assert "persistentvolumeclaim \"cambrian-bundles\" not found" in K.pod_blocker([_pod("p", conditions=[UNSCHEDULABLE])])
    pull = K.pod_blocker([_pod("p", waiting={"reason": "ImagePullBackOff", "message": 'Back-off pulling "x:1"'})])
    assert "ImagePullBackOff" in pull and "x:1" in pull
    assert K.pod_blocker([_pod("p", waiting={"reason": "ContainerCreating"})]) is None  # passes by itself
    assert K.pod_blocker([_pod("p", phase="Running", conditions=[UNSCHEDULABLE])]) is None
    assert K.pod_blocker([]) is None
    dep = {"metadata": {"name": "d"}, "status": {"conditions": [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": 'pods "d-1" is forbidden: no PriorityClass with name cambrian-serving was found'}]}}
    assert "no PriorityClass with name cambrian-serving" in K.deployment_blocker(dep)


def test_parse_job_carries_the_blocker():
    job = {"metadata": {"name": "j"}, "spec": {}, "status": {"active": 1}}
    seen = K.parse_job(job, [_pod("p", conditions=[UNSCHEDULABLE])])
    assert seen.state == "Running" and "cambrian-bundles" in seen.blocked


# ---- the core reports a blocker once ------------------------------------------------------------


def _evo_spec(**over):
    return api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}},
                                             **over})


def test_hypothesis_training_blocked_is_reported_once_and_cleared():
    meta = Meta("h", "uid-h", "ns", 1)
    ctx = H.EvolutionContext("evo", "uid-e", _evo_spec(), {})
    spec = api.HypothesisSpec.model_validate({"evolutionRef": {"name": "evo"}, "component": "optimizer",
                                              "explanation": "x", "delta": {"patch": {"lr": 0.02}}})
    first = H.reconcile(meta, spec, api.HypothesisStatus(), ctx, [], None, T0)
    name = first.status.job_name
    stuck = JobObservation(name, "Pending", blocked="pod p cannot be scheduled: 0/3 nodes match the node selector")
    r1 = H.reconcile(meta, spec, first.status, ctx, [stuck], None, T0)
    assert r1.status.phase == "Training" and "node selector" in r1.status.reason
    (c,) = [c for c in r1.status.conditions if c.type == "Training"]
    assert c.status == "False" and c.reason == "Blocked" and "node selector" in c.message
    assert [a.event for a in r1.actions if isinstance(a, RecordJournal)] == ["Blocked"]
    r2 = H.reconcile(meta, spec, r1.status, ctx, [stuck], None, T0 + timedelta(seconds=30))
    assert not [a for a in r2.actions if isinstance(a, RecordJournal)]  # said once
    r3 = H.reconcile(meta, spec, r2.status, ctx, [JobObservation(name, "Running")], None, T0 + timedelta(seconds=60))
    assert r3.status.reason is None and [c for c in r3.status.conditions if c.type == "Training"][0].status == "True"


def test_evolution_baseline_blocked_is_reported():
    meta = Meta("evo", "uid-e", "ns", 1)
    spec = _evo_spec(training={"priorityClassName": "cambrian-training"})
    stuck = JobObservation(E.baseline_job_name(meta), "Pending",
                           blocked="PriorityClass cambrian-training does not exist (spec.training.priorityClassName)")
    r = E.reconcile(meta, spec, api.EvolutionStatus(phase="Running"), [], [], stuck, SpendObs(), T0)
    assert "PriorityClass cambrian-training" in r.status.reason
    (c,) = [c for c in r.status.conditions if c.type == "ChampionReady"]
    assert c.reason == "Blocked" and any(isinstance(a, RecordJournal) and a.event == "Blocked" for a in r.actions)


def test_rollout_arm_blocked_is_reported():
    meta = Meta("ro", "uid-ro", "ns", 1)
    spec = api.RolloutSpec.model_validate({
        "control": {"bundle": "c"}, "treatments": [{"name": "t", "hypothesisRef": {"name": "h"}, "bundle": "b"}],
        "salt": "s", "ramp": {"steps": [{"weights": [50, 50], "duration": "7d"}]},
        "metrics": {"northStar": [{"name": "minutes"}]}})
    obs = RolloutObservation({"control": ArmObservation("a", True, False, "pod a-1 cannot be scheduled: "
                                                        'persistentvolumeclaim "cambrian-bundles" not found'),
                              "t": ArmObservation("b", True, True)})
    r = R.reconcile(meta, spec, api.RolloutStatus(phase="Deploying"), api.Serving(), None, obs, T0)
    assert r.status.phase == "Deploying" and "arm control" in r.status.reason and "cambrian-bundles" in r.status.reason
    assert [c.reason for c in r.status.conditions if c.type == "ArmsReady"] == ["Blocked"]


def test_blocked_objects_do_nothing_until_their_generation_moves():
    from cambrian.operator.reconcile.common import REFUSED, blocked, fail_until_spec_changes

    meta = Meta("evo", "uid-e", "ns", 3)
    failed = fail_until_spec_changes(meta, "Evolution", api.EvolutionStatus(phase="Running"), REFUSED,
                                     "Job x was refused: bad", T0).status
    assert blocked(failed, 3) and not blocked(failed, 4)
    r = E.reconcile(meta, _evo_spec(), failed, [], [], None, SpendObs(), T0)
    assert r.actions == [] and r.status == failed
    r4 = E.reconcile(Meta("evo", "uid-e", "ns", 4), _evo_spec(), failed, [], [], None, SpendObs(), T0)
    assert r4.status.phase == "Running" and r4.status.observed_generation == 4
    assert "CreateTrainingJob" in r4.kinds() and any(getattr(a, "event", "") == "Resumed" for a in r4.actions)
    # a failure of another kind (the baseline run failed) is not lifted by an edit
    other = failed.model_copy(update={"conditions": []})
    assert E.reconcile(Meta("evo", "uid-e", "ns", 4), _evo_spec(), other, [], [], None, SpendObs(), T0).actions == []


# ---- the Kubernetes platform maps the API server's answers -------------------------------------


class _Api:
    """Stands in for one kubernetes client API object: each method answers from `script`."""

    def __init__(self, **script):
        self.script, self.calls = script, []

    def __getattr__(self, name):
        def call(*a, **k):
            self.calls.append(name)
            out = self.script.get(name)
            if isinstance(out, Exception):
                raise out
            return out(*a, **k) if callable(out) else out
        return call


def _api_exception(status, message=""):
    from kubernetes.client.rest import ApiException

    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"message": message})
    return exc


def _platform(**apis):
    p = K.KubernetesPlatform(api_client=None)
    for k, v in apis.items():
        setattr(p, k, v)
    return p


def _job_action():
    return CreateTrainingJob("h-train-1-abcd1234", Owner("Hypothesis", "h", "uid-h", "ns"), "h", 1, {},
                             {"component": "optimizer", "patch": {"lr": 1}}, api.Training().wire(), {"world": {}},
                             None, "bundles/h/attempt-1")


def test_creates_map_refusals_and_treat_conflicts_as_success():
    ok = _platform(core=_Api(), batch=_Api(create_namespaced_job=_api_exception(409)))
    ok.submit_training_job(_job_action())  # already there: its name is deterministic
    bad = _platform(core=_Api(), batch=_Api(create_namespaced_job=_api_exception(422, 'Job.batch "x" is invalid')))
    with pytest.raises(ActionRefused) as err:
        bad.submit_training_job(_job_action())
    assert err.value.permanent and err.value.code == 422 and 'Job.batch "x" is invalid' in str(err.value)
    down = _platform(core=_Api(), batch=_Api(create_namespaced_job=_api_exception(503)))
    with pytest.raises(Exception) as err:
        down.submit_training_job(_job_action())
    assert not isinstance(err.value, ActionRefused)  # retried as before


def test_the_run_configmap_and_the_job_are_sent_together_and_either_failing_fails_the_step():
    """One round trip instead of two for a new Hypothesis' first step (issue 16): the Job is sent while the
    ConfigMap's create is still in flight; a ConfigMap that could not be created fails the step (its
    replay creates it), a Job refusal still wins."""
    import threading

    cm_sent, job_sent = threading.Event(), threading.Event()

    def slow_configmap(*a, **k):
        cm_sent.set()
        assert job_sent.wait(10), "the Job was not sent while the ConfigMap's create was in flight"

    def job(*a, **k):
        assert cm_sent.wait(10)
        job_sent.set()

    both = _platform(core=_Api(create_namespaced_config_map=slow_configmap), batch=_Api(create_namespaced_job=job))
    both.submit_training_job(_job_action())
    assert both.core.calls == ["create_namespaced_config_map"] and both.batch.calls == ["create_namespaced_job"]
    cm_down = _platform(core=_Api(create_namespaced_config_map=_api_exception(503)), batch=_Api())
    with pytest.raises(Exception) as err:
        cm_down.submit_training_job(_job_action())
    assert getattr(err.value, "status", None) == 503 and cm_down.batch.calls == ["create_namespaced_job"]
    cm_refused = _platform(core=_Api(create_namespaced_config_map=_api_exception(403, "forbidden")),
                           batch=_Api(create_namespaced_job=_api_exception(422, 'Job.batch "x" is invalid')))
    with pytest.raises(ActionRefused) as err:
        cm_refused.submit_training_job(_job_action())
    assert err.value.code == 422  # the Job's own answer, not the ConfigMap's


def test_a_missing_httproute_is_a_refusal_outside_the_spec():
    serving = {"httpRoute": {"name": "feed", "port": 8080}}
    p = _platform(core=_Api(), apps=_Api(), custom=_Api(get_namespaced_custom_object=_api_exception(404)))
    with pytest.raises(ActionRefused) as err:
        p.set_weights(SetWeights(Owner("Rollout", "ro", "u", "ns"), "ro", "s", (ArmWeight("control", "a", 100),), serving,
                                 route_version=""))
    assert not err.value.permanent and "HTTPRoute feed" in str(err.value)


def test_a_refused_proposal_is_reported_and_the_others_are_created():
    from cambrian.operator.reconcile.actions import ProposeHypotheses

    created = []

    def create(group, version, ns, plural, body):
        if body["metadata"]["name"].endswith("-0"):
            raise _api_exception(422, "spec.explanation: Required value")
        created.append(body["metadata"]["name"])

    events = []
    custom = _Api(list_namespaced_custom_object={"items": []}, create_namespaced_custom_object=create)
    p = _platform(custom=custom, core=_Api(read_namespaced_config_map=_api_exception(404)))
    p.record = events.append
    p.proposer = lambda action, existing: [{"component": "optimizer"}, {"component": "optimizer"}]
    p.propose(ProposeHypotheses(Owner("Evolution", "evo", "u", "ns"), 1, "evo-w1-abcd1234", (), ()))
    assert created == ["evo-w1-abcd1234-1"]
    # the answer was kept before the creates and dropped after them (operator/proposing.propose_wakeup)
    assert p.core.calls == ["read_namespaced_config_map", "create_namespaced_config_map", "delete_namespaced_config_map"]
    assert [e.event for e in events] == ["ProposalRefused", "Proposed"] and events[0].warning


@pytest.mark.parametrize("labels,pod_spec,suspend,says", [
    ({}, {"priorityClassName": "gone"}, False, "PriorityClass gone does not exist"),
    ({K.KUEUE_QUEUE: "q"}, {}, True, "Kueue LocalQueue q does not exist"),
])
def test_training_jobs_name_a_missing_priority_class_or_queue(monkeypatch, labels, pod_spec, suspend, says):
    from kubernetes import client

    job = client.V1Job(metadata=client.V1ObjectMeta(
        name="j", namespace="ns", labels=labels,
        owner_references=[client.V1OwnerReference(api_version="v1", kind="Hypothesis", name="h", uid="uid-h")]),
        spec=client.V1JobSpec(suspend=suspend, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            containers=[client.V1Container(name="trainer")], **{"priority_class_name": pod_spec.get("priorityClassName")}))))
    monkeypatch.setattr(client, "SchedulingV1Api", lambda api=None: _Api(read_priority_class=_api_exception(404)))
    p = _platform(batch=_Api(list_namespaced_job=client.V1JobList(items=[job])),
                  core=_Api(list_namespaced_pod=client.V1PodList(items=[])),
                  custom=_Api(get_namespaced_custom_object=_api_exception(404)))
    (seen,) = p.training_jobs(Owner("Hypothesis", "h", "uid-h", "ns"))
    assert seen.state in ("Pending", "Suspended") and says in seen.blocked
    # without the right to look (RBAC), nothing is claimed
    monkeypatch.setattr(client, "SchedulingV1Api", lambda api=None: _Api(read_priority_class=_api_exception(403)))
    p.custom = _Api(get_namespaced_custom_object=_api_exception(403))
    (seen,) = p.training_jobs(Owner("Hypothesis", "h", "uid-h", "ns"))
    assert seen.blocked is None
