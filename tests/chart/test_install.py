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


def install_peering_crds(cluster) -> None:
    """`--skip-crds` leaves CRDs to the user (`kubectl apply -f crds/`): the Cambrian CRDs are checked on
    their own below, but the default 2-replica install needs kopf's peering kinds to exist."""
    for crd in sorted((ROOT / "crds").glob("*kopfpeerings.kopf.dev.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd), timeout=60)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev", timeout=90)


@pytest.fixture(scope="module")
def release(cluster):
    """One install for the module, in its own namespace with Pod Security "restricted" enforced."""
    ns = f"t-chart-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    name = f"cambrian-{ns}"  # unique: the ClusterRole and its binding are cluster-scoped
    install_peering_crds(cluster)
    # CRDs are checked on their own (test_chart_crds_are_accepted): a bad CRD must not hide the rest.
    out = cluster.helm("install", name, str(CHART), "--namespace", ns, "--skip-crds",
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


@pytest.mark.parametrize("source", [("-f", "charts/cambrian/crds"), ("-f", "crds"), ("-k", "manifests/crds")])
def test_crds_are_accepted_as_users_apply_them(cluster, source):
    """The API server's own validation of the CRDs (structural schema, CEL rules compile), applied
    the three ways the install documents: Helm's copy, `kubectl apply -f crds/` (the command in
    manifests/examples, which failed on a kustomization.yaml there) and `kubectl apply -k manifests/crds`."""
    flag, path = source
    out = cluster.kubectl("apply", "--dry-run=server", flag, str(ROOT / path), check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("customresourcedefinition.apiextensions.k8s.io/") == len(list((ROOT / "crds").glob("*.yaml"))), out.stdout


def can_i(cluster, ns: str, user: str, verb: str, group: str, resource: str, subresource: str = "",
          name: str = "") -> bool:
    """A SubjectAccessReview: works for resources whose CRD is not installed, unlike `kubectl auth can-i`."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
        "resourceAttributes": {"namespace": ns, "verb": verb, "group": group, "resource": resource,
                               "subresource": subresource, "name": name}}}
    out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
    return bool(json.loads(out.stdout)["status"].get("allowed"))


@pytest.mark.parametrize("verb, resource, allowed", [
    ("create", "batch/jobs", True),
    ("delete", "batch/jobs", True),
    ("patch", "batch/jobs", False),
    ("create", "apps/deployments", True),
    ("patch", "apps/deployments", False),
    ("update", "apps/deployments", True),
    ("patch", "services", True),
    ("update", "services", False),
    ("watch", "pods", True),
    ("create", "pods", False),
    ("delete", "pods", False),
    ("get", "pods/log", False),
    ("watch", "cambrian.dev/evolutions", True),
    ("create", "cambrian.dev/hypotheses", True),
    ("patch", "cambrian.dev/rollouts", True),
    ("patch", "cambrian.dev/evolutions/status", True),
    ("update", "cambrian.dev/evolutions/status", False),
    ("create", "cambrian.dev/evolutions", False),
    ("delete", "cambrian.dev/evolutions", False),
    ("delete", "cambrian.dev/hypotheses", False),
    ("get", "secrets", False),
    ("list", "secrets", False),
    ("create", "events", True),
    ("update", "configmaps", True),
    ("list", "configmaps", False),
    ("create", "coordination.k8s.io/leases", False),
    ("patch", "gateway.networking.k8s.io/httproutes", False),
    ("create", "serviceaccounts", False),
    ("create", "rbac.authorization.k8s.io/rolebindings", False),
])
def test_operator_service_account_permissions(cluster, release, verb, resource, allowed):
    ns, name = release
    parts = resource.split("/")
    group = parts.pop(0) if "." in parts[0] or parts[0] in ("batch", "apps") else ""
    resource, subresource = parts[0], (parts[1] if len(parts) > 1 else "")
    user = f"system:serviceaccount:{ns}:{name}-operator"
    assert can_i(cluster, ns, user, verb, group, resource, subresource) is allowed, (verb, group, resource, subresource)


def test_the_review_itself_discriminates(cluster, release):
    """Guard against a review that always says no (or yes): a stranger gets nothing."""
    ns, _ = release
    assert not can_i(cluster, ns, f"system:serviceaccount:{ns}:default", "create", "batch", "jobs")


def test_notes_commands_work_from_another_namespace(cluster):
    """The commands `helm install` prints (NOTES), run as printed from the kubeconfig's own namespace:
    the Gemini key's `kubectl create secret` and `helm upgrade` (which, without -n, looked for the
    release in the wrong namespace and failed), then the operator picks the key up."""
    import shlex

    ns = f"t-notes-{uuid.uuid4().hex[:8]}"
    name = f"cambrian-{ns}"  # holds the chart name: resources are named <release>-...
    cluster.kubectl("create", "namespace", ns)
    install_peering_crds(cluster)
    try:
        out = cluster.helm("install", name, str(CHART), "--namespace", ns, "--skip-crds", check=False, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        notes = cluster.helm("get", "notes", name, "--namespace", ns).stdout
        lines = [ln.strip() for ln in notes.splitlines()]
        secret = next(ln for ln in lines if ln.startswith("kubectl") and "create secret" in ln)
        upgrade = next(ln for ln in lines if ln.startswith("helm upgrade") and "gemini" in ln)
        status = next(ln for ln in lines if "rollout status" in ln)
        for line in (secret, upgrade):
            args = shlex.split(line.replace("=...", "=not-a-real-key"))
            args = [str(CHART) if a == "charts/cambrian" else a for a in args]
            run = cluster.helm if args[0] == "helm" else cluster.kubectl
            result = run(*args[1:], check=False, timeout=120)
            assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
        # the Deployment the status command names exists where it looks
        target = shlex.split(status)[1:]
        target[target.index("rollout"):target.index("rollout") + 2] = ["get"]
        assert cluster.kubectl(*target, check=False).returncode == 0, status
        dep = cluster.get_json("deployment", f"{name}-operator", "-n", ns)
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GEMINI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "gemini"
    finally:
        cluster.helm("uninstall", name, "--namespace", ns, check=False, timeout=120)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_kubectl_explain_describes_every_field(cluster):
    """What `kubectl explain` reads: the OpenAPI v3 the API server publishes for the installed CRDs.
    Every field of every kind has a description there (only 37 of 100 Evolution spec fields had one)."""
    out = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"), check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    names = [f"crd/{p.name.removesuffix('.yaml')}" for p in sorted((ROOT / "crds").glob("*.yaml"))]
    cluster.kubectl("wait", "--for=condition=Established", *names, "--timeout=60s", timeout=90)

    def published() -> dict:
        doc = json.loads(cluster.kubectl("get", "--raw", "/openapi/v3/apis/cambrian.dev/v1alpha1", timeout=60).stdout)
        return doc["components"]["schemas"]

    cluster.wait_for("the CRDs' OpenAPI", lambda: "dev.cambrian.v1alpha1.Evolution" in published(), timeout=60)
    schemas = published()

    def bare(node: dict, path: str) -> list[str]:
        out = []
        for name, sub in node.get("properties", {}).items():
            if not sub.get("description", "").strip():
                out.append(f"{path}.{name}")
            out += bare(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                out += bare(node[key], path)
        return out

    for kind in ("Evolution", "Hypothesis", "Rollout"):
        schema = schemas[f"dev.cambrian.v1alpha1.{kind}"]
        assert schema.get("description"), kind
        assert not bare(schema, kind), f"{kind}: kubectl explain shows no description for {bare(schema, kind)}"
    explained = cluster.kubectl("explain", "evolution.spec.agent.proposalsPerWakeup").stdout
    assert "per persona" in explained, explained
