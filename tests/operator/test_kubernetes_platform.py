"""Kubernetes manifests built from the core's actions, and Job/pod status parsed back (no cluster:
the builders are pure). The cluster team's tests apply them to a real API server."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone

import pytest
import yaml

from cambrian.operator import api
from cambrian.operator.platform import kubernetes as K
from cambrian.operator.platform.base import Platform, apply_actions
from cambrian.operator.platform.termination import compact
from cambrian.operator.reconcile import httproute as HR
from cambrian.operator.reconcile.actions import (ArmWeight, CreateTrainingJob, DeployArm, Owner, SetWeights,
                                                 UpdateChampion)

OWNER = Owner("Hypothesis", "h1", "uid-h1", "team-a")


def job_action(**training) -> CreateTrainingJob:
    evo = api.EvolutionSpec.model_validate({
        "objective": {"northStar": [{"name": "dau"}]},
        "data": {"world": {"users": 300, "days": 5, "seed": 3}},
        "training": {"image": "trainer:1", "queueName": "q", "nodeSelector": {"pool": "gpu"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                     "priorityClassName": "batch", "gpu": {"resource": "amd.com/gpu", "count": 2}, **training},
        "storage": {"claimName": "bundles"},
    })
    return CreateTrainingJob("h1-train-1-abcd1234", OWNER, "h1", 1, {"optimizer": {"lr": 0.01}},
                             {"component": "optimizer", "patch": {"lr": 0.02}}, evo.training.wire(), evo.data.wire(),
                             "bundles", "bundles/h1/attempt-1")


def test_training_job_manifest():
    a = job_action()
    job = K.training_job(a)
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == a.name and meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [{"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "name": "h1",
                                        "uid": "uid-h1", "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"][K.KUEUE_QUEUE] == "q" and spec["suspend"] is True
    assert meta["annotations"][K.A_BUNDLE] == "pvc://bundles/bundles/h1/attempt-1/bundle"
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 6 * 3600
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["priorityClassName"] == "batch"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["amd.com/gpu"] == "2" and c["resources"]["requests"]["amd.com/gpu"] == "2"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["command"][:3] == ["python", "-m", "cambrian.operator.platform.termination"]
    train = c["command"][c["command"].index("--") + 1 :]
    assert c["name"] == K.SCORER
    assert train == ["cambrian", "train", "--config", "/etc/cambrian/run/config.json", "--data", "/data", "--delta",
                     "/etc/cambrian/run/delta.json", "--out", "/var/lib/cambrian/bundles/h1/attempt-1",
                     "--pod-stage", "score", "--work", "/work"]
    assert "env" in c and not any("KEY" in e["name"] or "TOKEN" in e["name"] for e in c["env"])
    world, prepare, trainer, predictor = pod["initContainers"]
    assert world["command"] == ["cambrian", "world", "generate", "--users", "300", "--days", "5", "--seed", "3",
                                "--out", "/data"]
    assert prepare["command"][-4:] == ["--pod-stage", "prepare", "--work", "/work"]
    assert trainer["name"] == K.TRAINER and trainer["command"][:5] == ["python", "-m", "cambrian.trainer.pod", "train", "--work"]
    assert predictor["command"][3] == "predict"
    assert trainer["resources"] == c["resources"]  # the candidate's step gets the GPU and the memory
    cm = K.training_configmap(a)
    assert json.loads(cm["data"]["delta.json"]) == {"component": "optimizer", "patch": {"lr": 0.02}}
    assert json.loads(cm["data"]["config.json"]) == {"optimizer": {"lr": 0.01}}
    # no queue: not suspended, no Kueue label; CPU-only: no GPU resource
    plain = K.training_job(job_action(queueName=None, gpu={"count": 0}))
    assert plain["spec"]["suspend"] is False and K.KUEUE_QUEUE not in plain["metadata"]["labels"]
    assert set(plain["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]) == {"memory"}


def _job(conds=(), active=0, suspend=False):
    return {"metadata": {"name": "j", "annotations": {K.A_BUNDLE: "pvc://b/x/bundle"}},
            "spec": {"suspend": suspend},
            "status": {"active": active, "startTime": "2026-01-01T00:00:00Z", "completionTime": None,
                       "conditions": [{"type": t, "status": "True", "reason": r, "message": m,
                                       "lastTransitionTime": "2026-01-01T01:00:00Z"} for t, r, m in conds]}}


def _pod(exit_code, message, reason="Completed"):
    return {"metadata": {"name": "j-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"containerStatuses": [{"name": "scorer", "state": {"terminated": {
                "exitCode": exit_code, "reason": reason, "message": message}}}]}}


def test_only_the_scorer_mounts_the_held_out_data_and_nothing_runs_candidate_code_with_it():
    """Issue 13, Deliver 2 in the cluster: candidate code (the trainer step) and the program it wrote (the
    predictor step) see no data volume, no run config and no storage; the scorer sees no training input."""
    pod = K.training_job(job_action())["spec"]["template"]["spec"]
    mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in pod["initContainers"] + pod["containers"]}
    assert set(mounts["trainer"]) == {"training-in", "training-out", "tmp-trainer"}
    assert mounts["trainer"]["training-in"]["readOnly"] is True
    assert set(mounts["predictor"]) == {"training-out", "scoring-in", "scoring-out", "tmp-predictor"}
    assert "tmp" in mounts["scorer"] and "tmp-trainer" not in mounts["scorer"]  # nothing planted in /tmp reaches it
    assert mounts["predictor"]["training-out"]["readOnly"] is True
    assert "data" in mounts["scorer"] and mounts["scorer"]["data"]["readOnly"] is True
    assert mounts["scorer"]["training-out"]["readOnly"] is True and "training-in" not in mounts["scorer"]
    with_data = [name for name, m in mounts.items() if "data" in m]
    assert sorted(with_data) == ["prepare", "scorer", "world"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    for c in pod["initContainers"] + pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert not any(e["name"] == "CAMBRIAN_SANDBOX" for e in c.get("env") or [])
    templated = K.apply_pod_template(K.training_job(job_action()), {"tmpSizeLimit": "3Gi"}, "trainer")
    tmps = [v for v in templated["spec"]["template"]["spec"]["volumes"] if v["name"].startswith("tmp")]
    assert len(tmps) == 3 and all(v["emptyDir"]["sizeLimit"] == "3Gi" for v in tmps)


def test_a_baseline_pod_looks_for_its_run_in_the_run_store_and_only_trusted_steps_see_the_store():
    """Issue 15, item 3 in the cluster: a baseline run (no hypothesis, no delta) of one pod with storage passes the
    run store and its training settings to prepare (the claim read-only) and to the scorer; the candidate steps
    never see the claim. Hypotheses, runs without storage and gangs train as before."""
    a = job_action()
    base = CreateTrainingJob("evo-baseline-s1", OWNER, None, 1, {"optimizer": {"lr": 0.01}}, None,
                             {k: v for k, v in a.training.items() if k != "gpu"}, a.data, "bundles",
                             "bundles/evo/baseline-s1")
    assert json.loads(K.training_configmap(base)["data"][K.TRAINING_FILE]) == base.training
    pod = K.training_job(base)["spec"]["template"]["spec"]
    steps = {c["name"]: c for c in pod["initContainers"] + pod["containers"]}
    flags = ["--run-store", K.STORAGE_MOUNT, "--run-settings", f"/etc/cambrian/run/{K.TRAINING_FILE}"]
    for name in ("prepare", "scorer"):
        command = steps[name]["command"]
        assert command[command.index("--run-store"):command.index("--run-store") + 4] == flags
    mounts = {c: {m["name"]: m for m in s["volumeMounts"]} for c, s in steps.items()}
    assert mounts["prepare"]["storage"] == {"name": "storage", "mountPath": K.STORAGE_MOUNT, "readOnly": True}
    assert not mounts["scorer"]["storage"].get("readOnly")  # the scorer keeps the run it trained
    assert [c for c, m in mounts.items() if "storage" in m] == ["prepare", "scorer"]
    for other in (a,  # a hypothesis' run
                  CreateTrainingJob(base.name, OWNER, None, 1, base.baseline, None, base.training, base.data),
                  CreateTrainingJob(base.name, OWNER, None, 1, base.baseline, None, {**base.training, "workers": 2},
                                    base.data, "bundles", base.bundle_path)):
        assert K.TRAINING_FILE not in K.training_configmap(other)["data"]
        job = K.training_job(other)["spec"]["template"]["spec"]
        assert not any("--run-store" in c["command"] for c in job["initContainers"] + job["containers"])


SNAPSHOT = "data/source-0123456789abcdef"  # what reconcile.common.data_snapshot names


def source_action(data: dict, snapshot: str | None = SNAPSHOT, claim: str | None = "bundles") -> CreateTrainingJob:
    a = job_action()
    return CreateTrainingJob(a.name, a.owner, a.hypothesis, a.attempt, a.baseline, a.delta, a.training,
                             api.Data.model_validate(data).wire(), claim, a.bundle_path, data_snapshot=snapshot)


def test_an_own_source_is_fetched_by_the_one_step_that_holds_its_secret():
    """Issue 17 in the cluster: the warehouse's Secret reaches only the fetch step (the image's own code,
    before any candidate code runs); the trusted steps read its checked snapshot, the candidate none of it."""
    a = source_action({"source": {"uri": "postgresql://cambrian@warehouse:5432/events",
                                  "secretRef": {"name": "warehouse"}}})
    pod = K.training_job(a)["spec"]["template"]["spec"]
    fetch, prepare, trainer, predictor = pod["initContainers"]
    assert fetch["name"] == "fetch" and fetch["command"] == [
        "cambrian", "data", "fetch", "postgresql://cambrian@warehouse:5432/events", "--out",
        "/snapshots/source-0123456789abcdef", "--schema", "world"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "warehouse"}}]
    assert [c["name"] for c in pod["initContainers"] + pod["containers"] if "envFrom" in c] == ["fetch"]
    for c in (prepare, pod["containers"][0]):
        command = c["command"]
        assert command[command.index("--data") + 1] == "/data"
    assert not {m["name"] for m in trainer["volumeMounts"] + predictor["volumeMounts"]} & {"data", "storage", "run"}
    # without a secretRef the step reads the pod's own identity (workload identity, an instance role)
    plain = K.training_job(source_action({"source": {"uri": "s3://lake/world"}}))
    assert "envFrom" not in plain["spec"]["template"]["spec"]["initContainers"][0]


def test_every_training_job_of_an_evolution_reads_one_snapshot_of_its_source_on_its_claim():
    """The baseline's Job and a candidate's Job (both built from the core's actions) fetch into one folder of
    the Evolution's claim, which the first fetch writes and every later one keeps, and their trusted steps mount
    that folder read-only as /data: no Job fetches a copy of its own, so a warehouse that gains a day between
    two Jobs cannot give them different rows (a per-pod emptyDir did)."""
    from cambrian.operator.reconcile import evolution as E
    from cambrian.operator.reconcile import hypothesis as H
    from cambrian.operator.reconcile.common import Meta
    from cambrian.operator.reconcile.observations import Spend

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    spec = api.EvolutionSpec.model_validate({
        "objective": {"northStar": [{"name": "dau"}]}, "storage": {"claimName": "runs"},
        "data": {"source": {"uri": "postgresql://cambrian@wh:5432/events", "secretRef": {"name": "wh"}}}})
    evo = Meta("evo", "uid-evo", "team-a", 1)
    baseline = [a for a in E.reconcile(evo, spec, api.EvolutionStatus(), [], [], None, Spend(), now).actions
                if isinstance(a, CreateTrainingJob)]
    hyp = api.HypothesisSpec.model_validate({"evolutionRef": {"name": "evo"}, "component": "optimizer",
                                             "explanation": "faster", "delta": {"patch": {"lr": 0.01}}})
    ctx = H.EvolutionContext(name="evo", uid="uid-evo", spec=spec, baseline=spec.baseline)
    candidate = [a for a in H.reconcile(Meta("hyp-a", "uid-a", "team-a", 1), hyp, api.HypothesisStatus(), ctx, [],
                                        None, now).actions if isinstance(a, CreateTrainingJob)]
    assert baseline and len(candidate) == 1
    seen = set()
    for action in [*baseline, *candidate]:
        pod = K.training_job(action)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not [v for v in pod["volumes"] if "emptyDir" in v and v["name"] not in
                    ("tmp", "tmp-trainer", "tmp-predictor", *K.STEP_VOLUMES)]  # no data volume of the pod's own
        steps = {c["name"]: c for c in pod["initContainers"] + pod["containers"]}
        fetch = steps["fetch"]
        (into,) = [m for m in fetch["volumeMounts"] if m["mountPath"] == "/snapshots"]
        assert volumes[into["name"]] == {"name": "storage", "persistentVolumeClaim": {"claimName": "runs"}}
        out = fetch["command"][fetch["command"].index("--out") + 1]
        snapshot = f"{into['subPath']}/{out.removeprefix('/snapshots/')}"  # the folder on the claim
        for name in ("prepare", "scorer"):
            (data,) = [m for m in steps[name]["volumeMounts"] if m["mountPath"] == "/data"]
            assert data == {"name": "storage", "mountPath": "/data", "subPath": snapshot, "readOnly": True}
        seen.add(snapshot)
    assert len(seen) == 1 and seen.pop().startswith("data/source-")
    # another Evolution (a new one is how newer rows are trained on) has a snapshot of its own
    other = [a for a in E.reconcile(Meta("evo", "uid-new", "team-a", 1), spec, api.EvolutionStatus(), [], [], None,
                                    Spend(), now).actions if isinstance(a, CreateTrainingJob)]
    assert other[0].data_snapshot and other[0].data_snapshot != baseline[0].data_snapshot


def test_an_own_source_without_a_storage_claim_is_refused_naming_the_claim():
    """Without a claim there is nowhere for the Evolution's one snapshot: a per-pod fetch would let two Jobs train
    on different rows, so the Job is refused for good (the Evolution is Failed, Refused, until its spec changes)."""
    from cambrian.operator.platform.base import ActionRefused

    with pytest.raises(ActionRefused, match="spec.data.source needs spec.storage.claimName") as refused:
        K.training_job(source_action({"source": {"uri": "s3://lake/world"}}, claim=None))
    assert refused.value.permanent


def _shop_declaration(**change) -> dict:
    """The world's tables declared as a team's own, with a proxy of its own (watch_corr)."""
    from cambrian.trainer.schema import WORLD

    mine = WORLD.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    mine["name"] = "shop"
    mine["proxies"] = [*mine["proxies"], {"name": "watch_corr", "signal": "impressions.watch_seconds"}]
    return {**mine, **change}


def test_an_own_declaration_reaches_the_fetch_step_through_the_run_configmap():
    """spec.data.customDeclaration: the fetch step reads the source through the Evolution's own declaration,
    written into the run's ConfigMap (the snapshot then carries it for the steps after)."""
    a = source_action({"source": {"uri": "s3://lake/shop", "secretRef": {"name": "lake"}},
                       "customDeclaration": _shop_declaration()})
    declared = json.loads(K.training_configmap(a)["data"]["declaration.json"])
    assert declared["name"] == "shop" and declared["proxies"][-1]["name"] == "watch_corr"
    fetch = K.training_job(a)["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["command"][-2:] == ["--schema", "/etc/cambrian/run/declaration.json"]
    assert {"name": "run", "mountPath": "/etc/cambrian/run", "readOnly": True} in fetch["volumeMounts"]
    plain = source_action({"source": {"uri": "s3://lake/world"}})
    assert "declaration.json" not in K.training_configmap(plain)["data"]
    assert "run" not in {m["name"] for m in K.training_job(plain)["spec"]["template"]["spec"]["initContainers"][0]["volumeMounts"]}


def test_an_own_declaration_is_checked_by_the_evolution_and_names_its_proxies():
    source = {"uri": "s3://lake/shop"}
    data = api.Data.model_validate({"source": source, "customDeclaration": _shop_declaration()})
    assert [p.name for p in data.declared().proxies][-1] == "watch_corr"
    bad = {"source": source, "customDeclaration": _shop_declaration(label={"column": "impressions.nope", "min": 0, "max": 1})}
    with pytest.raises(ValueError, match=r"spec.data.customDeclaration: .*label: .*impressions.nope"):
        api.Data.model_validate(bad)
    with pytest.raises(ValueError, match="give spec.data.source"):
        api.Data.model_validate({"world": {}, "customDeclaration": _shop_declaration()})
    with pytest.raises(ValueError, match="not both"):
        api.Data.model_validate({"source": source, "declaration": "world", "customDeclaration": _shop_declaration()})
    # the offline objective may name the declaration's own proxy, and no proxy it lacks
    from pathlib import Path

    spec = yaml.safe_load((Path(__file__).parents[1] / "local" / "tiny-evolution.yaml").read_text())["spec"]
    spec["data"] = {"source": source, "customDeclaration": _shop_declaration()}
    spec["objective"]["offline"] = {"reward": {"metric": "watch_corr", "direction": "maximize"}}
    assert api.EvolutionSpec.model_validate(spec).objective.offline.reward.metric == "watch_corr"
    spec["data"]["customDeclaration"]["proxies"] = spec["data"]["customDeclaration"]["proxies"][:-1]
    with pytest.raises(ValueError, match="'watch_corr' is not a metric of the data's declaration 'shop'"):
        api.EvolutionSpec.model_validate(spec)


def test_parse_job_states():
    assert K.parse_job(_job(suspend=True), []).state == "Suspended"
    assert K.parse_job(_job(active=1), []).state == "Running"
    assert K.parse_job(_job(), []).state == "Pending"
    ok = K.parse_job(_job([("Complete", "", "")]), [_pod(0, '{"v":1,"metrics":{"val_loss":0.4}}')])
    assert ok.state == "Succeeded" and ok.metrics == {"val_loss": 0.4} and ok.bundle_uri == "pvc://b/x/bundle"
    assert ok.reused is None
    stored = K.parse_job(_job([("Complete", "", "")]), [_pod(0, '{"v":1,"metrics":{"val_loss":0.4},"reused":"k1"}')])
    assert stored.reused == "k1" and stored.metrics == {"val_loss": 0.4}
    gate = K.parse_job(_job([("Failed", "BackoffLimitExceeded", "")]),
                       [_pod(3, '{"v":1,"exit_code":3,"error":{"stage":"static","reason":"bad import"}}', "Error")])
    assert (gate.state, gate.exit_code, gate.stage, gate.message, gate.reason) == ("Failed", 3, "static", "bad import", "Error")
    assert gate.finished_at == datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
    oom = K.parse_job(_job([("Failed", "BackoffLimitExceeded", "")]), [_pod(137, "", "OOMKilled")])
    assert oom.reason == "OOMKilled" and oom.exit_code == 137
    # a step before the scorer failed: its exit and reason, never its own termination message
    killed = {"metadata": {"name": "j-y", "creationTimestamp": "2026-01-01T00:00:00Z"},
              "status": {"initContainerStatuses": [
                  {"name": "prepare", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                  {"name": "trainer", "state": {"terminated": {
                      "exitCode": 137, "reason": "OOMKilled", "message": '{"v":1,"metrics":{"auc":1.0}}'}}}]}}
    oom = K.parse_job(_job([("Failed", "BackoffLimitExceeded", "")]), [killed])
    assert (oom.reason, oom.exit_code, oom.metrics) == ("OOMKilled", 137, None)
    assert "trainer step failed" in oom.message and "auc" not in oom.message
    late = K.parse_job(_job([("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")]), [])
    assert late.reason == "DeadlineExceeded" and "deadline" in late.message


def test_arm_router_and_httproute():
    owner = Owner("Rollout", "ro", "uid-ro", "team-a")
    serving = api.Serving(http_route=api.HTTPRouteRef(name="feed"), collector_url="http://collector:8080").wire()
    dep, svc = K.arm_manifests(DeployArm("ro-arm-t-1", owner, "ro", "t", "pvc://bundles/b/h1/bundle", serving, None))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:6] == ["cambrian", "serve", "--bundle", "/var/lib/cambrian/b/h1/bundle", "--arm", "t"]
    assert dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "bundles", "readOnly": True}
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    sw = SetWeights(owner, "ro", "salt-1", (ArmWeight("control", "svc-c", 90), ArmWeight("t", "svc-t", 10)), serving,
                    phase=1)
    cm, rdep, rsvc = K.router_manifests(sw, "team-a")
    cfg = yaml.safe_load(cm["data"]["router.yaml"])
    assert cfg == {"experiment": "ro", "salt": "salt-1", "collector": "http://collector:8080", "phase": 1, "arms": [
        {"name": "control", "url": "http://svc-c.team-a.svc:8080", "weight": 90, "control": True},
        {"name": "t", "url": "http://svc-t.team-a.svc:8080", "weight": 10}]}
    from cambrian.online.router import RouterConfig

    # the online router accepts it, and stamps its exposures with the Rollout's ramp step
    assert RouterConfig.from_dict(cfg).weights == {"control": 90, "t": 10} and RouterConfig.from_dict(cfg).phase == 1
    back = SetWeights(owner, "ro", "salt-1", (ArmWeight("control", "svc-c", 100), ArmWeight("t", "svc-t", 0)), serving)
    assert RouterConfig.from_dict(K.router_config(back, "team-a")).weights == {"control": 100, "t": 0}
    # the route goes to the router's Service, on the port it serves (users through a Gateway are kept on one arm)
    held = replace(sw, route_version="", route=HR.to(K.router_name(owner), serving))
    assert K.httproute_patch(held, {"spec": {"rules": [{"backendRefs": [{"name": "x", "port": 1}]}]}})["spec"] == {
        "rules": [{"backendRefs": [{"name": rsvc["metadata"]["name"], "port": 8080, "weight": 100}]}]}
    assert rsvc["spec"]["ports"][0]["port"] == 8080


def test_the_router_config_says_which_service_serves_each_arm():
    """A stopped A/B/n arm's entry names control's Service (reconcile/rollout.py): the platform reads that back from
    the router's ConfigMap (router_services), so the core deletes the arm's Deployment only once it is there."""
    from types import SimpleNamespace

    owner = Owner("Rollout", "ro", "uid-ro", "team-a")
    sw = SetWeights(owner, "ro", "s", (ArmWeight("control", "ro-arm-control", 34), ArmWeight("b", "ro-arm-b", 33),
                                       ArmWeight("c", "ro-arm-control", 33)), {"port": 8080}, phase=1)
    cm, _, _ = K.router_manifests(sw, "team-a")
    p = K.KubernetesPlatform.__new__(K.KubernetesPlatform)
    p.core = SimpleNamespace(read_namespaced_config_map=lambda name, ns: SimpleNamespace(data=cm["data"]))
    assert p.router_services(owner, {}) == {"control": "ro-arm-control", "b": "ro-arm-b", "c": "ro-arm-control"}
    assert p.router_weights(owner, {}) == {"control": 34, "b": 33, "c": 33}
    assert K.service_of_url(K.router_config(sw, None)["arms"][2]["url"]) == "ro-arm-control"


def _served(dep: dict, svc: dict) -> tuple[dict[str, int], dict[str, str], list[dict]]:
    """A server's container ports by name, its command line's options, and its Service's ports."""
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    opts = {a: args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "" for i, a in enumerate(args)
            if a.startswith("--")}
    return {p["name"]: p["containerPort"] for p in c["ports"]}, opts, svc["spec"]["ports"]


def test_a_route_reaches_the_serving_port_alone():
    """spec.serving.httpRoute forwards users to the router's Service (the champion's between rollouts): each exposes
    the serving port alone, where the process serves /rank and /healthz only. Its admin port (/metrics; the router's
    GET /weights and /flush) is a second container port, for the PodMonitor; the router takes no POST /weights."""
    owner, evo = Owner("Rollout", "ro", "uid-ro", "team-a"), Owner("Evolution", "e", "uid-e", "team-a")
    for port, admin in ((8000, 9090), (9090, 9091)):
        serving = api.Serving(port=port, http_route=api.HTTPRouteRef(name="feed")).wire()
        sw = SetWeights(owner, "ro", "s", (ArmWeight("control", "svc-c", 90), ArmWeight("t", "svc-t", 10)), serving)
        _, rdep, rsvc = K.router_manifests(sw, "team-a")
        cdep, csvc = K.champion_manifests(UpdateChampion(evo, "e-champion", "baseline", "pvc://b/x", None, None, "r1",
                                                         serving))
        for dep, svc in ((rdep, rsvc), (cdep, csvc)):
            ports, opts, service_ports = _served(dep, svc)
            assert ports == {"http": port, "metrics": admin}
            assert service_ports == [{"name": "http", "port": port, "targetPort": "http"}]
            assert (opts["--port"], opts["--admin-port"], opts["--admin-host"]) == (str(port), str(admin), "0.0.0.0")
            # the route's backend is this Service on the port it exposes
            assert HR.to(svc["metadata"]["name"], serving) == ((svc["metadata"]["name"], port, 100),)
        assert "--read-only-config" in _served(rdep, rsvc)[1] and "--read-only-config" not in _served(cdep, csvc)[1]


def test_termination_message(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"val_loss": 0.5, "device": "cuda", "auc": float("nan")}))
    (tmp_path / "bundle").mkdir()
    assert json.loads(compact(tmp_path, 0)) == {"v": 1, "metrics": {"val_loss": 0.5}, "bundle": str(tmp_path / "bundle")}
    # a baseline run the scorer took from the run store says so (its key), beside its stored metrics
    (tmp_path / "metrics.json").write_text(json.dumps({"val_loss": 0.5, "reused": "a" * 32}))
    assert json.loads(compact(tmp_path, 0))["reused"] == "a" * 32
    (tmp_path / "error.json").write_text(json.dumps({"stage": "static", "reason": "x" * 10000}))
    msg = compact(tmp_path, 3)
    assert len(msg.encode()) <= 4096 and json.loads(msg)["error"]["stage"] == "static"
    # the wrapper runs the command, keeps its exit code and writes the message
    log = tmp_path / "termination-log"
    script = f"import json,sys; json.dump({{'stage':'training','reason':'nan'}}, open(r'{tmp_path}/error.json','w')); sys.exit(4)"
    rc = subprocess.call([sys.executable, "-m", "cambrian.operator.platform.termination", "--out", str(tmp_path),
                          "--path", str(log), "--", sys.executable, "-c", script])
    assert rc == 4 and json.loads(log.read_text())["error"] == {"stage": "training", "reason": "nan"}


def test_apply_actions_dispatches_every_action_type():
    from cambrian.operator.reconcile import actions as A

    calls = []

    class Recorder:
        def __getattr__(self, name):
            return lambda *a: calls.append(name)

    kinds = [A.CreateTrainingJob, A.DeleteJob, A.DeployArm, A.DeleteArm, A.SetWeights, A.ClearWeights,
             A.CreateRollout, A.RetireRollout, A.UpdateChampion, A.RouteChampion, A.ProposeHypotheses,
             A.RecordJournal]
    objs = [k.__new__(k) for k in kinds]
    apply_actions(Recorder(), objs)
    assert calls == ["submit_training_job", "delete_job", "deploy_arm", "delete_arm", "set_weights", "clear_weights",
                     "create_rollout", "retire_rollout", "update_champion", "route_champion", "propose", "record"]
    methods = {m for m in dir(Platform) if not m.startswith("_")}
    assert set(calls) <= methods and {"training_jobs", "arms", "router_weights", "prometheus_readout",
                                      "champion_serving"} <= methods
    assert isinstance(K.KubernetesPlatform.__new__(K.KubernetesPlatform), Platform)
