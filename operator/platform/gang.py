"""The multi-worker parts of a training Job: spec.training.workers > 1 makes it a data-parallel gang.

Kubernetes' own pieces, no operator of our own:
- an Indexed Job (completionMode Indexed, parallelism = completions = workers): pod i is torchrun node i;
  `backoffLimit: 0` and a podFailurePolicy that fails the Job on any non-zero exit of a pod's step: one lost
  pod fails the whole gang (the controller terminates the rest) and the hypothesis' attempt is retried,
  never left hanging. A worker *process* that dies inside a pod is restarted by that pod's torchrun agent
  from the last checkpoint (trainer/distributed.py) without failing anything;
- a Service for the rendezvous that selects the Job's pod of index 0 (whose agent hosts torchrun's c10d
  store, `--rdzv-conf is_host=true`). It has a cluster IP, so the pods meet at a literal address: training
  pods keep DNS off (charts/cambrian networkPolicy.dns), where a headless Service would need lookups;
- a NetworkPolicy that lets the gang's pods, and only they, reach one another (the chart's policy denies
  training pods all traffic; policies add up);
- with spec.training.queueName, Kueue admits the suspended Job as one Workload of `workers` pods: all of its
  quota or none, so a partial gang never holds GPUs. The Job carries no kueue.x-k8s.io/job-min-parallelism
  annotation, which would allow partial admission.
"""

from __future__ import annotations

from typing import Any, Mapping

RDZV_PORT = 29400
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def workers(training: Mapping[str, Any]) -> int:
    return int(training.get("workers") or 1)


def processes_per_pod(training: Mapping[str, Any]) -> int:
    """One torchrun worker per GPU of the pod (spec.training.gpusPerWorker, else gpu.count), one on CPU."""
    gpus = training.get("gpusPerWorker")
    if gpus is None:
        gpus = int((training.get("gpu") or {}).get("count", 0))
    return max(1, int(gpus))


def gpu_count(training: Mapping[str, Any]) -> Mapping[str, Any]:
    """spec.training as training_resources reads it: gpusPerWorker, when set, is each pod's GPU count."""
    if training.get("gpusPerWorker") is None:
        return training
    return {**training, "gpu": {**(training.get("gpu") or {}), "count": int(training["gpusPerWorker"])}}


def rendezvous_service(name: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Pod 0's address for the other pods' torchrun agents (named like the Job; deleted with it)."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": dict(metadata),
        "spec": {"selector": {JOB_NAME_LABEL: name, INDEX_LABEL: "0"}, "publishNotReadyAddresses": True,
                 "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}]},
    }


def gang_network_policy(name: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The gang's pods may talk to each other (rendezvous and collectives), to nothing else."""
    peers = [{"podSelector": {"matchLabels": {JOB_NAME_LABEL: name}}}]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": dict(metadata),
        "spec": {"podSelector": {"matchLabels": {JOB_NAME_LABEL: name}}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": peers}], "egress": [{"to": peers}]},
    }


def gang_job(job: dict[str, Any], training: Mapping[str, Any], rendezvous_ip: str, trainer: str,
             prepare: str = "prepare", scorer: str = "scorer") -> dict[str, Any]:
    """The single-pod training Job made a gang of `workers` pods meeting at rendezvous_ip (the Service's).

    Each pod keeps the training pod's steps (operator/platform/kubernetes.py `training_job`): its `prepare`
    step writes one shard per worker, its `trainer` step (candidate code) runs torchrun's agent for this node
    with the rendezvous flags, and its `scorer` reads the outcome: only the node whose workers held global
    rank 0 has a model, predictions and metrics; the others' scorers end 0 as workers (trainer/train.py
    `score_pod`) and the operator reads the pod that reports metrics."""
    n, per_pod = workers(training), processes_per_pod(training)
    name = job["metadata"]["name"]
    spec = job["spec"]
    # any step ending non-zero in any pod fails the whole gang (a trainer step itself always ends 0 and leaves
    # its outcome to the scorer; one killed by the kubelet, for memory say, does not)
    spec.update(completionMode="Indexed", completions=n, parallelism=n, backoffLimit=0,
                podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {
                    "operator": "NotIn", "values": [0]}}]})
    pod = spec["template"]["spec"]
    steps = {c["name"]: c for c in [*pod.get("initContainers", []), *pod["containers"]]}
    step = steps[trainer]
    step["env"] = [*step.get("env", []),
                   {"name": "CAMBRIAN_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    # JOB_COMPLETION_INDEX is set by the Job controller in every container of an Indexed Job
    total = ["--workers", str(n * per_pod)]
    step["command"] = [*step["command"], *total, "--nodes", str(n),
                       "--rdzv-endpoint", f"{rendezvous_ip}:{RDZV_PORT}", "--rdzv-id", name,
                       "--node-index", "$(JOB_COMPLETION_INDEX)", "--local-addr", "$(CAMBRIAN_POD_IP)"]
    step.setdefault("ports", []).append({"name": "rendezvous", "containerPort": RDZV_PORT, "protocol": "TCP"})
    for trusted in (prepare, scorer):  # the shards to write; the worker count the metrics report
        steps[trusted]["command"] = [*steps[trusted]["command"], *total]
    return job
