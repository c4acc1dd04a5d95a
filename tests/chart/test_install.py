"""`helm install` into the real test control plane: the API server accepts every object, Pod
Security admission ("restricted") admits the operator pod, and the operator's
ServiceAccount can do exactly what the chart grants."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cambrian"

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def release(cluster):
    """One install for the module, in its own namespace with Pod Security "restricted" enforced."""
    ns = f"t-chart-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    name = f"cambrian-{ns}"  # unique: the ClusterRole and its binding are cluster-scoped
    out = cluster.helm("install", name, str(CHART), "--namespace", ns,
                       "--set", "agents.gemini.existingSecret=gemini", check=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    yield ns, name
    cluster.helm("uninstall", name, "--namespace", ns, check=False, timeout=120)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_install_is_admitted_under_restricted_pod_security(cluster, release):
    ns, name = release
    for component in ("operator",):
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component={component}"

        def pod_created() -> bool:
            return bool(cluster.get_json("pods", "-n", ns, "-l", selector)["items"])

        try:
            cluster.wait_for(f"{component} pod", pod_created, timeout=60)
        except Exception:  # show why the ReplicaSet could not create it (e.g. a PodSecurity violation)
            events = cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
            messages = [e.get("message", "") for e in json.loads(events)["items"]]
            pytest.fail(f"no {component} pod was created: {messages}")
    for crd in ("evolutions.cambrian.dev", "hypotheses.cambrian.dev", "rollouts.cambrian.dev"):
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, crd


@pytest.mark.parametrize("verb, resource, allowed", [
    ("create", "jobs.batch", True),
    ("delete", "jobs.batch", True),
    ("patch", "jobs.batch", False),
    ("create", "deployments.apps", True),
    ("patch", "deployments.apps", False),
    ("watch", "pods", True),
    ("create", "pods", False),
    ("delete", "pods", False),
    ("get", "pods:log", False),
    ("create", "hypotheses.cambrian.dev", True),
    ("patch", "evolutions.cambrian.dev:status", True),
    ("update", "evolutions.cambrian.dev:status", False),
    ("create", "evolutions.cambrian.dev", False),
    ("delete", "evolutions.cambrian.dev", False),
    ("get", "secrets", False),
    ("list", "secrets", False),
    ("create", "events", True),
    ("update", "configmaps", True),
    ("list", "configmaps", False),
    ("create", "leases.coordination.k8s.io", False),
    ("patch", "httproutes.gateway.networking.k8s.io", False),
    ("create", "serviceaccounts", False),
    ("create", "rolebindings.rbac.authorization.k8s.io", False),
])
def test_operator_service_account_permissions(cluster, release, verb, resource, allowed):
    ns, name = release
    resource, _, subresource = resource.partition(":")
    extra = [f"--subresource={subresource}"] if subresource else []
    out = cluster.kubectl("auth", "can-i", verb, resource, *extra, "-n", ns,
                          f"--as=system:serviceaccount:{ns}:{name}-operator", check=False)
    assert out.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, subresource, out.stdout, out.stderr)
