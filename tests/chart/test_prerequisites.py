"""charts/cambrian `prerequisites:`: the cluster objects the production example needs (PriorityClass,
bundles PersistentVolumeClaim, Kueue LocalQueue), created only when asked, as the example names them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUEUE = ("--api-versions", "kueue.x-k8s.io/v1beta1/LocalQueue")
ON = ("--set", "prerequisites.priorityClass.create=true", "--set", "prerequisites.bundlesClaim.create=true",
      "--set", "prerequisites.localQueue.create=true", *KUEUE)


def prerequisites(docs: list[dict]) -> list[dict]:
    return [d for d in docs if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "prerequisites"]


def test_nothing_is_created_by_default(render):
    assert prerequisites(render.docs()) == []
    assert prerequisites(render.docs(*KUEUE)) == []


def test_created_when_asked_with_the_names_the_production_example_uses(render):
    docs = prerequisites(render.docs(*ON))
    assert sorted(d["kind"] for d in docs) == ["LocalQueue", "PersistentVolumeClaim", "PriorityClass"]
    example = yaml.safe_load((ROOT / "manifests" / "examples" / "evolution.yaml").read_text())["spec"]
    pc = render.one(docs, "PriorityClass", example["training"]["priorityClassName"])
    assert pc["value"] == 1000 and pc["globalDefault"] is False and "namespace" not in pc["metadata"]
    assert pc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    claim = render.one(docs, "PersistentVolumeClaim", example["storage"]["claimName"])
    assert claim["metadata"]["namespace"] == "cambrian"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    queue = render.one(docs, "LocalQueue", example["training"]["queueName"])
    assert queue["apiVersion"] == "kueue.x-k8s.io/v1beta1" and queue["spec"] == {"clusterQueue": "cambrian"}


def test_values_reach_the_objects(render):
    docs = prerequisites(render.docs(*ON, "--set", "prerequisites.priorityClass.name=ml-batch",
                                     "--set", "prerequisites.priorityClass.value=50",
                                     "--set", "prerequisites.priorityClass.preemptionPolicy=Never",
                                     "--set", "prerequisites.bundlesClaim.namespace=team-a",
                                     "--set", "prerequisites.bundlesClaim.storageClassName=efs",
                                     "--set", "prerequisites.bundlesClaim.size=5Gi",
                                     "--set-json", 'prerequisites.bundlesClaim.accessModes=["ReadWriteOnce"]',
                                     "--set", "prerequisites.localQueue.namespace=team-a",
                                     "--set", "prerequisites.localQueue.clusterQueue=gpus"))
    pc = render.one(docs, "PriorityClass", "ml-batch")
    assert (pc["value"], pc["preemptionPolicy"]) == (50, "Never")
    claim = render.one(docs, "PersistentVolumeClaim", "cambrian-bundles")
    assert claim["metadata"]["namespace"] == "team-a" and claim["spec"]["storageClassName"] == "efs"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    queue = render.one(docs, "LocalQueue", "cambrian")
    assert queue["metadata"]["namespace"] == "team-a" and queue["spec"]["clusterQueue"] == "gpus"


def test_a_local_queue_without_kueue_is_refused_with_the_reason(render):
    proc = render.run("--set", "prerequisites.localQueue.create=true")
    assert proc.returncode != 0 and "needs Kueue installed" in proc.stderr, proc.stderr


@pytest.mark.parametrize("setting, field", [
    ("prerequisites.priorityClass.value=2000000000", "value"),
    ("prerequisites.priorityClass.name=system-cambrian", "name"),
    ("prerequisites.priorityClass.preemptionPolicy=Sometimes", "preemptionPolicy"),
    ("prerequisites.bundlesClaim.size=lots", "size"),
    ("prerequisites.bundlesClaim.accessModes[0]=ReadWriteSometimes", "accessModes"),
    ("prerequisites.localQueue.name=Bad_Name", "name"),
    ("prerequisites.pvc.create=true", "pvc"),
])
def test_schema_refuses_bad_values(render, setting, field):
    proc = render.run("--set", setting)
    assert proc.returncode != 0 and "prerequisites" in proc.stderr and field in proc.stderr, proc.stderr


def test_the_quickstart_needs_nothing_but_the_chart():
    """manifests/examples/quickstart/ parses, trains on CPU, and brings the only object it names (its claim)."""
    from cambrian.operator.api import EvolutionSpec

    docs = [d for f in sorted((ROOT / "manifests" / "examples" / "quickstart").glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if d]
    (evo,) = [d for d in docs if d["kind"] == "Evolution"]
    spec = EvolutionSpec.model_validate(evo["spec"])
    t = spec.training
    assert t.gpu.count == 0 and not (t.queue_name or t.priority_class_name or t.node_selector or t.tolerations)
    assert spec.agent.provider == "builtin" and spec.data.world is not None
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert spec.storage.claim_name == claim["metadata"]["name"] and "storageClassName" not in claim["spec"]
    assert {d["kind"] for d in docs} == {"Evolution", "PersistentVolumeClaim"}
    assert all("namespace" not in d["metadata"] for d in docs)  # applied with -n, as the README says


def test_refused_calls_are_found_and_timestamps_are_not():
    from cambrian.testing.deployed import refused_calls

    log = ("2026-11-30 19:44:54,403 INFO kopf.objects: Handler 'training_pod_event' succeeded.\n"
           "2026-11-30 19:44:55,001 ERROR kopf: APIForbiddenError('jobs.batch is forbidden', {'code': 403})\n"
           "2026-11-30 19:44:56,403 WARNING cambrian: HTTP response status: (403)\n")
    assert [ln[20:23] for ln in refused_calls([log])] == ["001", "403"]
