"""charts/cambrian: lint, rendering, values schema, and the shape of what it installs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cambrian"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}


def test_lint_strict_defaults(render):
    proc = render.lint()
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_strict_everything_enabled(render):
    proc = render.lint(*render.ALL_ON)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_defaults_render_the_expected_objects(render):
    docs = render.docs()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs
                   if d["metadata"]["labels"].get("app.kubernetes.io/component") != "dashboards")  # test_dashboards
    assert kinds == sorted([
        ("ServiceAccount", "cambrian-operator"),
        ("ClusterRole", "cambrian-operator"),
        ("ClusterRoleBinding", "cambrian-operator"),
        ("ConfigMap", "cambrian-operator"),
        ("Deployment", "cambrian-operator"),
        ("Service", "cambrian-operator-metrics"),
        ("NetworkPolicy", "cambrian-trainer-isolation"),
        ("NetworkPolicy", "cambrian-trainer-isolation-1"),
        ("ClusterKopfPeering", "cambrian-operator"),  # two replicas elect one (test_operator_ha.py)
        ("PodDisruptionBudget", "cambrian-operator"),
    ]), kinds
    # Monitoring objects need the Prometheus Operator's CRDs: off by default.
    assert not render.by_kind(docs, "ServiceMonitor") and not render.by_kind(docs, "PrometheusRule")


def test_operator_deployment(render):
    dep = render.one(render.docs(), "Deployment", "cambrian-operator")
    spec = dep["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "cambrian-operator"
    (container,) = pod["containers"]
    # the flags of `cambrian operator run` (operator/cli.py); no --namespace: every namespace
    assert container["command"] == ["cambrian"]
    assert container["args"] == ["operator", "run", "--liveness", "http://0.0.0.0:8080/healthz",
                                 "--peering", "cambrian-operator"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["health"] == 8080
    assert container["image"] == "ghcr.io/cambrian-dev/cambrian-operator:0.1.0"
    env = {e["name"]: e for e in container["env"]}
    assert env["CAMBRIAN_OPERATOR_CONFIG"]["value"] == "/etc/cambrian/operator.yaml"
    assert env["CAMBRIAN_PROMETHEUS_URL"]["value"].startswith("http://")  # read by --prometheus-url
    assert "GEMINI_API_KEY" not in env  # no key configured -> built-in proposer
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/cambrian"]["readOnly"] is True and "/tmp" in mounts


def test_operator_args_follow_values(render):
    docs = render.docs(*render.ALL_ON)
    args = render.one(docs, "Deployment", "cambrian-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["operator", "run", "--liveness", "http://0.0.0.0:8080/healthz", "--peering", "cambrian-operator",
                    "--namespace", "team-a", "--namespace", "team-b", "--verbose"]
    docs = render.docs("--set", "operator.livenessProbe.enabled=false", "--set-json", 'operator.extraArgs=["--interval","30"]')
    container = render.one(docs, "Deployment", "cambrian-operator")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "run", "--peering", "cambrian-operator", "--interval", "30"]
    assert "livenessProbe" not in container


def test_operator_cli_accepts_the_chart_args(render):
    """The args the chart passes parse with the real `cambrian operator run` command."""
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from cambrian.operator.cli import app

    docs = render.docs(*render.ALL_ON)
    args = render.one(docs, "Deployment", "cambrian-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    command = typer.main.get_command(app)
    run = command.commands["run"] if hasattr(command, "commands") else command
    ctx = run.make_context("run", list(args[2:]))  # parses and validates every option, runs nothing
    assert ctx.params["namespace"] == ["team-a", "team-b"] and ctx.params["peering"] == "cambrian-operator"
    assert ctx.params["liveness"] == "http://0.0.0.0:8080/healthz" and ctx.params["verbose"] is True


def test_image_tag_and_digest(render):
    digest = "sha256:" + "ab" * 32
    docs = render.docs(*render.ALL_ON, "--set", "operator.image.tag=1.2.3", "--set", f"router.image.digest={digest}")
    op = render.one(docs, "Deployment", "cambrian-operator")["spec"]["template"]["spec"]["containers"][0]
    router = render.one(docs, "Deployment", "cambrian-router")["spec"]["template"]["spec"]["containers"][0]
    assert op["image"] == "ghcr.io/cambrian-dev/cambrian-operator:1.2.3"
    assert router["image"] == f"ghcr.io/cambrian-dev/cambrian-serving@{digest}"


def test_router(render):
    assert not render.by_kind(render.docs(), "Deployment")[1:], "the fixed router is off by default"
    docs = render.docs(*render.ALL_ON)
    dep = render.one(docs, "Deployment", "cambrian-router")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["cambrian"]
    assert container["args"] == ["route", "--config", "/etc/cambrian/router/router.yaml",
                                 "--host", "0.0.0.0", "--port", "8080",
                                 "--admin-host", "0.0.0.0", "--admin-port", "9090", "--read-only-config"]
    assert pod["automountServiceAccountToken"] is False
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert config["configMap"]["name"] == "cambrian-router"
    svc = render.one(docs, "Service", "cambrian-router")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # users reach the serving port alone: /metrics and GET /weights are on the pods' "metrics" port
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "metrics": 9090}


def test_router_config_loads_in_the_real_router(render):
    from cambrian.online.router import RouterConfig

    cm = render.one(render.docs(*render.ALL_ON), "ConfigMap", "cambrian-router")
    cfg = RouterConfig.from_dict(yaml.safe_load(cm["data"]["router.yaml"]))
    assert cfg.control == "holdout" and cfg.treatments == ("champion",)
    assert dict(cfg.weights) == {"holdout": 5, "champion": 95} and cfg.collector.startswith("http://")


@pytest.mark.parametrize("setting, message", [
    ("router.config.arms=[]", "router.config.arms: the router needs at least two arms"),
    ("router.config.arms[0].control=false", "exactly one arm needs control: true (found 0)"),
    ("router.config.experiment=", "router.config.experiment"),
])
def test_router_config_errors_name_the_field(render, setting, message):
    proc = render.run(*render.ALL_ON, "--set-json" if setting.endswith("[]") else "--set", setting)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            spec = d["spec"]
            if d["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            out.append((f'{d["kind"]}/{d["metadata"]["name"]}', spec["template"]["spec"] if d["kind"] != "Pod" else spec))
    return out


def _operator_config(docs: list[dict]) -> dict:
    from_chart = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-operator"))
    return yaml.safe_load(from_chart["data"]["operator.yaml"])


def _assert_restricted(where: str, pod_sc: dict, containers: list[dict]) -> None:
    assert pod_sc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp"
    assert containers, f"{where}: no containers"
    for c in containers:
        sc = c["securityContext"] if "securityContext" in c else c
        name = f'{where}/{c.get("name", "container")}'
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot"
        assert (sc.get("runAsUser") or pod_sc.get("runAsUser") or 0) > 0, f"{name}: runs as uid 0"
        assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
        assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
        assert sc.get("privileged", False) is False, f"{name}: privileged"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: capabilities.drop ALL"
        assert not set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}, f"{name}: added caps"
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccomp"


@pytest.mark.parametrize("everything", [False, True], ids=["defaults", "all-on"])
def test_every_workload_is_restricted(render, everything):
    docs = render.docs(*(render.ALL_ON if everything else ()))
    pods = _pod_specs(docs)
    assert {w for w, _ in pods} >= ({"Deployment/cambrian-operator", "Deployment/cambrian-router"} if everything
                                    else {"Deployment/cambrian-operator"})
    for where, pod in pods:
        _assert_restricted(where, pod.get("securityContext", {}),
                           pod["containers"] + pod.get("initContainers", []))
        assert pod.get("hostNetwork", False) is False and pod.get("hostPID", False) is False, where
    # The pods the operator creates get the same settings through its ConfigMap.
    cfg = _operator_config(docs)
    for part in ("training", "serving"):
        _assert_restricted(f"operator.yaml/{part}", cfg[part]["podSecurityContext"], [cfg[part]["securityContext"]])
        assert cfg[part]["automountServiceAccountToken"] is False, part


def test_training_pod_template_in_operator_config(render):
    docs = render.docs()
    cfg = _operator_config(docs)
    training = cfg["training"]
    assert training["labels"]["cambrian.dev/role"] == "trainer"
    assert training["image"] == "ghcr.io/cambrian-dev/cambrian-trainer:0.1.0"
    assert training["resources"]["limits"]["memory"] == "16Gi"  # the GPU is the Evolution's (spec.training.gpu)
    assert training["activeDeadlineSeconds"] > 0 and training["enableServiceLinks"] is False
    assert cfg["serving"]["labels"]["cambrian.dev/role"] == "serving"
    # A trainer NetworkPolicy selects the label the pod template asks the operator to add.
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in render.by_kind(docs, "NetworkPolicy")]
    assert {"cambrian.dev/role": training["labels"]["cambrian.dev/role"]} in selectors
    # Changing the config rolls the operator pod.
    changed = render.docs("--set", "training.activeDeadlineSeconds=60")
    ann = lambda ds: render.one(ds, "Deployment", "cambrian-operator")["spec"]["template"]["metadata"]["annotations"]
    assert ann(docs)["checksum/config"] != ann(changed)["checksum/config"]


@pytest.mark.parametrize("setting, field", [
    ("router.replicaCount=abc", "/router/replicaCount"),
    ("operator.metricsPort=http", "/operator/metricsPort"),
    ("operator.metricsPort=70000", "/operator/metricsPort"),
    ("training.activeDeadlineSeconds=soon", "/training/activeDeadlineSeconds"),
    ("metrics.prometheusRule.guardrailBreachFor=often", "/metrics/prometheusRule/guardrailBreachFor"),
    ("operator.image.pullPolicy=Sometimes", "/operator/image/pullPolicy"),
    ("operator.logLevel=chatty", "/operator/logLevel"),
    ("router.config.arms[0].url=not-a-url", "/router/config/arms/0/url"),
    ("networkPolicy.trainerSelectors=null", "trainerSelectors"),
    ("operator.watchNamespaces=Not_A_Namespace", "/operator/watchNamespaces"),
    ("agents.gemini.apiKey=AIzaLiteralKey", "/agents/gemini"),
    ("operator.typoKey=1", "/operator"),
    ("training.automountServiceAccountToken=true", "/training/automountServiceAccountToken"),
    ("containerSecurityContext.readOnlyRootFilesystem=false", "/containerSecurityContext/readOnlyRootFilesystem"),
    ("containerSecurityContext.allowPrivilegeEscalation=true", "/containerSecurityContext/allowPrivilegeEscalation"),
    ("podSecurityContext.runAsNonRoot=false", "/podSecurityContext/runAsNonRoot"),
    ("containerSecurityContext.capabilities.drop={NET_RAW}", "/containerSecurityContext/capabilities/drop"),
])
def test_schema_rejects_bad_values(render, setting, field):
    proc = render.run("--set", setting)
    assert proc.returncode != 0, f"--set {setting} was accepted"
    # helm >= 3.18 names the field as a JSON pointer, older helm 3 with dots
    assert field in proc.stderr or field.strip("/").replace("/", ".") in proc.stderr, proc.stderr


def test_lint_fails_on_a_wrong_type(render):
    proc = render.lint("--set-string", "metrics.serviceMonitor.enabled=yes")
    assert proc.returncode != 0
    assert "serviceMonitor/enabled" in proc.stdout + proc.stderr or "serviceMonitor.enabled" in proc.stdout + proc.stderr


def test_every_default_value_is_described_by_the_schema():
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def resolve(node):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        return node

    def walk(node, value, path):
        node = resolve(node)
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(node["properties"][key], sub, f"{path}.{key}")
        else:
            assert node.get("type") or node.get("const") is not None or "oneOf" in node, f"{path}: untyped in schema"

    walk(schema, values, "values")


def test_gemini_key_comes_only_from_a_secret(render):
    docs = render.docs(*render.ALL_ON)
    assert not render.by_kind(docs, "Secret")
    container = render.one(docs, "Deployment", "cambrian-operator")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["GEMINI_API_KEY"] == {"name": "GEMINI_API_KEY", "valueFrom": {
        "secretKeyRef": {"name": "cambrian-gemini", "key": "GEMINI_API_KEY"}}}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "cambrian-openai"
    custom_key = render.docs("--set", "agents.gemini.existingSecret=s", "--set", "agents.gemini.existingSecretKey=api-key")
    container = render.one(custom_key, "Deployment", "cambrian-operator")["spec"]["template"]["spec"]["containers"][0]
    (gemini,) = [e for e in container["env"] if e["name"] == "GEMINI_API_KEY"]
    assert gemini["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "api-key"}


def test_network_policy_denies_trainer_egress(render):
    policies = render.by_kind(render.docs(), "NetworkPolicy")
    # one per selector: the label the operator sets today, and the one its pod template asks for
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in policies]
    assert len(selectors) == 2 and {"cambrian.dev/role": "trainer"} in selectors
    assert {"app.kubernetes.io/part-of": "cambrian", "app.kubernetes.io/component": "training"} in selectors
    for policy in policies:
        spec = policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        assert spec["egress"] == [] and spec["ingress"] == []

    docs = render.docs(*render.ALL_ON)
    policies = render.by_kind(docs, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["cambrian", "cambrian", "team-a", "team-a",
                                                                    "team-b", "team-b"]
    for p in policies:
        (rule,) = p["spec"]["egress"]  # DNS only
        assert sorted((port["protocol"], port["port"]) for port in rule["ports"]) == [("TCP", 53), ("UDP", 53)]
        assert rule["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert not render.by_kind(render.docs("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


def test_network_policy_selects_the_training_pods_the_operator_creates(render):
    """Build a training Job with the operator's own builder and check a policy selects its pods."""
    from cambrian.operator.platform import kubernetes as k8s
    from cambrian.operator.reconcile.actions import CreateTrainingJob

    job = _example_training_job(k8s, CreateTrainingJob)
    labels = job["spec"]["template"]["metadata"]["labels"]
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in render.by_kind(render.docs(), "NetworkPolicy")]
    assert any(sel.items() <= labels.items() for sel in selectors), (labels, selectors)


def _example_training_job(k8s, action_cls) -> dict:
    from cambrian.operator.reconcile.actions import Owner

    owner = Owner(kind="Hypothesis", name="h1", uid="u1", namespace="team-a")
    try:
        action = action_cls(name="h1-train-1", owner=owner, hypothesis="h1", attempt=1, baseline={},
                            training={"image": "t:1"}, bundle_path="b")
    except TypeError as exc:  # the action's fields changed: say so instead of guessing
        pytest.fail(f"CreateTrainingJob's fields changed; update this example: {exc}")
    return k8s.training_job(action)


def test_monitoring_objects(render):
    docs = render.docs(*render.ALL_ON)
    monitors = {d["metadata"]["name"]: d for d in render.by_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"cambrian-operator"}
    svc = render.one(docs, "Service", "cambrian-operator-metrics")
    assert monitors["cambrian-operator"]["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitors["cambrian-operator"]["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    pod_monitors = {d["metadata"]["name"]: d for d in render.by_kind(docs, "PodMonitor")}
    router, pod_monitor = pod_monitors.pop("cambrian-router"), pod_monitors.pop("cambrian-serving")
    assert not pod_monitors
    # the fixed router's pods on the port its Service does not expose
    assert router["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    router_pod = render.one(docs, "Deployment", "cambrian-router")["spec"]["template"]
    assert router["spec"]["selector"]["matchLabels"].items() <= router_pod["metadata"]["labels"].items()
    selector = pod_monitor["spec"]["selector"]
    assert selector["matchExpressions"] == [{"key": "app.kubernetes.io/component", "operator": "In",
                                             "values": ["serving", "router"]}]
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    (rule,) = render.by_kind(docs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"CambrianGuardrailBreached", "CambrianHypothesisStuck", "CambrianBudgetExhausted",
                      "CambrianOperatorDown"}


def test_pod_monitor_selects_the_arms_and_routers_the_operator_creates(render):
    """Arm and router Deployments built by the operator's own builders match the PodMonitor."""
    from cambrian.operator.platform import kubernetes as k8s

    pod_monitor = render.one(render.docs(*render.ALL_ON), "PodMonitor", "cambrian-serving")
    selector = pod_monitor["spec"]["selector"]
    (expr,) = selector["matchExpressions"]
    for component in expr["values"]:
        labels = {**k8s.PART_OF, "app.kubernetes.io/component": component}
        assert selector["matchLabels"].items() <= labels.items()
    dep = k8s._server_deployment("arm", _owner(), k8s.arm_labels("ro", "a"), {"image": "s:1"}, ["serve"], [], [], 1)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector["matchLabels"].items() <= pod_labels.items() and pod_labels[expr["key"]] in expr["values"]
    port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in port_names


def _owner():
    from cambrian.operator.reconcile.actions import Owner

    return Owner(kind="Rollout", name="ro", uid="u1", namespace="team-a")


def render_notes(render, tmp_path, *args: str, release: str = "cambrian", namespace: str = "cambrian") -> str:
    """NOTES.txt rendered through `tpl` in a scratch copy of the chart (`helm template` skips NOTES)."""
    import shutil

    chart = tmp_path / "cambrian"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        (chart / "files").mkdir()
        shutil.copy(CHART / "templates" / "NOTES.txt", chart / "files" / "notes.txt")
        (chart / "templates" / "zz-notes.yaml").write_text(
            'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
            'data:\n  notes: {{ tpl (.Files.Get "files/notes.txt") . | toJson }}\n')
    docs = render.docs(*args, chart=chart, release=release, namespace=namespace)
    return render.one(docs, "ConfigMap", "notes")["data"]["notes"]


def notes_commands(text: str) -> list[list[str]]:
    import shlex

    return [shlex.split(line) for line in text.splitlines() if line.strip().startswith(("kubectl ", "helm "))]


def test_notes_render(render, tmp_path):
    text = render_notes(render, tmp_path)
    assert "kubectl -n cambrian rollout status deployment/cambrian-operator" in text
    assert "kubectl get evolutions,hypotheses,rollouts" in text  # the operator serves every namespace
    assert "--set agents.gemini.existingSecret=gemini" in text  # how to add a key, without one
    text = render_notes(render, tmp_path, *render.ALL_ON)
    assert "team-a, team-b" in text and "existingSecret=gemini" not in text and "except DNS" in text
    assert "configmap/cambrian-router" in text
    assert "kubectl -n team-a apply -f evolution.yaml" in text  # a namespace the operator serves


def test_notes_commands_name_the_release_namespace(render, tmp_path):
    """Every command NOTES prints works from any current namespace: `helm upgrade` without `-n` looked
    for the release in the wrong namespace and failed. Its --set flags are values the schema accepts."""
    commands = notes_commands(render_notes(render, tmp_path, release="shop", namespace="shop-ns"))
    helm = [c for c in commands if c[0] == "helm"]
    assert len(helm) == 2, commands  # the Gemini key and the monitoring switches
    for cmd in helm:
        assert cmd[:4] == ["helm", "upgrade", "shop", "charts/cambrian"], cmd
        assert cmd[cmd.index("-n") + 1] == "shop-ns" and "--reuse-values" in cmd, cmd
        flags = [a for a in cmd[4:] if a not in ("-n", "shop-ns", "--reuse-values")]
        proc = render.run(*flags, release="shop", namespace="shop-ns")
        assert proc.returncode == 0 and flags, (cmd, proc.stderr)
    for cmd in commands:
        if cmd[0] == "kubectl" and cmd[1] in ("-n", "rollout", "create"):
            assert cmd[1:3] == ["-n", "shop-ns"], cmd  # acts on the release's own objects
