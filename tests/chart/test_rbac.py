"""The operator's RBAC is least-privilege: exact verbs per resource, no wildcards, no Secrets."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# What the operator does with each resource (and nothing else).
EXPECTED = {
    ("cambrian.dev", "evolutions"): {"get", "list", "watch", "patch"},
    ("cambrian.dev", "hypotheses"): {"get", "list", "watch", "create", "patch"},
    ("cambrian.dev", "rollouts"): {"get", "list", "watch", "create", "patch"},
    ("cambrian.dev", "evolutions/status"): {"get", "patch"},
    ("cambrian.dev", "hypotheses/status"): {"get", "patch"},
    ("cambrian.dev", "rollouts/status"): {"get", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},  # watched: operator/indexed.py
    ("", "pods"): {"get", "list", "watch"},
    ("apps", "deployments"): {"get", "list", "create", "update", "delete"},  # update: the champion's rolling switch
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "update", "delete"},
    ("", "events"): {"create"},
    ("scheduling.k8s.io", "priorityclasses"): {"get"},
    ("kueue.x-k8s.io", "localqueues"): {"get"},
    ("networking.k8s.io", "networkpolicies"): {"create", "delete"},  # a multi-worker training gang's own
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},  # leader election (replicas > 1)
}
GATEWAY = {("gateway.networking.k8s.io", "httproutes"): {"get", "patch"}}
# kubernetes client method prefix -> RBAC verb
CLIENT_VERBS = {"create": "create", "replace": "update", "patch": "patch", "delete": "delete", "list": "list",
                "read": "get", "get": "get"}
# the cluster-scoped reads the operator makes (typed client calls without "namespaced")
CLUSTER_SCOPED_CALLS = {"read_priority_class": ("scheduling.k8s.io", "priorityclasses", "get")}
# kubernetes client kind suffix -> (API group, resource)
CLIENT_KINDS = {"config_map": ("", "configmaps"), "pod": ("", "pods"), "service": ("", "services"),
                "event": ("", "events"), "job": ("batch", "jobs"), "deployment": ("apps", "deployments"),
                "network_policy": ("networking.k8s.io", "networkpolicies")}


def grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def all_rules(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f'{d["kind"]}/{d["metadata"]["name"]}', r) for d in docs
            if d["kind"] in ("ClusterRole", "Role") for r in d.get("rules", [])]


@pytest.mark.parametrize("everything", [False, True], ids=["defaults", "all-on"])
def test_no_wildcards_and_no_secrets(render, everything):
    rules = all_rules(render.docs(*(render.ALL_ON if everything else ())))
    assert rules
    for where, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in v for v in rule.get(field, [])), f"{where}: wildcard in {field}: {rule}"
        assert "secrets" not in rule.get("resources", []), f"{where}: grants access to Secrets: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{where}: {rule}"


def test_cluster_role_grants_exactly_what_the_operator_uses(render):
    docs = render.docs()
    (role,) = render.by_kind(docs, "ClusterRole")
    assert grants(role["rules"]) == EXPECTED
    (binding,) = render.by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cambrian-operator", "namespace": "cambrian"}]


def test_gateway_routes_only_when_enabled(render):
    (role,) = render.by_kind(render.docs("--set", "gateway.enabled=true"), "ClusterRole")
    assert grants(role["rules"]) == EXPECTED | GATEWAY


def operator_api_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every kubernetes-client call in operator/ (AST walk).

    Typed calls (`create_namespaced_config_map`) map through CLIENT_KINDS; custom-object calls
    take their group from a string literal or the GROUP constant and their plural from a literal,
    or, when the plural is a variable, stand for every Cambrian plural.
    """
    plurals = [yaml.safe_load(p.read_text())["spec"]["names"]["plural"]
               for p in (ROOT / "crds").glob("*.cambrian.dev.yaml")]  # not kopf's peering CRDs
    calls = set()
    for path in (ROOT / "operator").rglob("*.py"):
        tree = ast.parse(path.read_text())
        call_args = {id(n.func): n.args for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            # methods called directly or passed along (`self._create(self.batch.create_namespaced_job, ...)`)
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr in CLUSTER_SCOPED_CALLS:
                calls.add(CLUSTER_SCOPED_CALLS[node.attr])
                continue
            m = re.fullmatch(r"(create|replace|patch|delete|list|read|get)_namespaced_(\w+?)(_status)?", node.attr)
            if not m:
                continue
            args = call_args.get(id(node), [])
            verb, kind, status = CLIENT_VERBS[m.group(1)], m.group(2), "/status" if m.group(3) else ""
            if kind == "custom_object":
                literals = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                group = next((s for s in literals if "." in s), "cambrian.dev")
                named = [s for s in literals if s != group and "." not in s and not s.startswith("v")]
                for plural in named or (plurals if group == "cambrian.dev" else []):
                    calls.add((group, plural + status, verb))
            elif kind in CLIENT_KINDS:
                group, resource = CLIENT_KINDS[kind]
                calls.add((group, resource + status, verb))
            else:
                raise AssertionError(f"{path}: unknown client call {node.attr}; add it to CLIENT_KINDS")
    return calls


def test_chart_grants_every_api_call_the_operator_makes(render):
    """Reads the operator's code: a call the chart does not allow would fail with 403 in a cluster."""
    calls = operator_api_calls()
    assert ("batch", "jobs", "create") in calls, "the scan found no Job creation: is operator/ there?"
    (role,) = render.by_kind(render.docs("--set", "gateway.enabled=true"), "ClusterRole")
    granted = grants(role["rules"])
    missing = sorted(c for c in calls if c[2] not in granted.get((c[0], c[1]), set()))
    assert not missing, f"the operator calls these without RBAC: {missing}"


def test_chart_grants_list_and_watch_on_what_kopf_watches(render):
    """The indexes and event handlers (operator/handlers.py) watch their resources: without list and
    watch the operator would wait forever for its indexes to fill."""
    import kopf

    import cambrian.operator.handlers  # noqa: F401  (registers the handlers)

    reg = kopf.get_default_registry()
    handlers = [*reg._indexing.get_all_handlers(), *reg._watching.get_all_handlers(),
                *reg._spawning.get_all_handlers(), *reg._changing.get_all_handlers()]
    watched = {(h.selector.group or "", h.selector.any_name) for h in handlers}
    assert ("batch", "jobs") in watched and ("", "pods") in watched
    (role,) = render.by_kind(render.docs(), "ClusterRole")
    granted = grants(role["rules"])
    missing = sorted(w for w in watched if not {"list", "watch"} <= granted.get(w, set()))
    assert not missing, f"kopf watches these without list/watch: {missing}"


def test_configmaps_are_the_only_writable_core_data(render):
    (role,) = render.by_kind(render.docs(), "ClusterRole")
    granted = grants(role["rules"])
    assert granted[("", "configmaps")] == {"get", "create", "update", "delete"}  # no list: cannot browse them
    assert ("", "secrets") not in granted and ("", "serviceaccounts") not in granted
    assert ("coordination.k8s.io", "leases") not in granted  # leader election is kopf's peering object


def test_watched_namespaces_get_role_bindings_not_a_cluster_binding(render):
    docs = render.docs("--set", "operator.watchNamespaces={team-a,team-b}")
    assert not render.by_kind(docs, "ClusterRoleBinding")
    bindings = [b for b in render.by_kind(docs, "RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    container = render.one(docs, "Deployment", "cambrian-operator")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"].count("--namespace") == 2  # kopf then lists per namespace, not cluster-wide


def test_every_crd_is_covered_with_its_status(render):
    """Each Cambrian CRD in crds/ (plural and /status when it has the subresource) appears in the ClusterRole."""
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.cambrian.dev.yaml"))]
    # kopf's peering CRDs: one of the two, by scope (tests/chart/test_operator_ha.py)
    if not crds:
        pytest.skip("crds/ holds no CRDs yet")
    (role,) = render.by_kind(render.docs(), "ClusterRole")
    granted = grants(role["rules"])
    for crd in crds:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        assert {"get", "list", "watch", "patch"} <= granted.get((group, plural), set()), plural
        if any("status" in v.get("subresources", {}) for v in crd["spec"]["versions"]):
            assert "patch" in granted.get((group, f"{plural}/status"), set()), f"{plural}/status"
