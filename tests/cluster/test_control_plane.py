"""Smoke tests of the real test control plane (cambrian.testing.cluster)."""

from __future__ import annotations

import json

import pytest
import yaml

from cambrian.testing.cluster import (ANNOTATION_DURATION, ANNOTATION_EXIT_CODE,
                                      ANNOTATION_TERMINATION_MESSAGE, GPU_NODE_LABEL, Cluster)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.cambrian.dev"},
    "spec": {
        "group": "smoke.cambrian.dev", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "min must not exceed max"}],
                }},
            }},
        }],
    },
}


def _job(name: str, annotations: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "train", "image": "cambrian/trainer:test",
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }],
                },
            },
        },
    }


def _wait_job_condition(cluster: Cluster, ns: str, name: str, timeout: float = 90) -> str:
    """Wait until the Job has a Complete or Failed condition; return which."""
    found: list[str] = []

    def finished() -> bool:
        job = cluster.get_json("job", name, "-n", ns)
        for cond in job.get("status", {}).get("conditions", []) or []:
            if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                found.append(cond["type"])
                return True
        return False
    cluster.wait_for(f"job {ns}/{name} to finish", finished, timeout, interval=1)
    return found[0]


def _job_pod(cluster: Cluster, ns: str, name: str) -> dict:
    pods = cluster.get_json("pods", "-n", ns, "-l", f"job-name={name}")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def test_api_server_answers(cluster: Cluster) -> None:
    assert cluster.kubectl("get", "--raw=/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["major"] == "1"
    nodes = cluster.get_json("nodes")["items"]
    names = {n["metadata"]["name"] for n in nodes}
    assert set(cluster.gpu_nodes) | set(cluster.cpu_nodes) <= names
    gpu = next(n for n in nodes if n["metadata"]["name"] == cluster.gpu_nodes[0])
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_crd_cel_rule_rejects_invalid_object(cluster: Cluster, cluster_namespace: str) -> None:
    cluster.apply(CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.cambrian.dev",
                    "--timeout=60s")
    good = {"apiVersion": "smoke.cambrian.dev/v1", "kind": "Widget",
            "metadata": {"name": "good", "namespace": cluster_namespace},
            "spec": {"min": 1, "max": 2}}
    cluster.apply(good)
    bad = dict(good, metadata={"name": "bad", "namespace": cluster_namespace},
               spec={"min": 5, "max": 2})
    out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert out.returncode != 0
    assert "min must not exceed max" in out.stderr
    assert cluster.kubectl("get", "widget", "bad", "-n", cluster_namespace,
                           check=False).returncode != 0


def test_gpu_job_is_scheduled_on_gpu_node_and_succeeds(cluster: Cluster,
                                                      cluster_namespace: str) -> None:
    ns = cluster_namespace
    job = _job("ok")
    job["metadata"]["namespace"] = ns
    cluster.apply(job)
    assert _wait_job_condition(cluster, ns, "ok") == "Complete"
    pod = _job_pod(cluster, ns, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] in cluster.gpu_nodes
    node = cluster.get_json("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"][GPU_NODE_LABEL] == "true"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0


def test_gpu_job_failure_annotation_sets_exit_code_and_message(cluster: Cluster,
                                                              cluster_namespace: str) -> None:
    ns = cluster_namespace
    job = _job("boom", {ANNOTATION_EXIT_CODE: "3",
                        ANNOTATION_TERMINATION_MESSAGE: "CUDA out of memory"})
    job["metadata"]["namespace"] = ns
    cluster.apply(job)
    assert _wait_job_condition(cluster, ns, "boom") == "Failed"
    pod = _job_pod(cluster, ns, "boom")
    assert pod["status"]["phase"] == "Failed"
    assert pod["spec"]["nodeName"] in cluster.gpu_nodes
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3
    assert term["reason"] == "Error"
    assert term["message"] == "CUDA out of memory"


def test_duration_annotation_keeps_pod_running_and_job_delete_removes_it(
        cluster: Cluster, cluster_namespace: str) -> None:
    ns = cluster_namespace
    job = _job("long", {ANNOTATION_DURATION: "10m"})
    job["metadata"]["namespace"] = ns
    cluster.apply(job)
    cluster.wait_for("long-running pod Running", lambda: any(
        p["status"].get("phase") == "Running"
        for p in cluster.get_json("pods", "-n", ns, "-l", "job-name=long")["items"]), 60)
    assert cluster.get_json("job", "long", "-n", ns)["status"].get("active") == 1
    # Deleting the Job (foreground) must remove the running pod: pod-delete stage + the Job
    # controller dropping its tracking finalizer.
    cluster.kubectl("delete", "job", "long", "-n", ns, "--cascade=foreground", "--timeout=60s")
    cluster.wait_for("pod of the deleted Job to disappear", lambda: not cluster.get_json(
        "pods", "-n", ns, "-l", "job-name=long")["items"], 60, interval=1)


def test_gpu_request_beyond_capacity_stays_pending(cluster: Cluster,
                                                   cluster_namespace: str) -> None:
    """The scheduler really accounts nvidia.com/gpu: 9 GPUs fit on no 8-GPU node."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "huge", "namespace": cluster_namespace},
           "spec": {"containers": [{"name": "c", "image": "x",
                                    "resources": {"limits": {"nvidia.com/gpu": 9}}}]}}
    cluster.apply(pod)

    def unschedulable() -> bool:
        p = cluster.get_json("pod", "huge", "-n", cluster_namespace)
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                   for c in p.get("status", {}).get("conditions", []) or [])
    cluster.wait_for("pod huge to be reported Unschedulable", unschedulable, 60)
    assert not cluster.get_json("pod", "huge", "-n", cluster_namespace)["spec"].get("nodeName")


def test_owner_reference_garbage_collection(cluster: Cluster, cluster_namespace: str) -> None:
    ns = cluster_namespace
    cluster.kubectl("create", "configmap", "owner", "-n", ns, "--from-literal=a=1")
    owner_uid = cluster.get_json("configmap", "owner", "-n", ns)["metadata"]["uid"]
    child = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "child", "namespace": ns, "ownerReferences": [{
                 "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}]},
             "data": {"b": "2"}}
    cluster.apply(child)
    cluster.kubectl("delete", "configmap", "owner", "-n", ns)
    cluster.wait_for("GC to delete the child ConfigMap", lambda: cluster.kubectl(
        "get", "configmap", "child", "-n", ns, check=False).returncode != 0, 60, interval=1)


def test_helm_version(cluster: Cluster) -> None:
    out = cluster.helm("version", "--short").stdout.strip()
    assert out.startswith("v3.") or out.startswith("v4."), out
    # helm talks to this cluster through the kubeconfig in cluster.env()
    assert cluster.helm("list", "--all-namespaces", "-o", "json").stdout.strip() == "[]"
