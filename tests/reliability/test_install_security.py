"""Install security: what the operator's service account may do (least privilege), restricted pods, and
secrets that never reach a log.

* RBAC: the chart is rendered with helm, the rules bound to the operator's ServiceAccount are collected
  and evaluated (here, by a small RBAC evaluator); on the real control plane the rendered RBAC is applied
  and `kubectl auth can-i --list --as system:serviceaccount:NS:SA` must agree: no secrets, no
  wildcards, no pods/exec|attach|portforward, no RBAC or impersonation, no token minting.
* Pods: every workload of the chart and every pod the operator creates (training Jobs, serving arms,
  the router) run as non-root, without privilege escalation, with a read-only root filesystem (the
  training container writes only to its mounted volumes), all capabilities dropped.
* Secrets never logged: a whole `cambrian evolve` run, the real CLI with the Gemini provider answered by
  recorded responses through the real google-genai client, with a unique fake GEMINI_API_KEY; every file
  it wrote and everything it printed is searched for the key.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _conftest(path: Path):
    """A conftest module by its path: `from conftest import` resolves to whichever conftest was
    imported first (tests/reliability/redteam has one too)."""
    spec = importlib.util.spec_from_file_location("_cambrian_reliability_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


AGENTS = _conftest(ROOT / "tests" / "reliability" / "conftest.py").AGENTS  # the agents suite's helpers
NS, SA = "cambrian", "cambrian-operator"


def _helm() -> str:
    helm = os.environ.get("CAMBRIAN_HELM")
    if helm:
        return helm
    from cambrian.testing.cluster import find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir and os.access(bin_dir / "helm", os.X_OK):
        return str(bin_dir / "helm")
    found = shutil.which("helm")
    if not found:
        pytest.skip("helm not found: run scripts/build-test-cluster.sh or set CAMBRIAN_HELM")
    return found


def render(*sets: str) -> list[dict]:
    args = [_helm(), "template", "cambrian", str(ROOT / "charts" / "cambrian"), "--namespace", NS,
            "--kube-version", "1.33.0"]
    for s in sets:
        args += ["-f", str(ROOT / s)] if s.endswith(".yaml") else ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def effective_rules(docs: list[dict], sa: str = SA, ns: str = NS) -> list[tuple[str, str, str, str | None]]:
    """(apiGroup, resource, verb, namespace or None for cluster-wide) granted to the ServiceAccount."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("ClusterRole", "Role")}
    out = []
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == ns
                   for s in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        role = roles.get((ref["kind"], None if ref["kind"] == "ClusterRole" else b["metadata"].get("namespace"),
                          ref["name"]))
        assert role is not None, f"binding {b['metadata']['name']} points at a missing {ref['kind']} {ref['name']}"
        scope = None if b["kind"] == "ClusterRoleBinding" else b["metadata"].get("namespace")
        for rule in role.get("rules") or []:
            assert not rule.get("nonResourceURLs"), rule
            for g in rule.get("apiGroups", [""]):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        out.append((g, r, v, scope))
    return out


FORBIDDEN = [
    ("", "secrets", {"get", "list", "watch", "create", "update", "patch", "delete"}),
    ("", "pods/exec", {"create", "get"}), ("", "pods/attach", {"create", "get"}),
    ("", "pods/portforward", {"create", "get"}), ("", "pods/proxy", {"create", "get"}),
    ("", "nodes/proxy", {"get", "create"}), ("", "serviceaccounts/token", {"create"}),
    ("", "serviceaccounts", {"impersonate", "create", "update", "patch"}), ("", "users", {"impersonate"}),
    ("rbac.authorization.k8s.io", "clusterroles", {"create", "update", "patch", "escalate", "bind"}),
    ("rbac.authorization.k8s.io", "roles", {"create", "update", "patch", "escalate", "bind"}),
    ("rbac.authorization.k8s.io", "clusterrolebindings", {"create", "update", "patch"}),
    ("rbac.authorization.k8s.io", "rolebindings", {"create", "update", "patch"}),
    ("apiextensions.k8s.io", "customresourcedefinitions", {"create", "update", "patch", "delete"}),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", {"create", "update", "patch", "delete"}),
    ("certificates.k8s.io", "certificatesigningrequests/approval", {"update", "patch"}),
]


def check_least_privilege(rules) -> list[str]:
    problems = []
    for g, r, v, scope in rules:
        if "*" in (g, r, v):
            problems.append(f"wildcard in {g or 'core'}/{r}: {v}")
        for fg, fr, verbs in FORBIDDEN:
            if g == fg and r == fr and v in verbs:
                problems.append(f"may {v} {fg or 'core'}/{fr}" + (f" in {scope}" if scope else " cluster-wide"))
    return problems


@pytest.mark.parametrize("sets", [(), ("operator.watchNamespaces={team-a,team-b}",),
                                  ("tests/chart/values-all-on.yaml",)],
                         ids=["defaults", "watched-namespaces", "everything-enabled"])
def test_operator_service_account_has_least_privilege(sets):
    docs = render(*sets)
    rules = effective_rules(docs)
    assert rules, "nothing is bound to the operator's service account"
    assert not check_least_privilege(rules), check_least_privilege(rules)
    # what it can do is what the operator uses: its own CRs, Jobs, Deployments, Services, ConfigMaps, events,
    # a training gang's NetworkPolicy, and reads of the prerequisites it names when they are missing
    # (PriorityClasses, Kueue LocalQueues)
    groups = {g for g, *_ in rules}
    assert groups <= {"cambrian.dev", "batch", "apps", "", "events.k8s.io", "gateway.networking.k8s.io",
                      "coordination.k8s.io", "kopf.dev", "apiextensions.k8s.io", "monitoring.coreos.com",
                      "kueue.x-k8s.io", "scheduling.k8s.io", "networking.k8s.io"}, groups
    assert {(r, v) for g, r, v, _ in rules if g == "networking.k8s.io"} <= {("networkpolicies", "create"),
                                                                           ("networkpolicies", "delete")}
    assert {v for g, r, v, _ in rules if g in ("scheduling.k8s.io", "kueue.x-k8s.io")} <= {"get"}
    pod_verbs = {v for g, r, v, _ in rules if g == "" and r == "pods"}
    assert pod_verbs <= {"get", "list", "watch"}, pod_verbs  # it never creates bare pods
    crd_verbs = {v for g, r, v, _ in rules if r == "customresourcedefinitions"}
    assert crd_verbs <= {"get", "list", "watch"}


def test_the_evaluator_catches_what_it_must():
    """The RBAC evaluator is not vacuous: a role with secrets, exec and a wildcard is flagged."""
    bad = [{"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
        {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["list"]}]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "x"}, "roleRef": {"kind": "ClusterRole", "name": "x"},
         "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}]}]
    assert len(check_least_privilege(effective_rules(bad))) == 3


# ---- pods ----------------------------------------------------------------------------------------------

def restricted_problems(pod: dict, where: str, writable_root_ok: bool = False) -> list[str]:
    out = []
    psc = pod.get("securityContext") or {}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext") or {}
        name = f"{where}/{c['name']}"
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) or
                (sc.get("runAsUser", psc.get("runAsUser")) not in (None, 0))):
            out.append(f"{name}: may run as root")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: privilege escalation not disabled")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            out.append(f"{name}: capabilities not dropped")
        if not writable_root_ok and sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: writable root filesystem")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: no seccomp profile")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        out.append(f"{where}: host namespaces")
    if any("hostPath" in v for v in pod.get("volumes", [])):
        out.append(f"{where}: hostPath volume")
    return out


def test_every_chart_workload_is_restricted():
    docs = render()
    problems = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            problems += restricted_problems(d["spec"]["template"]["spec"], f"{d['kind']}/{d['metadata']['name']}")
    assert not problems, problems
    ns = [d for d in docs if d["kind"] == "Namespace"]
    for d in ns:  # if the chart makes a namespace, it enforces the restricted Pod Security Standard
        assert d["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted"


def test_every_pod_the_operator_creates_is_restricted():
    from cambrian.operator.platform import kubernetes as K
    from cambrian.operator.reconcile.actions import (ArmWeight, CreateTrainingJob, DeployArm, Owner, SetWeights,
                                                     UpdateChampion)

    owner = Owner("Hypothesis", "h", "uid", NS)
    job = K.training_job(CreateTrainingJob(name="h-train-1", owner=owner, hypothesis="h", attempt=1, baseline={},
                                           delta={"component": "optimizer", "patch": {"lr": 0.1}},
                                           training={"image": "t:1"}, data={"world": {"users": 50, "days": 3}}))
    ro = Owner("Rollout", "r", "uid-r", NS)
    dep, _svc = K.arm_manifests(DeployArm("r-arm-c", ro, "r", "control", "pvc://b/x", {"image": "s:1"}, "bundles"))
    router = [m for m in K.router_manifests(SetWeights(ro, "r", "salt", (ArmWeight("control", "r-arm-c", 100),),
                                                       {"image": "s:1"}), NS) if m["kind"] == "Deployment"]
    champion, _svc = K.champion_manifests(UpdateChampion(Owner("Evolution", "e", "uid-e", NS), "e-champion", "baseline",
                                                          "pvc://b/x", None, None, "r1", {"image": "s:1"}))
    pods = [("Job/training", job["spec"]["template"]["spec"])]
    pods += [(f"Deployment/{d['metadata']['name']}", d["spec"]["template"]["spec"]) for d in [dep, *router, champion]]
    problems = []
    for where, pod in pods:
        problems += restricted_problems(pod, where)
    assert not problems, problems


# ---- secrets never logged ------------------------------------------------------------------------------

FAKE_KEY = "AIzaSyFAKE-reliability-7c41e9d2b8a6f035"


def _scan(paths: list[Path], needle: str) -> list[str]:
    hits = []
    raw = needle.encode()
    for base in paths:
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        for f in files:
            try:
                if raw in f.read_bytes():
                    hits.append(str(f))
            except OSError:
                pass
    return hits


def test_a_full_evolve_run_never_writes_the_api_key(tmp_path, tiny_world, fake_trainer):
    # in the order the personas are asked (the default: reward, architecture, optimizer)
    fixtures = ["reward_valid.json", "architecture_hostile.json", "optimizer_valid.json", "malformed.json",
                "repair_architecture.json"]
    server = AGENTS.GeminiReplay([AGENTS.load_fixture(n) for n in fixtures])  # then HTTP 500s: error paths too
    try:
        run = tmp_path / "run"
        # the old settings format, run as the equivalent Evolution on the LocalDriver (issue 12)
        cfg = {"data_dir": str(tiny_world), "run_dir": str(run), "workers": 2,
               "train_command": fake_trainer, "limits": {"wall_seconds": 10, "rss_mb": 300},
               "noise": {"baseline_seeds": 2, "confirm_seeds": 1}, "budgets": {"max_evaluations": 8},
               "quotas": {"explore": 2, "exploit": 1, "innovate": 2},
               "provider": {"kind": "gemini", "base_url": server.url}}
        (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "GEMINI_API_KEY": FAKE_KEY, "FAKE_DUMP_ENV": "1", "CAMBRIAN_LOG_LEVEL": "DEBUG"}
        out = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "--config", str(tmp_path / "evolve.yaml"),
                              "--json"], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        (tmp_path / "stdout.txt").write_text(out.stdout)
        (tmp_path / "stderr.txt").write_text(out.stderr)
        result = json.loads(out.stdout)
        # the replayed answers run out before the budget does (it keeps a confirmation seed for the last proposal):
        # then every wake-up gets HTTP 500, and a run given up on exits 1 and names the Evolution
        assert (out.returncode, result["stalled"]) in ((0, []), (1, ["evolve"])), out.stderr[-3000:]
        assert result["phases"]["Evolution"]["evolve"] in ("Running", "BudgetExhausted"), result
        # the key was really in use: every request to the (recorded) Gemini API carried it
        assert server.requests and all(r["key"] == FAKE_KEY for r in server.requests)
        hits = _scan([tmp_path], FAKE_KEY)
        assert not hits, f"the API key was written to: {hits}"
        # the candidates' environment dumps exist (FAKE_DUMP_ENV) and hold no key either
        dumps = list(run.rglob("env.json"))
        assert dumps and all("GEMINI" not in json.loads(p.read_text())["env"] for p in dumps)
        events = (run / "events.jsonl").read_text()
        assert '"Rejected"' in events or '"Failed"' in events  # the error paths ran too
    finally:
        server.close()


@pytest.mark.slow
def test_builtin_evolve_with_the_real_trainer_never_writes_the_api_key(tmp_path, tiny_world):
    run = tmp_path / "run"
    cfg = {"data_dir": str(tiny_world), "run_dir": str(run), "workers": 1, "budgets": {"max_evaluations": 3},
           "personas": ["optimizer"], "quotas": {"explore": 1, "exploit": 0, "innovate": 0},
           "baseline_overrides": {"training": {"epochs": 1, "device": "cpu"}},
           "limits": {"wall_seconds": 300, "threads": 1}, "noise": {"baseline_seeds": 2}}
    (tmp_path / "evolve.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "GEMINI_API_KEY": FAKE_KEY, "OPENAI_API_KEY": FAKE_KEY + "-openai"}
    out = subprocess.run([sys.executable, "-m", "cambrian.cli", "evolve", "--config", str(tmp_path / "evolve.yaml")],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    (tmp_path / "stdout.txt").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(run.rglob("metrics.json")), "nothing was trained"
    assert not _scan([tmp_path], FAKE_KEY)


# ---- on the real control plane ---------------------------------------------------------------------------

@pytest.mark.cluster
def test_kubectl_auth_can_i_list_agrees(cluster, cluster_namespace):
    ns = cluster_namespace
    docs = [d for d in render(f"operator.watchNamespaces={{{ns}}}") if d["kind"] in
            ("ServiceAccount", "ClusterRole", "Role", "RoleBinding", "ClusterRoleBinding")]
    for d in docs:  # rename the cluster-scoped objects so parallel tests do not collide
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            d["metadata"]["name"] += f"-{ns}"
        if d.get("roleRef", {}).get("kind") == "ClusterRole":
            d["roleRef"]["name"] += f"-{ns}"
    cluster.kubectl("create", "namespace", NS, check=False)
    cluster.apply(docs)
    who = f"system:serviceaccount:{NS}:{SA}"
    out = cluster.kubectl("auth", "can-i", "--list", "--as", who, "-n", ns).stdout
    lines = [line.split() for line in out.splitlines()[1:] if line.strip()]
    granted = []
    for parts in lines:
        # Resources  Non-Resource URLs  Resource Names  Verbs: the verbs column is the last [..] group
        verbs = out_verbs = parts[-1].strip("[]").split() if parts[-1].startswith("[") else []
        text = " ".join(parts)
        verbs = text[text.rfind("[") + 1:text.rfind("]")].split() if "[" in text else out_verbs
        granted.append((parts[0], verbs))
    for resource, verbs in granted:
        assert resource != "*.*" or set(verbs) <= {"create"} and False, (resource, verbs)
        assert not resource.startswith("secrets"), (resource, verbs)
        assert not resource.startswith(("pods/exec", "pods/attach", "pods/portforward")), (resource, verbs)
        assert "*" not in verbs or resource.startswith("selfsubject"), (resource, verbs)
    for verb, res in (("get", "secrets"), ("list", "secrets"), ("create", "pods/exec"), ("create", "pods"),
                      ("impersonate", "serviceaccounts"), ("create", "rolebindings"), ("escalate", "roles")):
        r = cluster.kubectl("auth", "can-i", verb, res, "--as", who, "-n", ns, check=False)
        assert r.stdout.strip() == "no", f"{who} can {verb} {res}"
    assert cluster.kubectl("auth", "can-i", "create", "jobs.batch", "--as", who, "-n", ns,
                           check=False).stdout.strip() == "yes"
    assert cluster.kubectl("auth", "can-i", "create", "jobs.batch", "--as", who, "-n", "kube-system",
                           check=False).stdout.strip() == "no"  # only in the watched namespace
