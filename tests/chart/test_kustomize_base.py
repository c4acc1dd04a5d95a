"""manifests/base: the kustomize install for users without Helm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "manifests" / "base"


def test_base_is_the_charts_default_rendering(helm):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-manifests-base.py"), "--check"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "CAMBRIAN_HELM": helm})
    assert proc.returncode == 0, ("manifests/base differs from the chart; run scripts/render-manifests-base.py\n"
                                  + proc.stdout + proc.stderr)


def crd_names() -> set[str]:
    return {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (ROOT / "crds").glob("*.yaml")}


def kustomize(kubectl: str, path: Path) -> list[dict]:
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def built(kubectl) -> list[dict]:
    """`kubectl kustomize manifests/base`, in the repository as a user runs it."""
    return kustomize(kubectl, BASE)


def test_base_holds_no_crds(built):
    """`kubectl delete -k manifests/base` deletes exactly what the base builds: with the CRDs in it,
    uninstalling the operator deleted every Evolution, Hypothesis and Rollout in the cluster."""
    assert [d["metadata"]["name"] for d in built if d["kind"] == "CustomResourceDefinition"] == []


def test_crds_kustomization_builds_exactly_the_crds(kubectl):
    """`kubectl apply -k manifests/crds`: the CRDs and nothing else."""
    docs = kustomize(kubectl, ROOT / "manifests" / "crds")
    assert {d["kind"] for d in docs} == {"CustomResourceDefinition"}
    assert {d["metadata"]["name"] for d in docs} == crd_names()


def test_kustomize_builds_namespace_and_workloads(built):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in built}
    assert {("Namespace", "cambrian"), ("Deployment", "cambrian-operator"),
            ("ClusterRole", "cambrian-operator"), ("NetworkPolicy", "cambrian-trainer-isolation"),
            ("NetworkPolicy", "cambrian-trainer-isolation-1")} <= kinds
    (ns,) = [d for d in built if d["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for d in built:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace") == "cambrian", f'{d["kind"]}/{d["metadata"]["name"]}'
    (binding,) = [d for d in built if d["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"][0]["namespace"] == "cambrian"


def test_base_workloads_are_restricted(built):
    for d in built:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
