"""The Platform on Kubernetes, with the official `kubernetes` client.

- A training run is a batch/v1 Job on the trainer image: Φ and the delta come from a ConfigMap,
  the GPU is requested as an extended resource (configurable name and count), nodeSelector,
  tolerations and priorityClassName are copied from the Evolution, and with a Kueue queue the Job
  is created suspended with the `kueue.x-k8s.io/queue-name` label (Kueue unsuspends it). No
  service-account token is mounted and backoffLimit is 0: retries are the core's decision.
  Results come back in the trainer container's termination message (see termination.py).
- An arm is a Deployment + Service running `cambrian serve`; a rollout's router is a Deployment +
  Service running `cambrian route` with its config (salt, arms, weights) in a ConfigMap that the
  router watches. With spec.serving.httpRoute, the HTTPRoute's forwarding rules send everything to the router
  of the one rollout that holds it (reconcile/httproute.py: the core decides, each write is conditional on the
  resourceVersion it was decided on; only the rules' backendRefs are Cambrian's). Every server's Service exposes
  its serving port alone (/rank, /healthz); /metrics (the router's GET /weights, /flush) is on the pod's "metrics"
  port, and a router here serves no POST /weights (its weights are the ConfigMap's).
- Production: each Evolution's champion is served by Deployment + Service `<evolution>-champion`
  (`cambrian serve` on the champion's bundle); a new champion is a rolling update with
  maxUnavailable 0 behind the readiness probe. With spec.serving.httpRoute, that Service is the
  route's only backend while no live rollout holds it.
- Everything carries an ownerReference to its Hypothesis/Rollout/Evolution, so deleting the owner
  deletes the children.

The manifest builders are module functions over plain dicts (tested without a cluster); the class
only sends them.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

from cambrian.operator.api import API_VERSION, GROUP, VERSION
from cambrian.operator.platform import gang
from cambrian.operator.platform.base import (ActionRefused, MetricsUnavailable, Readout,
                                             check_queries, prometheus, read_gauges, refusal_is_permanent)
from cambrian.operator.reconcile import httproute as HR
from cambrian.operator.reconcile import views
from cambrian.operator.reconcile.actions import (
    A_APPROVE,
    A_RETIRED,
    A_ROUTE_HOLDER,
    Mark,
    ClearWeights,
    CreateRollout,
    CreateTrainingJob,
    DeleteArm,
    DeleteJob,
    RetireRollout,
    DeployArm,
    RouteChampion,
    Owner,
    ProposeHypotheses,
    RecordJournal,
    SetWeights,
    UpdateChampion,
)
from cambrian.operator.reconcile.common import label_value
from cambrian.operator.reconcile.champion import serving_name
from cambrian.operator.reconcile.rollout import router_name
from cambrian.operator.reconcile.observations import (ArmObservation, ChampionObservation, JobObservation,
                                                      RouteObservation)

log = logging.getLogger("cambrian.operator.kubernetes")

PART_OF = {"app.kubernetes.io/part-of": "cambrian", "app.kubernetes.io/managed-by": "cambrian-operator"}
# Restricted Pod Security Standard for every pod the operator creates (training runs agent-written code).
# The root filesystem is read-only: /tmp (HOME in the images) is an emptyDir.
RESTRICTED_CONTAINER = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
L_OWNER_KIND = "cambrian.dev/owner-kind"
L_OWNER = "cambrian.dev/owner"
L_ROLLOUT = "cambrian.dev/rollout"
L_ARM = "cambrian.dev/arm"
L_EVOLUTION = "cambrian.dev/evolution"
A_REVISION = "cambrian.dev/serving-revision"
A_CHAMPION = "cambrian.dev/champion"
A_BUNDLE = "cambrian.dev/bundle-uri"
A_ATTEMPT = "cambrian.dev/attempt"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
STORAGE_MOUNT = "/var/lib/cambrian"
SNAPSHOTS = "/snapshots"  # the fetch step's view of the claim's folder of source snapshots
TRAINING_FILE = "training.json"  # the run's ConfigMap: the training settings a reused run's key covers (reuses_runs)
TRAINER = "trainer"  # the training pod's init container that runs candidate code
SCORER = "scorer"  # its main container: the only one whose termination message carries a verdict
JOB_TTL_SECONDS = 7 * 86400


# ---------------------------------------------------------------------------------------------
# Pure builders
# ---------------------------------------------------------------------------------------------


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(name: str, owner: Owner, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**PART_OF, L_OWNER_KIND: owner.kind.lower(), L_OWNER: label_value(owner.name), **labels},
        "ownerReferences": [owner_reference(owner)],
    }
    if owner.namespace:
        meta["namespace"] = owner.namespace
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def bundle_uri(action: CreateTrainingJob) -> str:
    if action.storage_claim:
        return f"pvc://{action.storage_claim}/{action.bundle_path}/bundle"
    return f"job://{action.name}/bundle"  # lives only as long as the Job's pod: metrics only


def bundle_path(uri: str) -> str | None:
    """pvc://CLAIM/PATH -> the path inside the pod where the claim is mounted; None for other schemes."""
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://") :]
        return f"{STORAGE_MOUNT}/{rest.split('/', 1)[1]}" if "/" in rest else STORAGE_MOUNT
    if uri.startswith("file://"):
        return uri[len("file://") :]
    return None


def reuses_runs(action: CreateTrainingJob) -> bool:
    """A baseline run (no hypothesis, no delta) of one pod with storage: its pod looks for the same run in the
    claim's run store before training and keeps it there after (trainer/runstore.py). A gang's pods would each
    decide alone whether to train, and a split decision leaves workers waiting at the rendezvous: gangs train."""
    return (action.hypothesis is None and action.delta is None and bool(action.storage_claim)
            and gang.workers(action.training) <= 1)


def training_configmap(action: CreateTrainingJob) -> dict[str, Any]:
    data = {"config.json": json.dumps(action.baseline, sort_keys=True)}
    if reuses_runs(action):  # the settings a stored run's key covers (trainer/runstore.py)
        data[TRAINING_FILE] = json.dumps(action.training, sort_keys=True)
    if action.delta is not None:
        data["delta.json"] = json.dumps(action.delta, sort_keys=True)
    if action.fidelity is not None:
        data["fidelity.json"] = json.dumps(action.fidelity, sort_keys=True)
    if (action.data or {}).get("customDeclaration"):  # what the fetch step reads the source through
        data["declaration.json"] = json.dumps(action.data["customDeclaration"], sort_keys=True)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(action.name, action.owner, {}), "data": data}


# What a trainer gets when neither the Evolution (spec.training.cpu/memory/activeDeadline) nor the
# operator's configuration (the chart's training.resources / activeDeadlineSeconds) says otherwise.
BUILTIN_TRAINING_RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
BUILTIN_ACTIVE_DEADLINE_SECONDS = 6 * 3600


def training_resources(t: Mapping[str, Any], template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trainer container's requests and limits: the chart's training.resources (else 2 CPUs and
    8Gi), then what the Evolution sets: cpu (request), memory (request and limit), and the GPU, whose
    count replaces any amount of that resource in the chart's values (count 0 removes it: CPU training)."""
    base = (template or {}).get("resources") or BUILTIN_TRAINING_RESOURCES
    requests = dict(base.get("requests") or {})
    limits = dict(base.get("limits") or {})
    if t.get("cpu"):
        requests["cpu"] = t["cpu"]
    if t.get("memory"):
        requests["memory"] = limits["memory"] = t["memory"]
    gpu = t.get("gpu") or {}
    resource = gpu.get("resource", "nvidia.com/gpu")
    requests.pop(resource, None)
    limits.pop(resource, None)
    if int(gpu.get("count", 0)) > 0:
        requests[resource] = limits[resource] = str(int(gpu["count"]))  # quantities are strings
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def active_deadline_seconds(t: Mapping[str, Any], template: Mapping[str, Any] | None = None) -> int:
    """The Evolution's spec.training.activeDeadline, else the chart's training.activeDeadlineSeconds, else 6h."""
    from cambrian.operator.api import duration_seconds

    if t.get("activeDeadline"):
        return int(duration_seconds(t["activeDeadline"]))
    return int((template or {}).get("activeDeadlineSeconds") or BUILTIN_ACTIVE_DEADLINE_SECONDS)


WORK = "/work"
# the pod's step volumes (trainer/train.py `_Contained` folders): which container may read or write which
STEP_VOLUMES = ("training-in", "training-out", "scoring-in", "scoring-out")


def _step_mount(name: str, read_only: bool = False) -> dict[str, Any]:
    return {"name": name, "mountPath": f"{WORK}/{name}", **({"readOnly": True} if read_only else {})}


def training_job(action: CreateTrainingJob, template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The training Job; `template` is the operator configuration's `training` (the chart's values),
    whose resources and deadline apply where the Evolution leaves them unset.

    One pod, five steps, so that candidate code never shares a container with the held-out labels:
    world (generated data only; or fetch, the snapshot of the Evolution's own source, the only step given its
    connection Secret) and prepare (trusted: static checks, the training rows into training-in, the
    held-out features without labels into scoring-in), then trainer (the candidate's code: training-in
    read-only, its program into training-out; no data, no run config, no storage) and predictor (loads that
    program, which may unpickle what the candidate wrote: held-out features, no labels), all init containers,
    and last the scorer, the only container that mounts the held-out labels, which decides the verdict from the
    steps' untrusted output and writes the bundle and the termination message (trainer/pod.py)."""
    t = action.training
    queue = t.get("queueName")
    labels = {"app.kubernetes.io/component": "training"}
    if queue:
        labels[KUEUE_QUEUE] = queue
    deadline = active_deadline_seconds(t, template)
    out_dir = f"{STORAGE_MOUNT}/{action.bundle_path}" if action.storage_claim else "/out"
    data = action.data or {}
    if data.get("source") and not (action.storage_claim and action.data_snapshot):
        # a fetch per pod would let a warehouse that grows between two Jobs give them different rows
        raise ActionRefused(f"training job {action.name}", "spec.data.source needs spec.storage.claimName: the "
                            "Evolution's one snapshot of its source, which every training run reads, is kept on "
                            "that claim (a ReadWriteMany PersistentVolumeClaim)", permanent=True)
    run = ["--config", "/etc/cambrian/run/config.json", "--data", "/data"]
    if action.delta is not None:
        run += ["--delta", "/etc/cambrian/run/delta.json"]
    if action.fidelity is not None:  # a first look: prepare and score resolve the same smaller Φ
        run += ["--fidelity", "/etc/cambrian/run/fidelity.json"]
    # a baseline run reused from the run store: prepare finds it (the candidate steps then have nothing to do), the
    # scorer looks again itself, reports the stored metrics and copies the stored bundle
    reuse = (["--run-store", STORAGE_MOUNT, "--run-settings", f"/etc/cambrian/run/{TRAINING_FILE}"]
             if reuses_runs(action) else [])
    score = ["cambrian", "train", *run, "--out", out_dir, "--pod-stage", "score", "--work", WORK, *reuse]
    command = ["python", "-m", "cambrian.operator.platform.termination", "--out", out_dir, "--", *score]

    # the steps that run or load candidate code get /tmp volumes of their own: nothing they leave there
    # reaches a trusted container
    volumes: list[dict[str, Any]] = [{"name": "run", "configMap": {"name": action.name}}, dict(TMP_VOLUME),
                                     {**TMP_VOLUME, "name": "tmp-trainer"}, {**TMP_VOLUME, "name": "tmp-predictor"},
                                     *({"name": v, "emptyDir": {}} for v in STEP_VOLUMES)]
    run_mount = {"name": "run", "mountPath": "/etc/cambrian/run", "readOnly": True}
    data_mount: dict[str, Any] = {"name": "data", "mountPath": "/data", "readOnly": True}
    init: list[dict[str, Any]] = []
    secure = dict(RESTRICTED_CONTAINER)
    resources = training_resources(gang.gpu_count(t), template)  # in a gang, gpusPerWorker per pod
    image = {"image": t.get("image"), "imagePullPolicy": t.get("imagePullPolicy", "IfNotPresent")}
    if data.get("persistentVolumeClaim"):
        pvc = data["persistentVolumeClaim"]
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": pvc["claimName"], "readOnly": True}})
        if pvc.get("path"):
            data_mount["subPath"] = pvc["path"]
    elif data.get("source"):
        # The only step that holds the warehouse's credentials: the image's own code, before any candidate
        # code runs; the steps after it read the snapshot and never see the Secret. The snapshot is the
        # Evolution's, on its claim: the first Job's fetch writes it (atomically), every later one finds it
        # there and reads nothing, so all the Evolution's runs train and are scored on the same rows.
        source = data["source"]
        folder, name = posixpath.split(action.data_snapshot)
        data_mount.update(name="storage", subPath=action.data_snapshot)
        init.append({
            "name": "fetch", **image, "securityContext": secure,
            "command": ["cambrian", "data", "fetch", source["uri"], "--out", f"{SNAPSHOTS}/{name}", "--schema",
                        "/etc/cambrian/run/declaration.json" if data.get("customDeclaration")
                        else data.get("declaration") or "world"],
            **({"envFrom": [{"secretRef": {"name": source["secretRef"]["name"]}}]} if source.get("secretRef") else {}),
            # the claim's snapshots folder only: not the bundles or the run store
            "volumeMounts": [{"name": "storage", "mountPath": SNAPSHOTS, "subPath": folder}, dict(TMP_MOUNT),
                             *([run_mount] if data.get("customDeclaration") else [])],
        })
    else:
        w = data.get("world") or {}
        volumes.append({"name": "data", "emptyDir": {}})
        init.append({
            "name": "world", **image,
            "command": ["cambrian", "world", "generate", "--users", str(w.get("users", 2000)),
                        "--days", str(w.get("days", 14)), "--seed", str(w.get("seed", 0)), "--out", "/data"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}, dict(TMP_MOUNT)],
            "securityContext": secure,
        })
    step = ["python", "-m", "cambrian.trainer.pod"]
    limits = ["--work", WORK, "--wall-seconds", str(deadline)]
    init += [
        {"name": "prepare", **image, "resources": resources, "securityContext": secure,
         "command": ["cambrian", "train", *run, "--out", "/tmp/prepare", "--pod-stage", "prepare", "--work", WORK,
                     *reuse],
         "volumeMounts": [run_mount, dict(data_mount), _step_mount("training-in"), _step_mount("scoring-in"),
                          dict(TMP_MOUNT),
                          *([{"name": "storage", "mountPath": STORAGE_MOUNT, "readOnly": True}] if reuse else [])]},
        # candidate code runs here: the training rows and nothing else
        {"name": TRAINER, **image, "resources": resources, "securityContext": secure,
         "command": [*step, "train", *limits],
         "volumeMounts": [_step_mount("training-in", True), _step_mount("training-out"),
                          {**TMP_MOUNT, "name": "tmp-trainer"}]},
        {"name": "predictor", **image, "resources": resources, "securityContext": secure,
         "command": [*step, "predict", *limits],
         "volumeMounts": [_step_mount("training-out", True), _step_mount("scoring-in"), _step_mount("scoring-out"),
                          {**TMP_MOUNT, "name": "tmp-predictor"}]},
    ]
    mounts = [run_mount, data_mount, _step_mount("training-out", True), _step_mount("scoring-out", True),
              dict(TMP_MOUNT)]
    if action.storage_claim:
        volumes.append({"name": "storage", "persistentVolumeClaim": {"claimName": action.storage_claim}})
        mounts.append({"name": "storage", "mountPath": STORAGE_MOUNT})
    else:
        volumes.append({"name": "out", "emptyDir": {}})
        mounts.append({"name": "out", "mountPath": "/out"})

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": dict(RESTRICTED_POD),
        "initContainers": init,
        "containers": [{
            "name": SCORER, **image,
            "command": command,
            "env": [{"name": "CAMBRIAN_TERMINATION_LOG", "value": "/dev/termination-log"},
                    {"name": "CAMBRIAN_RUN", "value": action.name}],
            "resources": resources,
            "volumeMounts": mounts,
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": secure,
        }],
        "volumes": volumes,
    }
    if t.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(t["nodeSelector"])
    if t.get("tolerations"):
        pod_spec["tolerations"] = [dict(x) for x in t["tolerations"]]
    if t.get("priorityClassName"):
        pod_spec["priorityClassName"] = t["priorityClassName"]

    annotations = {A_BUNDLE: bundle_uri(action), A_ATTEMPT: str(action.attempt)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(action.name, action.owner, labels, annotations),
        "spec": {
            "backoffLimit": 0,
            "suspend": bool(queue),
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {
                "metadata": {"labels": {**PART_OF, **labels, L_OWNER: label_value(action.owner.name)},
                             **({"annotations": dict(t["podAnnotations"])} if t.get("podAnnotations") else {})},
                "spec": pod_spec,
            },
        },
    }


ROLE = "cambrian.dev/role"
DEFAULT_TRAINER_IMAGE = "ghcr.io/cambrian-dev/trainer:latest"  # api.Training's default
DEFAULT_SERVING_IMAGE = "ghcr.io/cambrian-dev/cambrian:latest"  # api.Serving's default


def load_operator_config(path: str | None) -> dict[str, Any]:
    """The chart's operator.yaml ($CAMBRIAN_OPERATOR_CONFIG); {} when none is given."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: operator config must be a mapping")
    return cfg


def apply_pod_template(obj: dict[str, Any], tpl: Mapping[str, Any] | None, role: str,
                       pull_secrets: list | None = None) -> dict[str, Any]:
    """Merge the chart's pod template (operator.yaml `training` / `serving`) into a Job or Deployment.

    The object's own choices (from the Evolution) win over the chart's defaults, except the security
    settings: the restricted ones can be added to, never relaxed (runAsNonRoot, read-only root
    filesystem, no service-account token for trainers)."""
    tpl = dict(tpl or {})
    spec = obj["spec"]
    pod_meta = spec["template"].setdefault("metadata", {})
    pod = spec["template"]["spec"]
    pod_meta["labels"] = {**{k: str(v) for k, v in (tpl.get("labels") or {}).items()}, **pod_meta.get("labels", {}),
                          ROLE: role}
    obj["metadata"].setdefault("labels", {})[ROLE] = role
    if tpl.get("annotations"):
        pod_meta["annotations"] = {**{k: str(v) for k, v in tpl["annotations"].items()}, **pod_meta.get("annotations", {})}
    pod["securityContext"] = {**(tpl.get("podSecurityContext") or {}), **pod.get("securityContext", {}), "runAsNonRoot": True}
    tpl_sc = tpl.get("securityContext") or {}
    for c in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        own = c.get("securityContext", {})
        c["securityContext"] = {**tpl_sc, **own,
                                "runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
        # capabilities are only ever dropped more: the chart's list and the object's own together
        drop = {*((tpl_sc.get("capabilities") or {}).get("drop") or []), *((own.get("capabilities") or {}).get("drop") or [])}
        if drop:
            c["securityContext"]["capabilities"] = {**c["securityContext"].get("capabilities", {}), "drop": sorted(drop)}
        default_image = DEFAULT_TRAINER_IMAGE if role == "trainer" else DEFAULT_SERVING_IMAGE
        if tpl.get("image") and c.get("image") in (None, default_image):
            c["image"] = tpl["image"]
            if tpl.get("imagePullPolicy"):
                c["imagePullPolicy"] = tpl["imagePullPolicy"]
        if role != "trainer" and tpl.get("resources") and not c.get("resources"):
            c["resources"] = dict(tpl["resources"])
    if role == "trainer":
        pod["automountServiceAccountToken"] = False  # candidate code runs here: never a token
        if tpl.get("serviceAccountName"):
            pod["serviceAccountName"] = tpl["serviceAccountName"]
        # resources and activeDeadlineSeconds were merged by training_job (the Evolution's choice wins);
        # backoffLimit stays 0 because retries are the core's decision (attempts in the Hypothesis status).
        if tpl.get("ttlSecondsAfterFinished") is not None:
            spec["ttlSecondsAfterFinished"] = int(tpl["ttlSecondsAfterFinished"])
    else:
        pod["automountServiceAccountToken"] = False  # model servers and routers never call the API
    pod["enableServiceLinks"] = False
    for key in ("nodeSelector", "affinity", "priorityClassName", "runtimeClassName"):
        if tpl.get(key) and not pod.get(key):
            pod[key] = tpl[key]
    if tpl.get("tolerations") and not pod.get("tolerations"):
        pod["tolerations"] = [dict(t) for t in tpl["tolerations"]]
    if tpl.get("tmpSizeLimit"):
        for v in pod.get("volumes", []):
            if v.get("name", "").startswith("tmp") and "emptyDir" in v:
                v["emptyDir"] = {**v["emptyDir"], "sizeLimit": str(tpl["tmpSizeLimit"])}
    if pull_secrets:
        pod["imagePullSecrets"] = [dict(x) if isinstance(x, Mapping) else {"name": str(x)} for x in pull_secrets]
    return obj


def parse_job(job: Mapping[str, Any], pods: list[Mapping[str, Any]]) -> JobObservation:
    """Job + its pods (plain dicts, as the API returns them) -> what the core needs."""
    meta, spec, status = job.get("metadata", {}), job.get("spec", {}), job.get("status") or {}
    name = meta["name"]
    conds = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    started = views.parse_time(status.get("startTime"))
    finished = (views.parse_time(status.get("completionTime"))
                or views.parse_time((conds.get("Failed") or {}).get("lastTransitionTime")))
    bundle = (meta.get("annotations") or {}).get(A_BUNDLE)
    term = _terminated(pods)
    message = _termination_message(term)
    if ("Complete" in conds or "SuccessCriteriaMet" in conds) and "Failed" not in conds:
        reused = message.get("reused")
        return JobObservation(name, "Succeeded", 0, metrics=message.get("metrics"), bundle_uri=bundle,
                              started_at=started, finished_at=finished,
                              reused=reused if isinstance(reused, str) else None)
    if "Failed" in conds or "FailureTarget" in conds:
        cond = conds.get("Failed") or conds.get("FailureTarget") or {}
        error = message.get("error") or {}
        reason = (term or {}).get("reason") or cond.get("reason")
        if cond.get("reason") in ("DeadlineExceeded", "BackoffLimitExceeded") and not term:
            reason = cond.get("reason")
        text = error.get("reason") or (None if message else (term or {}).get("message")) or cond.get("message")
        return JobObservation(name, "Failed", (term or {}).get("exitCode"), reason, text, error.get("stage") or None,
                              started_at=started, finished_at=finished, bundle_uri=bundle)
    blocked = pod_blocker(pods)
    if spec.get("suspend"):
        return JobObservation(name, "Suspended", bundle_uri=bundle, blocked=blocked)
    if status.get("active"):  # active pods include Pending ones (unschedulable, pulling an image)
        return JobObservation(name, "Running", started_at=started, bundle_uri=bundle, blocked=blocked)
    return JobObservation(name, "Pending", bundle_uri=bundle, blocked=blocked)


# Container waiting reasons that do not pass by waiting: the image or the container config is wrong.
STUCK_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError"}


def pod_blocker(pods: list[Mapping[str, Any]]) -> str | None:
    """Why the newest not-yet-running pod cannot run, as the scheduler and the kubelet write it in its
    status: unschedulable (a missing PVC, no node matching the selector or with the resource) or a
    container stuck before starting (an image that cannot be pulled). None when nothing says so."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True):
        st = pod.get("status") or {}
        if st.get("phase") not in (None, "Pending"):
            continue
        name = pod.get("metadata", {}).get("name", "?")
        for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING:
                why = f"container {cs.get('name')} of pod {name}: {waiting['reason']}"
                return f"{why}: {waiting['message']}" if waiting.get("message") else why
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return f"pod {name} cannot be scheduled: {c.get('message') or 'no reason given'}"
    return None


def deployment_blocker(dep: Mapping[str, Any]) -> str | None:
    """A Deployment whose ReplicaSet cannot create pods (a missing PriorityClass, a quota) says so in
    its ReplicaFailure condition."""
    for c in (dep.get("status") or {}).get("conditions") or []:
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            return f"deployment {dep.get('metadata', {}).get('name')}: {c.get('reason')}: {c.get('message')}"
    return None


def api_message(exc: Any) -> str:
    """The API server's own sentence from an ApiException (its Status object), else the HTTP reason."""
    try:
        body = json.loads(exc.body)
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "reason", exc))


def namespace_terminating(exc: Any) -> bool:
    """The API server's 403 for a create in a namespace being deleted (a Status cause
    NamespaceTerminating): not a missing permission, the namespace and its objects are going away."""
    if getattr(exc, "status", None) != 403:
        return False
    try:
        causes = (json.loads(exc.body).get("details") or {}).get("causes") or []
    except (TypeError, ValueError, AttributeError):
        return False
    return any(c.get("reason") == "NamespaceTerminating" for c in causes if isinstance(c, dict))


def refusal(exc: Any, what: str) -> Exception:
    """Kubernetes' ApiException -> ActionRefused when the refusal is one (see refusal_is_permanent);
    anything else is returned as it is, for the caller's retry."""
    status = getattr(exc, "status", None) or 0
    if refusal_is_permanent(status):
        return ActionRefused(what, api_message(exc), True, status)
    if status == 403:
        return ActionRefused(what, api_message(exc), False, status, namespace_terminating(exc))
    return exc


def _terminated(pods: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The end that tells the outcome, per pod the scorer's terminated state, else that of a failed step before
    it (killed for memory, say), whose own termination message is not read: containers that ran candidate
    code cannot word the verdict. Of several pods (a gang, operator/platform/gang.py): the one whose scorer
    reports metrics (global rank 0's node), else one whose scorer reports a failed stage by itself, before pods
    the Job controller stopped after it; the newest of equals."""
    ends = [end for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "",
                                  reverse=True)
            if (end := _pod_end(pod.get("status") or {})) is not None]

    def telling(term: Mapping[str, Any]) -> int:
        message = _termination_message(term)
        failed = (message.get("error") or {}).get("stage") and message.get("exit_code") != 0
        return 2 if "metrics" in message else 1 if failed else 0  # exit 0 without metrics: a gang's worker pod

    return max(ends, key=telling, default=None)  # max keeps the first (newest) of equals


def _pod_end(status: Mapping[str, Any]) -> dict[str, Any] | None:
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == SCORER and (cs.get("state") or {}).get("terminated"):
            return cs["state"]["terminated"]
    for cs in status.get("initContainerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term and term.get("exitCode") not in (None, 0):
            return {"exitCode": term["exitCode"], "reason": term.get("reason"),
                    "message": f"the pod's {cs.get('name')} step failed (exit {term['exitCode']}, "
                               f"{term.get('reason') or 'no reason given'})"}
    return None


def _termination_message(term: Mapping[str, Any] | None) -> dict[str, Any]:
    if not term or not term.get("message"):
        return {}
    try:
        msg = json.loads(term["message"])
    except ValueError:
        return {}
    return msg if isinstance(msg, dict) and msg.get("v") == 1 else {}


def arm_labels(rollout: str, arm: str) -> dict[str, str]:
    return {"app.kubernetes.io/component": "serving", L_ROLLOUT: label_value(rollout), L_ARM: arm}


def _selector(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a server's Service and Deployment select its pods by: its rollout (or evolution) and arm."""
    return {k: labels[k] for k in (L_ROLLOUT, L_EVOLUTION, L_ARM) if k in labels}


def metrics_port(port: int) -> int:
    """The admin port of a model server or router pod (its /metrics, port name "metrics", which the chart's
    PodMonitor scrapes): never the serving port, so that its Service, and a route to it, cannot reach it."""
    return 9090 if port != 9090 else 9091


def _server_deployment(name: str, owner: Owner, labels: dict[str, str], serving: Mapping[str, Any],
                       args: list[str], volumes: list[dict], mounts: list[dict], replicas: int) -> dict[str, Any]:
    port = int(serving.get("port", 8080))
    admin = metrics_port(port)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, owner, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(labels)},
            "template": {
                "metadata": {"labels": {**PART_OF, **labels}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": dict(RESTRICTED_POD),
                    "containers": [{
                        "name": "server",
                        "image": serving.get("image"),
                        "args": [*args, "--host", "0.0.0.0", "--port", str(port),
                                 "--admin-host", "0.0.0.0", "--admin-port", str(admin)],
                        "ports": [{"name": "http", "containerPort": port}, {"name": "metrics", "containerPort": admin}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                        "volumeMounts": [*mounts, dict(TMP_MOUNT)],
                        "securityContext": dict(RESTRICTED_CONTAINER),
                    }],
                    "volumes": [*volumes, dict(TMP_VOLUME)],
                },
            },
        },
    }


def _service(name: str, owner: Owner, labels: dict[str, str], port: int) -> dict[str, Any]:
    """The serving port alone (what spec.serving.httpRoute forwards users to): never the pod's admin port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, owner, labels),
        "spec": {"selector": _selector(labels),
                 "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }


def _model_server(name: str, owner: Owner, labels: dict[str, str], bundle: str, arm: str,
                  serving: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deployment + Service of `cambrian serve` for one bundle (a pvc:// bundle's claim mounted read-only)."""
    volumes, mounts = [], []
    if bundle.startswith("pvc://"):
        claim = bundle[len("pvc://") :].split("/", 1)[0]
        volumes.append({"name": "storage", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "storage", "mountPath": STORAGE_MOUNT, "readOnly": True})
    # The bundle's program runs in a child process of the server (never in the server's own process); the pod
    # is its sandbox (no token, restricted, read-only root): bubblewrap cannot nest without user namespaces.
    args = ["cambrian", "serve", "--bundle", bundle_path(bundle) or bundle, "--arm", arm, "--sandbox", "none"]
    dep = _server_deployment(name, owner, labels, serving, args, volumes, mounts, int(serving.get("replicas", 1)))
    return dep, _service(name, owner, labels, int(serving.get("port", 8080)))


def arm_manifests(action: DeployArm) -> tuple[dict[str, Any], dict[str, Any]]:
    return _model_server(action.name, action.owner, arm_labels(action.rollout, action.arm), action.bundle,
                         action.arm, action.serving)


CHAMPION_ARM = "champion"


def champion_manifests(action: UpdateChampion) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Evolution's production model server. Switching the champion changes the pod template (the
    bundle), which Kubernetes rolls out with maxUnavailable 0: a new pod must pass its readiness probe
    (the bundle loaded, /healthz answering) before an old one is stopped."""
    labels = {"app.kubernetes.io/component": "champion", L_EVOLUTION: label_value(action.owner.name),
              L_ARM: CHAMPION_ARM}
    dep, svc = _model_server(action.name, action.owner, labels, action.bundle, CHAMPION_ARM, action.serving)
    dep["metadata"]["annotations"] = {A_REVISION: action.revision, A_BUNDLE: action.bundle,
                                      A_CHAMPION: action.champion}
    dep["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return dep, svc


def parse_champion(dep: Mapping[str, Any], pods: list[Mapping[str, Any]]) -> ChampionObservation:
    """The production Deployment (a plain dict) -> what the core needs. Ready once the rollout is complete:
    the controller saw the current spec, and every replica is updated and available (no old pod left)."""
    meta, spec, st = dep.get("metadata", {}), dep.get("spec") or {}, dep.get("status") or {}
    want = int(spec.get("replicas", 1))
    ready = (st.get("observedGeneration", 0) >= meta.get("generation", 0) and st.get("updatedReplicas", 0) >= want
             and st.get("availableReplicas", 0) >= want and st.get("replicas", 0) == want)
    annotations = meta.get("annotations") or {}
    return ChampionObservation(meta.get("name", ""), annotations.get(A_REVISION), annotations.get(A_BUNDLE), ready,
                               None if ready else deployment_blocker(dep) or pod_blocker(pods))


def _what(body: Mapping[str, Any]) -> str:
    return f"{body.get('kind', 'object')} {body.get('metadata', {}).get('name', '?')}"


def router_config(action: SetWeights, namespace: str | None) -> dict[str, Any]:
    """The online router's config (cambrian.online.router.RouterConfig) for this rollout."""
    port = int(action.serving.get("port", 8080))
    ns = f".{namespace}.svc" if namespace else ""
    arms = []
    for i, w in enumerate(action.weights):
        arm = {"name": w.arm, "url": f"http://{w.service}{ns}:{port}", "weight": w.weight}
        if i == 0:
            arm["control"] = True
        arms.append(arm)
    cfg: dict[str, Any] = {"experiment": action.rollout, "salt": action.salt, "arms": arms, "phase": action.phase}
    if action.serving.get("collectorUrl"):
        cfg["collector"] = action.serving["collectorUrl"]
    return cfg


def service_of_url(url: str) -> str:
    """The Service an arm URL of router_config names (http://SERVICE[.NS.svc]:PORT)."""
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    return host.split(".")[0]


def router_manifests(action: SetWeights, namespace: str | None) -> tuple[dict, dict, dict]:
    name = router_name(action.owner)
    labels = {"app.kubernetes.io/component": "router", L_ROLLOUT: label_value(action.rollout), L_ARM: "router"}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, action.owner, labels),
          "data": {"router.yaml": yaml.safe_dump(router_config(action, namespace), sort_keys=False)}}
    dep = _server_deployment(
        name, action.owner, labels, action.serving,
        # the ConfigMap is the operator's (mounted read-only): the router's admin port takes no POST /weights
        ["cambrian", "route", "--config", "/etc/cambrian/router/router.yaml", "--read-only-config"],
        [{"name": "config", "configMap": {"name": name}}],
        [{"name": "config", "mountPath": "/etc/cambrian/router", "readOnly": True}], 1,
    )
    return cm, dep, _service(name, action.owner, labels, int(action.serving.get("port", 8080)))


def _forwards(rule: Mapping[str, Any]) -> bool:
    """A rule with backends: Cambrian's to set (reconcile/httproute.py); the others are left as written."""
    return bool(rule.get("backendRefs"))


def route_patch(route: Mapping[str, Any], backends: HR.Backends, holder: str | None, version: str) -> dict[str, Any]:
    """A merge patch of `route` (as read) setting every forwarding rule's backendRefs to `backends` and the holder,
    in one request (they never disagree). Everything else in a rule (matches, filters, name, ...) and the rules
    without backends are sent back as they were read: a merge patch replaces a list whole. Conditional on
    `version` (the reading the decision was made on; else the one read here): the API server answers 409 if the
    route changed since, so nothing written in between is overwritten (reconcile/httproute.py)."""
    refs = [{"name": service, "port": port, "weight": weight} for service, port, weight in backends]
    rules = [dict(r) for r in (route.get("spec") or {}).get("rules") or []]
    rules = [{**r, "backendRefs": refs} if _forwards(r) else r for r in rules] if any(map(_forwards, rules)) \
        else [*rules, {"backendRefs": refs}]
    meta: dict[str, Any] = {"annotations": {A_ROUTE_HOLDER: holder}}  # None: the merge patch removes it
    if version or (route.get("metadata") or {}).get("resourceVersion"):
        meta["resourceVersion"] = version or route["metadata"]["resourceVersion"]
    return {"metadata": meta, "spec": {"rules": rules}}


def httproute_patch(action: SetWeights, route: Mapping[str, Any]) -> dict[str, Any]:
    """The route to the rollout's router, held for it (action.route: reconcile/httproute.holder_backends)."""
    return route_patch(route, action.route, action.rollout, action.route_version or "")


def champion_route_patch(action: RouteChampion, route: Mapping[str, Any]) -> dict[str, Any]:
    return route_patch(route, HR.to(action.service, action.serving), None, action.route_version)


def parse_route(route: Mapping[str, Any]) -> RouteObservation:
    """An HTTPRoute (a plain dict) -> who holds it, its backends (weight 1 when unset, as Gateway API) and version.
    The backends are those of one forwarding rule when all have the same (as route_patch writes them), else all
    of them in a row, which no single backend list the core wants matches: it writes them again."""
    meta = route.get("metadata") or {}
    rules = [tuple((b.get("name", ""), int(b.get("port", 0)), int(b.get("weight", 1))) for b in r["backendRefs"])
             for r in (route.get("spec") or {}).get("rules") or [] if _forwards(r)]
    backends = rules[0] if rules and all(r == rules[0] for r in rules) else tuple(b for r in rules for b in r)
    return RouteObservation((meta.get("annotations") or {}).get(A_ROUTE_HOLDER) or None, backends,
                            str(meta.get("resourceVersion") or ""))


def routes_only_to(route: Mapping[str, Any], service: str) -> bool:
    """Every backend of the HTTPRoute's rules with traffic is `service`."""
    refs = [b for r in (route.get("spec") or {}).get("rules") or [] for b in r.get("backendRefs") or []
            if int(b.get("weight", 1)) > 0]
    return bool(refs) and all(b.get("name") == service for b in refs)


def rollout_object(action: CreateRollout) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Rollout",
            "metadata": _meta(action.name, action.owner, {"cambrian.dev/hypothesis": label_value(action.hypothesis)},
                              dict(action.annotations) or None),
            "spec": action.spec}


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

# proposer(action, existing Hypothesis objects) -> proposing.ProposalBatch (or a list of specs)
Proposer = Callable[[ProposeHypotheses, list], Any]


# Creates sent for every Hypothesis whose answer is dropped (`_preload_content=False`), by platform attribute.
RAW_CREATES = (("batch", "create_namespaced_job", "/apis/batch/v1/namespaces/{namespace}/jobs"),
               ("core", "create_namespaced_config_map", "/api/v1/namespaces/{namespace}/configmaps"),
               ("core", "create_namespaced_event", "/api/v1/namespaces/{namespace}/events"))


def unvalidated_create(api_client: Any, path: str, typed: Callable) -> Callable:
    """`typed` (a kubernetes client create method) for a dict body whose answer is not read: the body is sent
    as it is, skipping the client's pydantic validation of the dict into its models (V1Job, ...) and their
    serialization back (a third of the operator's own request CPU, 14% of all of it at 3,000 Hypotheses: a Job
    is a deep model). Errors are the same ApiExceptions; anything else goes to `typed`."""

    def create(namespace: str, body: Any, _preload_content: bool = True, **kwargs: Any) -> Any:
        if _preload_content or kwargs or not isinstance(body, dict):
            return typed(namespace, body, _preload_content=_preload_content, **kwargs)
        request = api_client.param_serialize(
            method="POST", resource_path=path, path_params={"namespace": namespace}, body=body,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            auth_settings=["BearerToken"])
        return api_client._call_with_legacy_options(request, {}, None, False, None, True)

    create.__name__ = getattr(typed, "__name__", "create")
    return create


def _discard(response: Any) -> None:
    """Read and drop a raw response (`_preload_content=False`: the created object is not decoded into
    client models, which the caller never reads), so that its connection goes back to the pool."""
    for method in ("drain_conn", "release_conn"):
        if callable(getattr(response, method, None)):
            getattr(response, method)()


# Journal entries of one step that make one Kubernetes Event together (KubernetesPlatform.record_step).
STEP_EVENTS = frozenset({"Proposed", "Validated", "TrainingStarted"})
# A Hypothesis step whose progress entries stop before TrainingStarted (an admission: Proposed, Validated; the
# operator writes that status before the Job's requests) is held this long for the object's next step to join
# its Event, so that the three are still one POST (issue 16: requests per object); then it goes alone.
HOLD_SECONDS = 300.0
HELD_CHECK_SECONDS = 5.0
_STEP_SPLIT = re.compile(r"(?:^|; )(" + "|".join(sorted(STEP_EVENTS)) + r"): ")


def _open_run(run: list[RecordJournal]) -> bool:
    """A Hypothesis' progress entries that its next step continues (admitted, not yet training)."""
    return (run[-1].owner.kind == "Hypothesis" and run[-1].event != "TrainingStarted"
            and all(a.event in STEP_EVENTS and not a.warning for a in run))


def _event_lost(event: Mapping[str, Any], exc: Exception) -> None:
    """Say that an Event was not recorded; quietly when its namespace is being deleted."""
    obj = event["involvedObject"]
    if namespace_terminating(exc):
        log.debug("event %s on %s/%s dropped: namespace %s is being deleted", event.get("reason"),
                  obj.get("kind"), obj.get("name"), obj.get("namespace"))
        return
    log.warning("could not record event %s on %s/%s: %s", event.get("reason"), obj.get("kind"), obj.get("name"),
                api_message(exc) if getattr(exc, "status", None) else exc)


_SIDE_REQUESTS: Any = None
_SIDE_LOCK = threading.Lock()


def _side_requests() -> Any:
    """The threads that send a step's independent requests beside it (a training Job's ConfigMap)."""
    global _SIDE_REQUESTS
    with _SIDE_LOCK:
        if _SIDE_REQUESTS is None:
            from concurrent.futures import ThreadPoolExecutor

            _SIDE_REQUESTS = ThreadPoolExecutor(8, thread_name_prefix="side-request")
        return _SIDE_REQUESTS


# Threads that post Events, each for its own share of the objects (an object's Events stay in order). One thread
# fell behind at 10,000 Hypotheses across 10 once the Jobs were created beside the admissions: 1,913 of about
# 9,500 posted in the window (bench/README.md, operator).
EVENT_THREADS = 4


class EventPoster:
    """Posts Kubernetes Events on background threads, each object's in the order they were recorded, as client-go's
    event broadcaster does: a reconcile step neither waits for its events nor fails for one (they are best effort),
    so a Hypothesis' status is written a few requests sooner. `tick` runs every `every` seconds on the first.
    `gate()`, when set, is waited on before each POST (the operator's: while new objects' admissions are queued)."""

    gate: Callable[[], Any] | None = None

    def __init__(self, post: Callable[[str, dict], Any], tick: Callable[[], Any] | None = None,
                 every: float = HELD_CHECK_SECONDS, threads: int = EVENT_THREADS):
        import queue
        import threading

        self._post, self._tick, self._every = post, tick, every
        self._queues: list[Any] = [queue.SimpleQueue() for _ in range(max(1, threads))]
        for i, q in enumerate(self._queues):
            threading.Thread(target=self._loop, args=(q, i == 0), daemon=True, name="event-poster").start()

    def __call__(self, namespace: str, event: dict) -> None:
        obj = event.get("involvedObject") or {}
        key = obj.get("uid") or f"{obj.get('kind')}/{obj.get('name')}"
        self._queues[hash(key) % len(self._queues)].put((namespace, event))

    def _loop(self, q: Any, ticks: bool) -> None:
        import queue

        last = time.monotonic()
        while True:
            try:
                namespace, event = q.get(timeout=self._every)
                try:
                    if self.gate is not None:
                        self.gate()
                    self._post(namespace, event)
                except Exception as exc:  # noqa: BLE001 - events are best effort
                    _event_lost(event, exc)
            except queue.Empty:
                pass
            if ticks and self._tick is not None and time.monotonic() - last >= self._every:
                last = time.monotonic()
                try:
                    self._tick()
                except Exception as exc:  # noqa: BLE001
                    log.warning("held events: %s", exc)


class _ConfigMapRecord:
    """A wake-up's proposals between asking and creating (operator/proposing.propose_wakeup): a ConfigMap
    `{prefix}-proposals` owned by the Evolution (deleted with it if a drop never came)."""

    LIMIT = 900_000  # a ConfigMap holds at most 1 MiB

    def __init__(self, platform: "KubernetesPlatform", owner: Owner):
        self.platform, self.owner, self.ns = platform, owner, owner.namespace or "default"

    def load(self, prefix: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            cm = self.platform.core.read_namespaced_config_map(f"{prefix}-proposals", self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise refusal(exc, f"ConfigMap {prefix}-proposals") from exc
        return json.loads((cm.data or {})["proposals.json"])

    def save(self, prefix: str, record: dict[str, Any]) -> None:
        text = json.dumps(record, sort_keys=True)
        if len(text) > self.LIMIT:  # too big to keep: a kill before the creates end loses the rest of this answer
            log.warning("wake-up %s: its proposals (%d bytes) are too big for a ConfigMap; not recorded", prefix, len(text))
            return
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{prefix}-proposals", self.owner, {}),
                "data": {"proposals.json": text}}
        self.platform._create(self.platform.core.create_namespaced_config_map, self.owner.namespace, body, raw=True)

    def drop(self, prefix: str) -> None:
        self.platform._delete(self.platform.core.delete_namespaced_config_map, f"{prefix}-proposals",
                              self.owner.namespace)


class KubernetesPlatform:
    """Sends the builders' manifests. `proposer(action)` returns Hypothesis specs for a wake-up.
    `background_events`: Events go out on an EventPoster instead of inside the reconcile step."""

    observed: Any = None  # operator/indexed.IndexedCluster once the kopf indexes feed it: Jobs, Pods without LISTs
    _events: EventPoster | None = None
    _held: dict[str, tuple[float, list[RecordJournal]]] | None = None  # background events only (record_step)

    def __init__(self, api_client: Any = None, prometheus_url: str | None = None, proposer: Any = None,
                 config: Mapping[str, Any] | None = None, background_events: bool = False,
                 promql_url: str | None = None, prometheus_timeout: float = 5.0):
        from kubernetes import client

        self._client = client
        self.api = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        for api, method, path in RAW_CREATES:  # the creates sent per Hypothesis, without the client's model round trip
            target = getattr(self, api)
            setattr(target, method, unvalidated_create(self.api, path, getattr(target, method)))
        self.prometheus_url = prometheus_url
        # the Prometheus holding the user's own series (PromQL metrics and guardrails), when not the one above
        self.promql_url = promql_url
        self.prometheus_timeout = prometheus_timeout
        self.proposer = proposer
        self.config = dict(config or {})
        self._events = EventPoster(self._post_event, tick=self.flush_held) if background_events else None
        self._held = {} if background_events else None  # owner uid -> (since, entries)
        self._held_lock = threading.Lock()

    def _templated(self, obj: dict[str, Any], kind: str, role: str) -> dict[str, Any]:
        return apply_pod_template(obj, self.config.get(kind), role, self.config.get("imagePullSecrets"))

    # --- helpers ---------------------------------------------------------------------------
    def _create(self, fn: Callable, namespace: str | None, body: dict,
                on_exists: Callable[[], Any] | None = None, raw: bool = False) -> None:
        """Create BODY; when it exists already (the name is deterministic, so it is ours) call ON_EXISTS, if any,
        to bring it up to date. `raw`: FN is a kubernetes client method; its answer is dropped undecoded."""
        from kubernetes.client.rest import ApiException

        try:
            if raw:
                _discard(fn(namespace or "default", body, _preload_content=False))
            else:
                fn(namespace or "default", body)
        except ApiException as exc:
            if exc.status != 409:
                raise refusal(exc, _what(body)) from exc
            if on_exists is None:
                return
            try:
                on_exists()
            except ApiException as exc2:
                raise refusal(exc2, _what(body)) from exc2

    def _replace_or_create_config_map(self, cm: dict, namespace: str | None) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.core.replace_namespaced_config_map(cm["metadata"]["name"], namespace or "default", cm)
        except ApiException as exc:
            if exc.status != 404:
                raise refusal(exc, _what(cm)) from exc
            self._create(self.core.create_namespaced_config_map, namespace, cm)

    def _delete(self, fn: Callable, name: str, namespace: str | None) -> None:
        from kubernetes.client.rest import ApiException

        try:
            fn(name, namespace or "default", propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    # --- training --------------------------------------------------------------------------
    def submit_training_job(self, action: CreateTrainingJob) -> None:
        """The run's ConfigMap and its Job, created at the same time: a pod whose ConfigMap volume is not
        there yet waits for it (the kubelet retries the mount), so the step waits one round trip instead of
        two (issue 16: a new Hypothesis' first phase). Either failing fails the step, whose replay creates
        what is missing (409s for the rest)."""
        ns = action.owner.namespace
        job = self.training_job(action)  # a Job it refuses (ActionRefused) leaves no ConfigMap behind
        config = _side_requests().submit(self._create, self.core.create_namespaced_config_map, ns,
                                         training_configmap(action), raw=True)
        try:
            if gang.workers(action.training) > 1:
                job = gang.gang_job(job, action.training, self._gang_network(action), TRAINER, scorer=SCORER)
            self._create(self.batch.create_namespaced_job, ns, job, raw=True)
        finally:
            failed = config.exception()  # waits for it; the Job's own failure, if any, goes first
        if failed is not None:
            raise failed
        if self.observed is not None:  # read as Pending until the Job index delivers it (indexed.Submitted)
            self.observed.submitted.add({**job, "metadata": {**job["metadata"], "namespace": ns or "default"}})

    def _gang_network(self, action: CreateTrainingJob) -> str:
        """The rendezvous Service and the gang's NetworkPolicy (operator/platform/gang.py); the Service's
        cluster IP, which the Job's pods are given as their rendezvous address."""
        ns = action.owner.namespace or "default"
        meta = _meta(action.name, action.owner, {"app.kubernetes.io/component": "training-rendezvous"})
        self._create(self.core.create_namespaced_service, ns, gang.rendezvous_service(action.name, meta))
        networking = self._client.NetworkingV1Api(self.api)
        self._create(networking.create_namespaced_network_policy, ns, gang.gang_network_policy(action.name, meta))
        ip = self.core.read_namespaced_service(action.name, ns).spec.cluster_ip
        if not ip or ip == "None":
            raise ActionRefused(f"Service {action.name}", "it got no cluster IP (the rendezvous needs one)", False)
        return ip

    def training_job(self, action: CreateTrainingJob) -> dict[str, Any]:
        """The Job as it is sent: the Evolution's settings over the operator configuration's template."""
        return self._templated(training_job(action, self.config.get("training")), "training", "trainer")

    def training_jobs(self, owner: Owner) -> list[JobObservation]:
        ns = owner.namespace or "default"
        out = []
        for j, pods_of in self._jobs_with_pods(ns, owner):
            if not any(r.get("uid") == owner.uid for r in j["metadata"].get("ownerReferences") or []):
                continue  # a leftover of an earlier object with the same name
            pods = pods_of(j["metadata"]["name"])
            seen = parse_job(j, pods)
            if self.observed is not None and seen.state in ("Succeeded", "Failed") and pods and _terminated(pods) is None:
                seen = replace(seen, state="Running")  # the Pod's last status is still on its way (another watch)
            if seen.state in ("Pending", "Suspended") and seen.blocked is None:
                seen = replace(seen, blocked=self._missing_prerequisite(j, pods))
            out.append(seen)
        return out

    def _jobs_with_pods(self, ns: str, owner: Owner) -> list[tuple[dict, Callable[[str], list]]]:
        """The owner's Jobs (plain dicts) and how to read a Job's Pods: from the watch-fed indexes when the
        operator has them (`observed`, operator/indexed.py), else one LIST each."""
        if self.observed is not None:
            return [(j, lambda name: self.observed.pods_of(ns, name))
                    for j in self.observed.jobs_of(ns, owner.kind.lower(), label_value(owner.name))]
        sel = f"{L_OWNER_KIND}={owner.kind.lower()},{L_OWNER}={label_value(owner.name)}"
        pods = lambda name: [self._dict(p) for p in self.core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items]
        return [(self._dict(j), pods) for j in self.batch.list_namespaced_job(ns, label_selector=sel).items]

    def _missing_prerequisite(self, job: Mapping[str, Any], pods: list) -> str | None:
        """What pods cannot show because none exists: a Job whose PriorityClass is missing gets no pod
        at all, and a Job for a Kueue queue stays suspended when the queue (or Kueue) is missing.
        Looked up only when it applies; None when the lookup is not allowed (RBAC) or fails."""
        from kubernetes.client.rest import ApiException

        ns = job.get("metadata", {}).get("namespace") or "default"
        pod_spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
        queue = (job.get("metadata", {}).get("labels") or {}).get(KUEUE_QUEUE)
        try:
            if not pods and pod_spec.get("priorityClassName"):
                name = pod_spec["priorityClassName"]
                try:
                    self._client.SchedulingV1Api(self.api).read_priority_class(name)
                except ApiException as exc:
                    if exc.status == 404:
                        return f"PriorityClass {name} does not exist (spec.training.priorityClassName)"
            if (job.get("spec") or {}).get("suspend") and queue:
                try:
                    self.custom.get_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", ns, "localqueues", queue)
                except ApiException as exc:
                    if exc.status == 404:
                        return (f"Kueue LocalQueue {queue} does not exist in namespace {ns}, or Kueue is not "
                                "installed (spec.training.queueName); the Job stays suspended")
        except Exception as exc:  # noqa: BLE001 - a diagnosis must never fail the reconcile
            log.debug("could not look up the prerequisites of job %s: %s", job.get("metadata", {}).get("name"), exc)
        return None

    def delete_job(self, action: DeleteJob) -> None:
        self._delete(self.batch.delete_namespaced_job, action.name, action.owner.namespace)
        # a gang's rendezvous Service and NetworkPolicy (404 for a single-pod Job)
        self._delete(self.core.delete_namespaced_service, action.name, action.owner.namespace)
        networking = self._client.NetworkingV1Api(self.api)
        self._delete(networking.delete_namespaced_network_policy, action.name, action.owner.namespace)

    # --- serving ---------------------------------------------------------------------------
    def deploy_arm(self, action: DeployArm) -> None:
        dep, svc = arm_manifests(action)
        dep = self._templated(dep, "serving", "serving")
        self._create(self.apps.create_namespaced_deployment, action.owner.namespace, dep)
        self._create(self.core.create_namespaced_service, action.owner.namespace, svc)

    def arms(self, owner: Owner) -> dict[str, ArmObservation]:
        ns = owner.namespace or "default"
        out = {}
        for d in self.apps.list_namespaced_deployment(ns, label_selector=f"{L_ROLLOUT}={label_value(owner.name)}").items:
            arm = (d.metadata.labels or {}).get(L_ARM)
            if not arm or arm == "router" or not any(r.uid == owner.uid for r in d.metadata.owner_references or []):
                continue
            ready = (d.status.ready_replicas or 0) >= 1 if d.status else False
            blocked = None
            if not ready:  # why not, when the Deployment or its pods say so
                blocked = deployment_blocker(self._dict(d)) or pod_blocker([self._dict(p) for p in self.core.list_namespaced_pod(
                    ns, label_selector=f"{L_ROLLOUT}={label_value(owner.name)},{L_ARM}={arm}").items])
            out[arm] = ArmObservation(d.metadata.name, True, ready, blocked)
        return out

    def delete_arm(self, action: DeleteArm) -> None:
        self._delete(self.apps.delete_namespaced_deployment, action.name, action.owner.namespace)
        self._delete(self.core.delete_namespaced_service, action.name, action.owner.namespace)

    def set_weights(self, action: SetWeights) -> None:
        ns = action.owner.namespace
        if action.route_version is not None:  # first: a route taken since (409) leaves the router as it was too
            self._patch_route(ns, action.serving, lambda route: httproute_patch(action, route))
        cm, dep, svc = router_manifests(action, ns)
        dep = self._templated(dep, "serving", "router")
        self._replace_or_create_config_map(cm, ns)
        self._create(self.apps.create_namespaced_deployment, ns, dep)
        self._create(self.core.create_namespaced_service, ns, svc)

    def _patch_route(self, namespace: str | None, serving: Mapping[str, Any],
                     patch: Callable[[dict], dict]) -> None:
        """Read the route, then write `patch(route)`: its backends in the user's rules (route_patch)."""
        from kubernetes.client.rest import ApiException

        route = serving["httpRoute"]
        try:
            self.custom.patch_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", namespace or "default", "httproutes", route["name"],
                patch(self._get_route(namespace or "default", serving)))
        except ApiException as exc:
            if exc.status == 404:  # a prerequisite the user creates: say so and look again later
                raise ActionRefused(f"HTTPRoute {route['name']}", "it does not exist (spec.serving.httpRoute)",
                                    False, 404) from exc
            raise refusal(exc, f"HTTPRoute {route['name']}") from exc  # 409: written since, the step is replayed

    def route_champion(self, action: RouteChampion) -> None:
        self._patch_route(action.owner.namespace, action.serving, lambda route: champion_route_patch(action, route))

    def _get_route(self, namespace: str, serving: Mapping[str, Any]) -> dict:
        return self.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes",
                                                        serving["httpRoute"]["name"])

    def _read_route(self, namespace: str, serving: Mapping[str, Any]) -> dict | None:
        """serving.httpRoute; None without a route, or when it cannot be read."""
        from kubernetes.client.rest import ApiException

        if not serving.get("httpRoute"):
            return None
        try:
            return self._get_route(namespace, serving)
        except ApiException as exc:
            log.debug("cannot read HTTPRoute %s: %s", serving["httpRoute"]["name"], exc)
            return None  # missing, or not allowed (the chart's gateway.enabled): nothing to do

    def http_route(self, owner: Owner, serving: Mapping[str, Any]) -> RouteObservation | None:
        from kubernetes.client.rest import ApiException

        if not serving.get("httpRoute"):
            return None
        try:
            return parse_route(self._get_route(owner.namespace or "default", serving))
        except ApiException as exc:
            if exc.status in (403, 404):  # missing or not allowed: the write the core asks for says so
                return RouteObservation(None)
            raise  # it may be held: nothing is decided on a guess, the step is tried again

    def clear_weights(self, action: ClearWeights) -> None:
        name = router_name(action.owner)
        ns = action.owner.namespace
        self._delete(self.apps.delete_namespaced_deployment, name, ns)
        self._delete(self.core.delete_namespaced_service, name, ns)
        self._delete(self.core.delete_namespaced_config_map, name, ns)

    def _read(self, fn: Callable, name: str, namespace: str | None) -> Any:
        """fn(name, namespace): the object, None when there is none (404)."""
        from kubernetes.client.rest import ApiException

        try:
            return fn(name, namespace or "default")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def router_ready(self, owner: Owner) -> bool:
        dep = self._read(self.apps.read_namespaced_deployment, router_name(owner), owner.namespace)
        return bool(dep is not None and dep.status and (dep.status.ready_replicas or 0) >= 1)

    def _router_arms(self, owner: Owner, read: Callable[[Mapping[str, Any]], Any]) -> dict | None:
        """`read` of each arm of the router's config (its ConfigMap): arm -> value; None without one."""
        cm = self._read(self.core.read_namespaced_config_map, router_name(owner), owner.namespace)
        if cm is None:
            return None
        try:
            cfg = yaml.safe_load((cm.data or {}).get("router.yaml", "")) or {}
            return {a["name"]: read(a) for a in cfg.get("arms", [])}
        except (yaml.YAMLError, TypeError, KeyError, ValueError, AttributeError):
            return None  # unreadable: the core rewrites it

    def router_weights(self, owner: Owner, serving: Mapping[str, Any]) -> dict[str, int] | None:
        return self._router_arms(owner, lambda arm: int(arm.get("weight", 0)))

    def router_services(self, owner: Owner, serving: Mapping[str, Any]) -> dict[str, str] | None:
        return self._router_arms(owner, lambda arm: service_of_url(arm["url"]))

    # --- metrics ---------------------------------------------------------------------------
    def prometheus_readout(self, rollout: str, gauges: Mapping[str, Mapping[str, str]] | None = None) -> Readout:
        if not self.prometheus_url:
            raise MetricsUnavailable("no Prometheus URL configured (--prometheus-url or CAMBRIAN_PROMETHEUS_URL)")
        with prometheus(self.prometheus_url, self.prometheus_timeout) as client:
            readout = client.read_experiment(rollout)
            readout.values = read_gauges(client, self.promql_url, gauges, readout.time, self.prometheus_timeout)
            return readout

    def check_promql(self, rollout: str, queries: Mapping[str, str]) -> None:
        url = self.promql_url or self.prometheus_url
        if not url:
            raise MetricsUnavailable("no Prometheus URL configured (--prometheus-url or CAMBRIAN_PROMETHEUS_URL)")
        check_queries(url, queries, self.prometheus_timeout)

    # --- the loop --------------------------------------------------------------------------
    def create_rollout(self, action: CreateRollout) -> None:
        body = rollout_object(action)
        self._create(
            lambda ns, b: self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "rollouts", b),
            action.owner.namespace, body,
        )

    def update_champion(self, action: UpdateChampion) -> None:
        """Create the production Deployment + Service `<evolution>-champion`, or replace the Deployment's
        spec (a rolling update, see champion_manifests) and keep the Service's port in step."""
        ns = action.owner.namespace or "default"
        dep, svc = champion_manifests(action)
        dep = self._templated(dep, "serving", "serving")
        self._create(self.apps.create_namespaced_deployment, ns, dep,
                     lambda: self.apps.replace_namespaced_deployment(action.name, ns, dep))
        ports = {"spec": {"ports": svc["spec"]["ports"]}}
        self._create(self.core.create_namespaced_service, ns, svc,
                     lambda: self.core.patch_namespaced_service(action.name, ns, ports))

    def champion_serving(self, owner: Owner, serving: Mapping[str, Any]) -> ChampionObservation | None:
        ns = owner.namespace or "default"
        name = serving_name(owner.name, owner.uid)
        d = self._read(self.apps.read_namespaced_deployment, name, ns)
        if d is None:
            return None
        if not any(r.uid == owner.uid for r in d.metadata.owner_references or []):
            return None  # a leftover of an earlier Evolution of that name: the core takes it over
        dep = self._dict(d)
        seen = parse_champion(dep, [])
        if not seen.ready and not seen.blocked:
            sel = ",".join(f"{k}={v}" for k, v in _selector(dep["metadata"].get("labels") or {}).items())
            seen = parse_champion(dep, [self._dict(p) for p in self.core.list_namespaced_pod(ns, label_selector=sel).items])
        if not seen.ready:
            return seen
        route = self._read_route(ns, serving)
        return seen if route is None else replace(seen, routed=routes_only_to(route, name), route=parse_route(route))

    def retire_rollout(self, action: RetireRollout) -> None:
        """Roll the experiment back through its own approval annotation: the Rollout then sends every user
        to control and deletes the treatment arms itself (the operator never needs to delete Rollouts)."""
        self._annotate(action.owner, "Rollout", action.name, {A_APPROVE: "rollback",
                                                                A_RETIRED: action.reason[:1024] or "left the top K"})

    def mark(self, action: Mark) -> None:
        self._annotate(action.owner, action.kind, action.name, {action.annotation: action.value})

    def _annotate(self, owner: Owner, kind: str, name: str, annotations: dict[str, str]) -> None:
        """Merge `annotations` into an Evolution's child; one deleted since is left alone."""
        from kubernetes.client.rest import ApiException

        from cambrian.operator.loop import PLURALS

        body = {"metadata": {"annotations": annotations}}
        try:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, owner.namespace or "default", PLURALS[kind],
                                                       name, body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def propose(self, action: ProposeHypotheses) -> None:
        """Ask the agents once per wake-up; Hypotheses are named `{prefix}-{i}`. A replayed wake-up that
        already created some finds them and asks nobody again (an LLM answer is paid for once)."""
        if self.proposer is None:
            self.record(RecordJournal(action.owner, "NoProposer",
                                      "no proposer is wired into this operator; create Hypotheses by hand", {}, True))
            return
        from cambrian.operator.proposing import propose_wakeup

        ns = action.owner.namespace or "default"
        if self.observed is not None:
            existing = self.observed.of_evolution("hypotheses", ns, action.owner.name)
        else:
            existing = [h for h in self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "hypotheses").get("items", [])
                        if ((h.get("spec") or {}).get("evolutionRef") or {}).get("name") == action.owner.name]

        def create(name: str, spec: dict, labels: dict, annotations: dict) -> None:
            body = {"apiVersion": API_VERSION, "kind": "Hypothesis",
                    "metadata": _meta(name, action.owner, labels, annotations or None), "spec": spec}
            try:
                self._create(
                    lambda ns, b: self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "hypotheses", b),
                    action.owner.namespace, body,
                )
            except ActionRefused as exc:
                if not exc.permanent:
                    raise
                # An agent wrote something admission refuses: that proposal is lost, the loop is not.
                self.record(RecordJournal(action.owner, "ProposalRefused", str(exc)[:1024], {}, True))
                return False
            return True

        made = propose_wakeup(action, existing, self.proposer, _ConfigMapRecord(self, action.owner), create,
                              self._charge_unattributed(action.owner))
        if made is not None:
            self.record(RecordJournal(action.owner, "Proposed", made[0], {}, made[1]))

    def _charge_unattributed(self, owner: Owner) -> Callable[[int, int, float], None]:
        """Books a wake-up's LLM spend on the Evolution's annotation (views.A_UNATTRIBUTED) when no Hypothesis
        carries it: read, then a merge patch that names the resourceVersion read (a concurrent writer makes it
        409 and it is read again). Only wake-ups that created nothing pay these two requests."""
        from kubernetes.client.rest import ApiException

        ns = owner.namespace or "default"

        def charge(wakeup: int, tokens: int, dollars: float) -> None:
            for _ in range(5):
                try:
                    obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "evolutions", owner.name)
                except ApiException as exc:
                    if exc.status == 404:
                        return  # the Evolution is gone: nothing left to budget
                    raise
                meta = obj.get("metadata") or {}
                value = views.charge_unattributed(meta.get("annotations"), wakeup, tokens, dollars)
                if value is None:
                    return  # charged before a restart
                body = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                                     "annotations": {views.A_UNATTRIBUTED: value}}}
                try:
                    self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "evolutions", owner.name, body)
                    return
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            raise ActionRefused(f"Evolution {owner.name}: its spend annotation kept changing under the operator")

        return charge

    def _post_event(self, namespace: str, event: dict) -> None:
        _discard(self.core.create_namespaced_event(namespace, event, _preload_content=False))

    def record_step(self, actions: list[RecordJournal]) -> None:
        """The journal entries of one reconcile step, as Kubernetes Events. A run of progress entries on one
        object (STEP_EVENTS: a new Hypothesis' Proposed, Validated, TrainingStarted) is one Event, its reason
        the last entry's, its message every entry's: one POST instead of three (issue 16: requests per
        object). Every other entry (Resumed, Warnings, ...) stays an Event of its own reason. With background
        events, a Hypothesis step that ends in such a run before TrainingStarted is held (HOLD_SECONDS) and
        goes out with the object's next step's entries."""
        held = self._take_held({a.owner.uid for a in actions})
        runs: list[list[RecordJournal]] = []
        for a in [*held, *actions]:
            mergeable = not a.warning and a.event in STEP_EVENTS
            if mergeable and runs and runs[-1][-1].owner == a.owner and runs[-1][-1].event in STEP_EVENTS \
                    and not runs[-1][-1].warning:
                runs[-1].append(a)
            else:
                runs.append([a])
        if self._held is not None and runs and _open_run(runs[-1]):
            run = runs.pop()
            with self._held_lock:
                self._held[run[-1].owner.uid] = (time.monotonic(), run)
        for run in runs:
            self._record_run(run)

    def _record_run(self, run: list[RecordJournal]) -> None:
        if len(run) == 1:
            self.record(run[0])
            return
        self.record(replace(run[-1], message="; ".join(f"{a.event}: {a.message}" for a in run)))

    def _take_held(self, uids: set[str]) -> list[RecordJournal]:
        if not self._held:  # None: nothing is ever held
            return []
        with self._held_lock:
            return [e for uid in uids for e in self._held.pop(uid, (0.0, []))[1]]

    def flush_held(self, older_than: float = HOLD_SECONDS) -> None:
        """Record the held entries that no next step joined within `older_than` seconds (the poster's tick)."""
        if not self._held:
            return
        cutoff = time.monotonic() - older_than
        with self._held_lock:
            due = [uid for uid, (since, _) in self._held.items() if since <= cutoff]
            runs = [self._held.pop(uid)[1] for uid in due]
        for run in runs:
            self._record_run(run)

    @staticmethod
    def journal_entries(reason: str, message: str) -> list[tuple[str, str]]:
        """The journal entries an Event carries: the inverse of record_step's merge (for readers that compare
        journals, such as the platform parity test)."""
        if reason not in STEP_EVENTS or not any(message.startswith(f"{e}: ") for e in STEP_EVENTS):
            return [(reason, message)]
        parts = _STEP_SPLIT.split(message)  # ["", reason1, message1, reason2, message2, ...]
        return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]

    def record(self, action: RecordJournal) -> None:
        o = action.owner
        now = datetime.now(timezone.utc).isoformat()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{o.name[:200]}.", "namespace": o.namespace or "default"},
            "involvedObject": {"apiVersion": API_VERSION, "kind": o.kind, "name": o.name, "uid": o.uid,
                               "namespace": o.namespace or "default"},
            "reason": action.event, "message": action.message[:1024],
            "type": "Warning" if action.warning else "Normal",
            "source": {"component": "cambrian-operator"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        log.info("%s %s/%s: %s %s", o.kind, o.namespace, o.name, action.event, action.message)
        if self._events is not None:
            self._events(o.namespace or "default", event)
            return
        try:
            self._post_event(o.namespace or "default", event)
        except Exception as exc:  # noqa: BLE001 - events are best effort: never fail a reconcile for one
            _event_lost(event, exc)
