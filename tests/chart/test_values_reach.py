"""Every chart value reaches the objects it names.

A table over the leaves of values.yaml: each leaf is set to a distinctive value with `helm template`,
and the value must then appear where the table says, and not appear there with the defaults (so the
check can fail). Values in the operator's ConfigMap are followed one step further: the operator's
own builders (operator/platform/kubernetes.py), given the rendered operator.yaml, must put them into
the training Job, the serving arm and the per-Rollout router they create. A leaf missing from the
table fails test_every_value_has_a_case: a new value must show where it goes, or not exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from cambrian.operator import api
from cambrian.operator.platform import kubernetes as K
from cambrian.operator.reconcile.actions import ArmWeight, CreateTrainingJob, DeployArm, Owner, SetWeights

CHART = Path(__file__).resolve().parents[2] / "charts" / "cambrian"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# --set-json throughout: helm applies every --set after every --set-json, whatever their order.
ROUTER_ON = ("--set-json", "router.enabled=true", "--set-json", 'router.config.experiment="e1"', "--set-json",
             'router.config.arms=[{"name":"a","url":"http://a:80","control":true},{"name":"b","url":"http://b:80"}]')
PRIORITY_ON = ("--set", "prerequisites.priorityClass.create=true")
CLAIM_ON = ("--set", "prerequisites.bundlesClaim.create=true")
KUEUE = ("--api-versions", "kueue.x-k8s.io/v1beta1/LocalQueue")  # as if Kueue were installed
QUEUE_ON = ("--set", "prerequisites.localQueue.create=true")
COLLECTOR_ON = ("--set", "collector.enabled=true")
KEEP = object()  # a pinned value (the schema allows only the default): the default must reach the objects


# --- where things land -----------------------------------------------------------------------------


def obj(kind: str, suffix: str = "") -> Callable[[list[dict]], Any]:
    """The objects of a kind whose name ends with suffix (all of them when the suffix is empty)."""
    return lambda docs: [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


def pod(suffix: str) -> Callable[[list[dict]], Any]:
    return lambda docs: [d["spec"]["template"]["spec"] for d in obj("Deployment", suffix)(docs)]


def container(suffix: str, key: str | None = None) -> Callable[[list[dict]], Any]:
    def get(docs):
        (c,) = [c for p in pod(suffix)(docs) for c in p["containers"]]
        return c if key is None else c.get(key)
    return get


def env(suffix: str, name: str) -> Callable[[list[dict]], Any]:
    return lambda docs: [e for e in container(suffix, "env")(docs) or [] if e["name"] == name]


def _platform(docs: list[dict]) -> K.KubernetesPlatform:
    """The operator's platform adapter configured as in the chart's pod: operator.yaml from the
    ConfigMap as a file, read by load_operator_config (what $CAMBRIAN_OPERATOR_CONFIG points at)."""
    import tempfile

    (cm,) = obj("ConfigMap", "-operator")(docs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "operator.yaml"
        path.write_text(cm["data"]["operator.yaml"])
        return K.KubernetesPlatform(config=K.load_operator_config(str(path)))


# An Evolution that leaves every pod-template field to the chart (what the chart's values are for).
_EVOLUTION = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "dau"}]},
                                              "data": {"world": {"users": 100, "days": 3}}})
_OWNER = Owner("Hypothesis", "h1", "uid-h1", "team-a")
_ROLLOUT = Owner("Rollout", "ro", "uid-ro", "team-a")


def job(docs: list[dict]) -> dict:
    """The training Job the operator creates for a Hypothesis of _EVOLUTION."""
    action = CreateTrainingJob("h1-train-1", _OWNER, "h1", 1, {}, None, _EVOLUTION.training.wire(),
                               _EVOLUTION.data.wire(), None, "")
    return _platform(docs).training_job(action)


def job_pod(docs: list[dict]) -> dict:
    return job(docs)["spec"]["template"]["spec"]


def trainer(docs: list[dict]) -> dict:
    return job_pod(docs)["containers"][0]


def arm(docs: list[dict]) -> dict:
    dep, _ = K.arm_manifests(DeployArm("ro-arm-a", _ROLLOUT, "ro", "a", "job://x/bundle", _EVOLUTION.serving.wire()))
    return _platform(docs)._templated(dep, "serving", "serving")


def router(docs: list[dict]) -> dict:
    weights = (ArmWeight("a", "svc-a", 50), ArmWeight("b", "svc-b", 50))
    _, dep, _ = K.router_manifests(SetWeights(_ROLLOUT, "ro", "s", weights, _EVOLUTION.serving.wire()), "team-a")
    return _platform(docs)._templated(dep, "serving", "router")


def created_pods(docs: list[dict]) -> list[dict]:
    """The pod specs of everything the operator creates: training Job, serving arm, router."""
    return [job_pod(docs), arm(docs)["spec"]["template"]["spec"], router(docs)["spec"]["template"]["spec"]]


def every_pod(docs: list[dict]) -> list[dict]:
    """The chart's own pods (operator, and the router when enabled) and every pod the operator creates."""
    return pod("")(docs) + created_pods(docs)


def every_container(docs: list[dict]) -> list[dict]:
    return [c for p in every_pod(docs) for c in p["containers"] + p.get("initContainers", [])]


def names(docs: list[dict]) -> list[str]:
    return [d["metadata"]["name"] for d in docs]


def has(kind: str, suffix: str = "") -> Callable[[list[dict]], bool]:
    return lambda docs: bool(obj(kind, suffix)(docs))


# --- the table ----------------------------------------------------------------------------------------


@dataclass
class Case:
    path: str  # a leaf of values.yaml (or a map/list the chart passes on whole)
    value: Any  # the distinctive value set; KEEP: pinned by the schema; None with a bool `where`: flip it
    where: Callable[[list[dict]], Any]  # what to look at in the rendering
    also: tuple[str, ...] = ()  # other settings the leaf needs to show (in both renderings)
    each: bool = False  # `where` returns a list: the value must reach every element, not only one
    expect: Any = field(default=None)  # what appears when it is not the value itself


def _contains(haystack: Any, needle: Any) -> bool:
    """needle appears in haystack: equal, a sub-map, every element of a list, or a substring."""
    if isinstance(needle, dict):
        if isinstance(haystack, dict) and all(k in haystack and _contains(haystack[k], v) for k, v in needle.items()):
            return True
    elif isinstance(needle, list):
        if isinstance(haystack, list) and all(any(_contains(h, n) for h in haystack) for n in needle):
            return True
    elif haystack == needle or (isinstance(haystack, str) and str(needle) in haystack):
        return True  # a number may appear inside a string (an argument, a PromQL expression, an env value)
    if isinstance(haystack, dict):
        return any(_contains(v, needle) for v in haystack.values())
    if isinstance(haystack, list):
        return any(_contains(v, needle) for v in haystack)
    return False


DIGEST = "sha256:" + "ab" * 32
TOL = [{"key": "zz-taint", "operator": "Exists", "effect": "NoSchedule"}]
AFF = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "zz-aff", "operator": "Exists"}]}]}}}


def image_cases(prefix: str, where: Callable, also: tuple[str, ...] = ()) -> list[Case]:
    return [
        Case(f"{prefix}.image.repository", "zz.example/zz-image", where, also, each=True),
        Case(f"{prefix}.image.tag", "zz-tag-9", where, also, each=True, expect=":zz-tag-9"),
        Case(f"{prefix}.image.digest", DIGEST, where, also, each=True, expect="@" + DIGEST),
        Case(f"{prefix}.image.pullPolicy", "Never", where, also, each=True),
    ]


def image_and_policy(where: Callable) -> Callable:
    return lambda docs: [{"image": c["image"], "imagePullPolicy": c.get("imagePullPolicy")} for c in where(docs)]


def scheduling_cases(prefix: str, where: Callable, also: tuple[str, ...] = (), each: bool = False) -> list[Case]:
    return [
        Case(f"{prefix}.nodeSelector", {"zz-node": "yes"}, lambda d: [p.get("nodeSelector") for p in where(d)], also, each),
        Case(f"{prefix}.tolerations", TOL, lambda d: [p.get("tolerations") for p in where(d)], also, each),
        Case(f"{prefix}.affinity", AFF, lambda d: [p.get("affinity") for p in where(d)], also, each),
    ]


def resources_cases(prefix: str, where: Callable, also: tuple[str, ...] = ()) -> list[Case]:
    return [
        Case(f"{prefix}.resources.requests.cpu", "1234m", lambda d: where(d)["resources"]["requests"]["cpu"], also),
        Case(f"{prefix}.resources.requests.memory", "1234Mi", lambda d: where(d)["resources"]["requests"]["memory"], also),
        Case(f"{prefix}.resources.limits.memory", "4321Mi", lambda d: where(d)["resources"]["limits"]["memory"], also),
    ]


def tmp_size(where: Callable) -> Callable:
    return lambda docs: [v["emptyDir"].get("sizeLimit") for p in where(docs) for v in p["volumes"] if v["name"] == "tmp"]


def _job_pods(docs):
    return [job_pod(docs)]


def _served_pods(docs):
    return [arm(docs)["spec"]["template"]["spec"], router(docs)["spec"]["template"]["spec"]]


def _served_containers(docs):
    return [p["containers"][0] for p in _served_pods(docs)]


CASES: list[Case] = [
    # names and labels
    Case("nameOverride", "zzname", names, expect="cambrian-zzname-operator"),
    Case("fullnameOverride", "zz-full", names, expect="zz-full-operator"),
    Case("commonLabels", {"zz-label": "on"}, lambda d: [x["metadata"]["labels"] for x in d], each=True),
    Case("imagePullSecrets", [{"name": "zz-pull"}],
         lambda d: [p.get("imagePullSecrets") for p in every_pod(d)], ROUTER_ON, each=True),
    # security contexts: the free ones reach every pod; the pinned ones keep their default there
    *[Case(f"podSecurityContext.{k}", v, lambda d, k=k: [p["securityContext"].get(k) for p in every_pod(d)],
           ROUTER_ON, each=True)
      for k, v in (("runAsNonRoot", KEEP), ("runAsUser", 23456), ("runAsGroup", 23457), ("fsGroup", 23458))],
    Case("podSecurityContext.seccompProfile.type", KEEP,
         lambda d: [p["securityContext"]["seccompProfile"]["type"] for p in every_pod(d)], ROUTER_ON, each=True),
    *[Case(f"containerSecurityContext.{k}", KEEP,
           lambda d, k=k: [c["securityContext"].get(k) for c in every_container(d)], ROUTER_ON, each=True)
      for k in ("runAsNonRoot", "allowPrivilegeEscalation", "readOnlyRootFilesystem")],
    Case("containerSecurityContext.privileged", KEEP,
         lambda d: [c["securityContext"].get("privileged") for c in every_container(d)], ROUTER_ON, each=True),
    Case("containerSecurityContext.capabilities.drop", ["ALL", "NET_RAW"],
         lambda d: [c["securityContext"]["capabilities"]["drop"] for c in every_container(d)], ROUTER_ON, each=True),
    Case("containerSecurityContext.seccompProfile.type", KEEP,
         lambda d: [c["securityContext"]["seccompProfile"]["type"] for c in every_container(d)], ROUTER_ON, each=True),
    # service account and RBAC
    Case("serviceAccount.create", None, lambda d: not has("ServiceAccount")(d)),
    Case("serviceAccount.name", "zz-sa",
         lambda d: names(obj("ServiceAccount")(d)) + [p["serviceAccountName"] for p in pod("-operator")(d)], each=True),
    Case("serviceAccount.annotations", {"zz/role": "x"}, lambda d: obj("ServiceAccount")(d)[0]["metadata"].get("annotations")),
    Case("rbac.create", None, lambda d: not has("ClusterRole")(d) and not has("ClusterRoleBinding")(d)),
    # operator
    *image_cases("operator", image_and_policy(lambda d: [container("-operator")(d)])),
    Case("operator.replicas", 3, lambda d: obj("Deployment", "-operator")(d)[0]["spec"]["replicas"]),
    Case("operator.podDisruptionBudget.enabled", None, lambda d: not has("PodDisruptionBudget")(d)),
    Case("operator.podDisruptionBudget.minAvailable", 2,
         lambda d: [p["spec"]["minAvailable"] for p in obj("PodDisruptionBudget")(d)], each=True),
    Case("operator.watchNamespaces", ["zz-ns"],
         lambda d: [container("-operator", "args")(d), [x["metadata"]["namespace"] for x in obj("RoleBinding")(d)]],
         each=True),
    Case("operator.logLevel", "debug", container("-operator", "args"), expect=["--verbose"]),
    Case("operator.extraArgs", ["--zz-flag"], container("-operator", "args")),
    Case("operator.extraEnv", [{"name": "ZZ_ENV", "value": "1"}], container("-operator", "env")),
    Case("operator.metricsPort", 9123,
         lambda d: [container("-operator", "ports")(d), env("-operator", "CAMBRIAN_METRICS_PORT")(d)[0]["value"],
                    obj("Service", "-operator-metrics")(d)[0]["spec"]["ports"][0]["port"]], each=True),
    Case("operator.healthPort", 9124, lambda d: [container("-operator", "ports")(d), container("-operator", "args")(d)],
         each=True),
    Case("operator.livenessProbe.enabled", None,
         lambda d: "livenessProbe" not in container("-operator")(d) and "--liveness" not in container("-operator", "args")(d)),
    *[Case(f"operator.livenessProbe.{k}", v, lambda d, k=k: container("-operator", "livenessProbe")(d))
      for k, v in (("initialDelaySeconds", 71), ("periodSeconds", 72), ("timeoutSeconds", 73), ("failureThreshold", 74))],
    Case("operator.livenessProbe.path", "/zz-alive", lambda d: [container("-operator", "livenessProbe")(d),
                                                                 container("-operator", "args")(d)], each=True),
    *resources_cases("operator", container("-operator")),
    Case("operator.tmpSizeLimit", "77Mi", tmp_size(pod("-operator"))),
    Case("operator.podAnnotations", {"zz/ann": "1"},
         lambda d: obj("Deployment", "-operator")(d)[0]["spec"]["template"]["metadata"]["annotations"]),
    Case("operator.podLabels", {"zz-pod": "1"},
         lambda d: obj("Deployment", "-operator")(d)[0]["spec"]["template"]["metadata"]["labels"]),
    *scheduling_cases("operator", pod("-operator")),
    Case("operator.priorityClassName", "zz-prio", lambda d: pod("-operator")(d)[0].get("priorityClassName")),
    # agents and Prometheus
    Case("agents.gemini.existingSecret", "zz-gemini", env("-operator", "GEMINI_API_KEY")),
    Case("agents.gemini.existingSecretKey", "ZZ_KEY", env("-operator", "GEMINI_API_KEY"),
         ("--set", "agents.gemini.existingSecret=g")),
    Case("agents.openai.existingSecret", "zz-openai", env("-operator", "OPENAI_API_KEY")),
    Case("agents.openai.existingSecretKey", "ZZ_OKEY", env("-operator", "OPENAI_API_KEY"),
         ("--set", "agents.openai.existingSecret=o")),
    Case("agents.openai.baseUrl", "http://zz-llm:1/v1", env("-operator", "OPENAI_BASE_URL")),
    Case("prometheus.url", "http://zz-prom:9090", env("-operator", "CAMBRIAN_PROMETHEUS_URL")),
    Case("prometheus.promqlUrl", "http://zz-own-prom:9090", env("-operator", "CAMBRIAN_PROMQL_URL")),
    Case("prometheus.timeoutSeconds", 17, env("-operator", "CAMBRIAN_PROMETHEUS_TIMEOUT"), expect="17"),
    # the training Jobs the operator creates
    *image_cases("training", image_and_policy(lambda d: [trainer(d), *job_pod(d)["initContainers"]])),
    Case("training.serviceAccountName", "zz-trainer-sa", lambda d: job_pod(d).get("serviceAccountName")),
    Case("training.automountServiceAccountToken", KEEP, lambda d: job_pod(d)["automountServiceAccountToken"]),
    *resources_cases("training", trainer),
    Case("training.activeDeadlineSeconds", 4321, lambda d: job(d)["spec"]["activeDeadlineSeconds"]),
    Case("training.ttlSecondsAfterFinished", 4322, lambda d: job(d)["spec"]["ttlSecondsAfterFinished"]),
    Case("training.tmpSizeLimit", "3Gi", tmp_size(_job_pods)),
    Case("training.podAnnotations", {"zz/train": "1"}, lambda d: job(d)["spec"]["template"]["metadata"].get("annotations")),
    *scheduling_cases("training", _job_pods),
    Case("training.priorityClassName", "zz-train-prio", lambda d: job_pod(d).get("priorityClassName")),
    Case("training.runtimeClassName", "zz-gvisor", lambda d: job_pod(d).get("runtimeClassName")),
    # the serving arms and per-Rollout routers the operator creates
    *image_cases("serving", image_and_policy(_served_containers)),
    Case("serving.resources.requests.cpu", "1234m", lambda d: [c["resources"]["requests"]["cpu"] for c in _served_containers(d)],
         each=True),
    Case("serving.resources.requests.memory", "1234Mi",
         lambda d: [c["resources"]["requests"]["memory"] for c in _served_containers(d)], each=True),
    Case("serving.resources.limits.memory", "4321Mi",
         lambda d: [c["resources"]["limits"]["memory"] for c in _served_containers(d)], each=True),
    Case("serving.tmpSizeLimit", "333Mi", tmp_size(_served_pods), each=True),
    Case("serving.podAnnotations", {"zz/serve": "1"},
         lambda d: [x["spec"]["template"]["metadata"].get("annotations") for x in (arm(d), router(d))], each=True),
    *scheduling_cases("serving", _served_pods, each=True),
    # the chart's fixed router
    Case("router.enabled", None, has("Deployment", "-router"), ROUTER_ON[2:]),
    *image_cases("router", image_and_policy(lambda d: [container("-router")(d)]), ROUTER_ON),
    Case("router.replicaCount", 3, lambda d: obj("Deployment", "-router")(d)[0]["spec"]["replicas"], ROUTER_ON),
    Case("router.port", 9125, lambda d: [container("-router", "ports")(d), container("-router", "args")(d)], ROUTER_ON,
         each=True),
    Case("router.metricsPort", 9129, lambda d: [container("-router", "ports")(d), container("-router", "args")(d)],
         ROUTER_ON, each=True),
    Case("router.service.type", "NodePort", lambda d: obj("Service", "-router")(d)[0]["spec"]["type"], ROUTER_ON),
    Case("router.service.port", 9126, lambda d: obj("Service", "-router")(d)[0]["spec"]["ports"][0]["port"], ROUTER_ON),
    *[Case(f"router.config.{k}", v, lambda d: yaml.safe_load(obj("ConfigMap", "-router")(d)[0]["data"]["router.yaml"]),
           ROUTER_ON)
      for k, v in (("experiment", "zz-exp"), ("salt", "zz-salt"), ("collector", "http://zz-collector:8080"),
                   ("arms", [{"name": "zz-a", "url": "http://zz-a:80", "control": True},
                             {"name": "zz-b", "url": "http://zz-b:80", "weight": 7}]))],
    Case("router.extraArgs", ["--zz-route"], container("-router", "args"), ROUTER_ON),
    Case("router.extraEnv", [{"name": "ZZ_RENV", "value": "1"}], container("-router", "env"), ROUTER_ON),
    *resources_cases("router", container("-router"), ROUTER_ON),
    Case("router.tmpSizeLimit", "55Mi", tmp_size(pod("-router")), ROUTER_ON),
    Case("router.podAnnotations", {"zz/r": "1"},
         lambda d: obj("Deployment", "-router")(d)[0]["spec"]["template"]["metadata"]["annotations"], ROUTER_ON),
    Case("router.podLabels", {"zz-rl": "1"},
         lambda d: obj("Deployment", "-router")(d)[0]["spec"]["template"]["metadata"]["labels"], ROUTER_ON),
    *scheduling_cases("router", pod("-router"), ROUTER_ON),
    # the event collector (off by default)
    Case("collector.enabled", None, has("Deployment", "-collector")),
    *image_cases("collector", image_and_policy(lambda d: [container("-collector")(d)]), COLLECTOR_ON),
    Case("collector.port", 9127, lambda d: [container("-collector", "ports")(d), container("-collector", "args")(d)],
         COLLECTOR_ON, each=True),
    Case("collector.service.port", 9128, lambda d: obj("Service", "-collector")(d)[0]["spec"]["ports"][0]["port"], COLLECTOR_ON),
    Case("collector.preDays", 21, container("-collector", "args"), COLLECTOR_ON, expect="21"),
    Case("collector.activeWindow", 5, container("-collector", "args"), COLLECTOR_ON, expect="5"),
    Case("collector.persistence.enabled", None,  # on by default: turned off, the event log is an emptyDir
         lambda d: not has("PersistentVolumeClaim", "-collector")(d)
         and {"name": "data", "emptyDir": {}} in pod("-collector")(d)[0]["volumes"], COLLECTOR_ON),
    Case("collector.persistence.size", "7Gi", lambda d: obj("PersistentVolumeClaim", "-collector")(d)[0]["spec"],
         COLLECTOR_ON, expect={"resources": {"requests": {"storage": "7Gi"}}}),
    Case("collector.persistence.storageClassName", "zz-disk",
         lambda d: obj("PersistentVolumeClaim", "-collector")(d)[0]["spec"], COLLECTOR_ON),
    Case("collector.warehouse.url", "postgresql://zz@db:5432/zz", container("-collector", "env"), COLLECTOR_ON,
         expect={"name": "CAMBRIAN_WAREHOUSE_URL", "value": "postgresql://zz@db:5432/zz"}),
    Case("collector.warehouse.secretName", "zz-warehouse", container("-collector", "envFrom"), COLLECTOR_ON,
         expect=[{"secretRef": {"name": "zz-warehouse"}}]),
    Case("collector.warehouse.metrics", [{"name": "zz_sql", "sql": "SELECT user_id, day, 1 AS value FROM zz"}],
         lambda d: [yaml.safe_load(c["data"]["metrics.yaml"]) for c in obj("ConfigMap", "-collector-metrics")(d)],
         COLLECTOR_ON + ("--set", "collector.warehouse.url=duckdb:///zz.duckdb")),
    *resources_cases("collector", container("-collector"), COLLECTOR_ON),
    Case("collector.podAnnotations", {"zz/c": "1"},
         lambda d: obj("Deployment", "-collector")(d)[0]["spec"]["template"]["metadata"].get("annotations"), COLLECTOR_ON),
    Case("collector.podLabels", {"zz-cl": "1"},
         lambda d: obj("Deployment", "-collector")(d)[0]["spec"]["template"]["metadata"]["labels"], COLLECTOR_ON),
    *scheduling_cases("collector", pod("-collector"), COLLECTOR_ON),
    # gateway, monitoring, dashboards, network policy
    Case("gateway.enabled", None, lambda d: _contains(obj("ClusterRole")(d)[0]["rules"], {"resources": ["httproutes"]})),
    Case("metrics.serviceMonitor.enabled", None, has("ServiceMonitor")),
    *[Case(f"metrics.serviceMonitor.{k}", v, lambda d: [m["spec"] for m in obj("ServiceMonitor")(d) + obj("PodMonitor")(d)],
           ("--set", "metrics.serviceMonitor.enabled=true"), each=True)
      for k, v in (("interval", "17s"), ("scrapeTimeout", "7s"))],
    Case("metrics.serviceMonitor.labels", {"zz-sm": "1"},
         lambda d: [m["metadata"]["labels"] for m in obj("ServiceMonitor")(d) + obj("PodMonitor")(d)],
         ("--set", "metrics.serviceMonitor.enabled=true"), each=True),
    Case("metrics.prometheusRule.enabled", None, has("PrometheusRule")),
    Case("metrics.prometheusRule.labels", {"zz-pr": "1"}, lambda d: obj("PrometheusRule")(d)[0]["metadata"]["labels"],
         ("--set", "metrics.prometheusRule.enabled=true")),
    *[Case(f"metrics.prometheusRule.{k}", v,
           lambda d, a=a: [r for r in obj("PrometheusRule")(d)[0]["spec"]["groups"][0]["rules"] if r["alert"] == a],
           ("--set", "metrics.prometheusRule.enabled=true"))
      for k, v, a in (("guardrailBreachFor", "7m", "CambrianGuardrailBreached"),
                      ("stuckHypothesisSeconds", 4444, "CambrianHypothesisStuck"),
                      ("stuckHypothesisFor", "44m", "CambrianHypothesisStuck"),
                      ("budgetExhaustedFor", "9m", "CambrianBudgetExhausted"),
                      ("operatorDownFor", "13m", "CambrianOperatorDown"))],
    Case("dashboards.enabled", None, lambda d: not any(x["metadata"]["name"].startswith("cambrian-dashboard-")
                                                       for x in obj("ConfigMap")(d))),
    *[Case(f"dashboards.{k}", v, lambda d, k=k: [x["metadata"] for x in obj("ConfigMap")(d)
                                                  if x["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"],
           each=True, expect=e)
      for k, v, e in (("label", "zz_dash", {"labels": {"zz_dash": "1"}}),
                      ("labelValue", "zz-v", {"labels": {"grafana_dashboard": "zz-v"}}),
                      ("folder", "ZzFolder", {"annotations": {"grafana_folder": "ZzFolder"}}),
                      ("namespace", "zz-grafana", {"namespace": "zz-grafana"}))],
    Case("networkPolicy.enabled", None, lambda d: not has("NetworkPolicy")(d)),
    Case("networkPolicy.trainerSelectors", [{"zz-trainer": "yes"}],
         lambda d: [p["spec"]["podSelector"]["matchLabels"] for p in obj("NetworkPolicy")(d)]),
    Case("networkPolicy.namespaces", ["zz-np"], lambda d: [p["metadata"]["namespace"] for p in obj("NetworkPolicy")(d)],
         each=True, expect="zz-np"),
    Case("networkPolicy.dns.enabled", None,
         lambda d: all(_contains(p["spec"]["egress"], {"ports": [{"port": 53}]}) for p in obj("NetworkPolicy")(d))),
    *[Case(f"networkPolicy.dns.{k}", {"matchLabels": {"zz-dns": k}},
           lambda d, k=k: [e["to"][0][k] for p in obj("NetworkPolicy")(d) for e in p["spec"]["egress"]],
           ("--set", "networkPolicy.dns.enabled=true"), each=True)
      for k in ("namespaceSelector", "podSelector")],
    Case("networkPolicy.extraEgress", [{"to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}]}],
         lambda d: [p["spec"]["egress"] for p in obj("NetworkPolicy")(d)], each=True),
    Case("dataSources.secrets", [{"name": "zz-warehouse", "stringData": {"PGPASSWORD": "zz-pw"}}],
         lambda d: [{"name": x["metadata"]["name"], "stringData": x["stringData"]} for x in obj("Secret", "zz-warehouse")(d)],
         ("--set-json", 'operator.watchNamespaces=["zz-team"]'), each=True,
         expect={"name": "zz-warehouse", "stringData": {"PGPASSWORD": "zz-pw"}}),
    # the production example's prerequisites (off by default)
    Case("prerequisites.priorityClass.create", None, has("PriorityClass")),
    *[Case(f"prerequisites.priorityClass.{k}", v, lambda d: obj("PriorityClass")(d), PRIORITY_ON)
      for k, v in (("name", "zz-prio-class"), ("value", 4242), ("preemptionPolicy", "Never"),
                   ("description", "zz training"))],
    Case("prerequisites.bundlesClaim.create", None, has("PersistentVolumeClaim")),
    *[Case(f"prerequisites.bundlesClaim.{k}", v, lambda d: obj("PersistentVolumeClaim")(d), CLAIM_ON, expect=e)
      for k, v, e in (("name", "zz-bundles", None), ("namespace", "zz-team", None),
                      ("storageClassName", "zz-fast", None), ("accessModes", ["ReadWriteOnce"], None),
                      ("size", "7Gi", {"requests": {"storage": "7Gi"}}))],
    Case("prerequisites.localQueue.create", None, has("LocalQueue"), KUEUE),
    *[Case(f"prerequisites.localQueue.{k}", v, lambda d: obj("LocalQueue")(d), KUEUE + QUEUE_ON)
      for k, v in (("name", "zz-queue"), ("namespace", "zz-team"), ("clusterQueue", "zz-cluster-queue"))],
]

BY_PATH = {c.path: c for c in CASES}


def value_leaves(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml's leaves: scalars, lists, empty maps, and maps a case passes on whole."""
    if isinstance(node, dict) and node and prefix not in BY_PATH:
        return [p for k, v in node.items() for p in value_leaves(v, f"{prefix}.{k}" if prefix else k)]
    return [prefix]


def test_every_value_has_a_case():
    leaves = value_leaves(VALUES)
    missing = [p for p in leaves if p not in BY_PATH]
    assert not missing, f"values with no test that they reach an object (wire them or remove them): {missing}"
    stale = sorted(set(BY_PATH) - set(leaves))
    assert not stale, f"cases for values that no longer exist: {stale}"


def _set_args(case: Case) -> tuple[str, ...]:
    if case.value is KEEP:
        return ()
    if case.value is None:  # a switch: flip it
        default = _default(case.path)
        assert isinstance(default, bool), f"{case.path}: value None is for booleans"
        return ("--set", f"{case.path}={str(not default).lower()}")
    return ("--set-json", f"{case.path}={json.dumps(case.value)}")


def _default(path: str) -> Any:
    node = VALUES
    for part in path.split("."):
        node = node[part]
    return node


def _reaches(found: Any, case: Case) -> bool:
    wanted = case.expect if case.expect is not None else (_default(case.path) if case.value is KEEP else case.value)
    if case.each:
        return bool(found) and all(_contains(f, wanted) for f in found)
    return _contains(found, wanted)


@pytest.mark.parametrize("case", CASES, ids=[c.path for c in CASES])
def test_value_reaches_the_objects_it_names(render, case):
    base = render.docs(*case.also)
    if case.value is None:  # a switch: off by default and on when flipped, or the reverse
        assert case.where(base) is False, f"{case.path}: the check already holds with the default"
        assert case.where(render.docs(*case.also, *_set_args(case))) is True, f"{case.path}: flipping it changed nothing"
        return
    if case.value is not KEEP:  # the check can fail: the distinctive value is nowhere there by default
        assert not _reaches(case.where(base), case), f"{case.path}: found without setting it"
    found = case.where(render.docs(*case.also, *_set_args(case)))
    assert _reaches(found, case), f"{case.path}={case.value!r} did not reach its objects: {found!r}"


def test_a_data_source_secret_is_in_every_namespace_whose_pods_may_read_it(render):
    secrets = obj("Secret", "warehouse")(render.docs(
        "--set-json", 'dataSources.secrets=[{"name": "warehouse", "stringData": {"PGPASSWORD": "x"}}]',
        "--set-json", 'operator.watchNamespaces=["team-a", "team-b"]'))
    release = obj("Deployment", "operator")(render.docs())[0]["metadata"].get("namespace") or "default"
    assert sorted(s["metadata"].get("namespace") for s in secrets) == sorted([release, "team-a", "team-b"])


# --- the defect of issue 21: the chart's training deadline and memory never reached the Job -------------


def test_chart_training_defaults_reach_a_job_whose_evolution_leaves_them_unset(render):
    """Values 3600 s and 16Gi (the defaults) produced a Job with 21600 s and 8Gi."""
    built = job(render.docs())
    assert built["spec"]["activeDeadlineSeconds"] == VALUES["training"]["activeDeadlineSeconds"] == 3600
    resources = built["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["memory"] == VALUES["training"]["resources"]["limits"]["memory"] == "16Gi"
    assert resources["requests"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}


def test_the_evolutions_own_training_settings_win_over_the_charts(render):
    spec = api.EvolutionSpec.model_validate({
        "objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}},
        "training": {"cpu": "3", "memory": "5Gi", "activeDeadline": "30m", "gpu": {"count": 0},
                     "nodeSelector": {"pool": "cpu"}}})
    action = CreateTrainingJob("h1-train-1", _OWNER, "h1", 1, {}, None, spec.training.wire(), spec.data.wire(), None, "")
    built = _platform(render.docs()).training_job(action)
    assert built["spec"]["activeDeadlineSeconds"] == 1800
    pod_spec = built["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"] == {"requests": {"cpu": "3", "memory": "5Gi"}, "limits": {"memory": "5Gi"}}
    assert pod_spec["nodeSelector"] == {"pool": "cpu"}


def test_evolution_crd_leaves_the_chart_defaults_unset():
    """The API server must not fill cpu, memory or activeDeadline in: a default there would hide the chart's."""
    training = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "dau"}]},
                                                 "data": {"world": {}}}).training.wire()
    assert not {"cpu", "memory", "activeDeadline"} & set(training)
