"""spec.training.workers > 1: the training Job becomes a data-parallel gang (operator/platform/gang.py)."""

from __future__ import annotations

import json

import pytest

from cambrian.operator import api
from cambrian.operator.platform import gang
from cambrian.operator.platform import kubernetes as K
from cambrian.trainer.distributed import Distribution, torchrun_args

from .test_kubernetes_platform import job_action


def test_a_gang_is_an_indexed_job_that_fails_as_a_whole():
    a = job_action(workers=3, gpusPerWorker=4)
    job = gang.gang_job(K.training_job(a), a.training, "10.96.0.7", K.TRAINER, scorer=K.SCORER)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0
    (rule,) = spec["podFailurePolicy"]["rules"]
    # any step of any pod (the scorer of a pod whose training failed, a step the kubelet killed)
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {"operator": "NotIn", "values": [0]}
    assert spec["suspend"] is True and job["metadata"]["labels"][K.KUEUE_QUEUE] == "q"  # Kueue admits it whole
    assert "kueue.x-k8s.io/job-min-parallelism" not in job["metadata"].get("annotations", {})
    pod = spec["template"]["spec"]
    (scorer,) = pod["containers"]
    steps = {c["name"]: c for c in pod["initContainers"]}
    trainer = steps[K.TRAINER]
    for c in (scorer, trainer):
        assert c["resources"]["limits"]["amd.com/gpu"] == "4"  # gpusPerWorker is each pod's GPU count
    # the rendezvous flags reach the step that runs the candidate's training (python -m cambrian.trainer.pod)
    assert trainer["command"][:4] == ["python", "-m", "cambrian.trainer.pod", "train"]
    flags = dict(zip(trainer["command"][4::2], trainer["command"][5::2]))
    assert flags["--workers"] == "12" and flags["--nodes"] == "3"  # 4 processes (one per GPU) in each pod
    assert flags["--rdzv-endpoint"] == "10.96.0.7:29400" and flags["--rdzv-id"] == a.name
    assert flags["--node-index"] == "$(JOB_COMPLETION_INDEX)" and flags["--local-addr"] == "$(CAMBRIAN_POD_IP)"
    assert {"name": "CAMBRIAN_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in trainer["env"]
    assert trainer["ports"] == [{"name": "rendezvous", "containerPort": gang.RDZV_PORT, "protocol": "TCP"}]
    # prepare writes 12 shards, the scorer reports 12 workers; neither runs candidate code nor meets the others
    for trusted in (steps["prepare"], scorer):
        assert trusted["command"][-2:] == ["--workers", "12"] and "--rdzv-endpoint" not in trusted["command"]
    assert "--pod-stage" in scorer["command"] and "--rdzv-endpoint" not in steps["predictor"]["command"]


def test_one_worker_stays_a_plain_job_and_cpu_pods_run_one_process():
    assert gang.workers(job_action().training) == 1
    assert gang.processes_per_pod(job_action(gpu={"count": 0}).training) == 1
    assert gang.processes_per_pod(job_action().training) == 2  # gpu.count when gpusPerWorker is unset


def test_the_rendezvous_and_the_policy_select_only_this_gang():
    meta = {"name": "j", "namespace": "n"}
    svc = gang.rendezvous_service("j", meta)
    assert svc["spec"]["selector"] == {gang.JOB_NAME_LABEL: "j", gang.INDEX_LABEL: "0"}
    pol = gang.gang_network_policy("j", meta)["spec"]
    peers = [{"podSelector": {"matchLabels": {gang.JOB_NAME_LABEL: "j"}}}]
    assert pol["ingress"] == [{"from": peers}] and pol["egress"] == [{"to": peers}]


def test_the_metrics_come_from_the_gang_member_that_has_them():
    def pod(created, message, code=0):
        term = {"exitCode": code, "message": json.dumps(message)}
        return {"metadata": {"creationTimestamp": created},
                "status": {"containerStatuses": [{"name": K.SCORER, "state": {"terminated": term}}]}}

    scorer = pod("2026-01-01T00:00:00Z", {"v": 1, "metrics": {"val_loss": 0.4}})
    # a pod without rank 0's model: its scorer ends 0 without metrics.json (what the wrapper then writes)
    worker = pod("2026-01-01T00:00:01Z", {"v": 1, "exit_code": 0,
                                          "error": {"stage": "metrics", "reason": "no readable metrics.json"}})
    job = {"metadata": {"name": "j"}, "spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert K.parse_job(job, [worker, scorer]).metrics == {"val_loss": 0.4}
    # a failed gang: the pod whose scorer reports a failure by itself, not one the Job controller stopped after
    # it, nor a newer worker pod that ended 0
    failed = pod("2026-01-01T00:00:00Z", {"v": 1, "exit_code": 4, "error": {"stage": "export", "reason": "no model"}}, 4)
    stopped = pod("2026-01-01T00:00:02Z", {"v": 1, "exit_code": 143, "error": {"stage": "", "reason": "exit 143"}}, 143)
    job["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]
    seen = K.parse_job(job, [stopped, worker, failed])
    assert seen.stage == "export" and seen.message == "no model"


def test_workers_and_gpus_per_worker_are_validated_evolution_fields():
    t = api.Training.model_validate({"workers": 4, "gpusPerWorker": 8})
    assert t.wire()["workers"] == 4 and t.wire()["gpusPerWorker"] == 8
    with pytest.raises(ValueError):
        api.Training.model_validate({"workers": 0})


def test_node_zero_hosts_the_rendezvous_store():
    def conf(index):
        args = torchrun_args(Distribution(4, 2, "10.0.0.1:29400", "j", node_index=index, local_addr="10.1.0.5"),
                             ["worker"], contained=False)
        return args[args.index("--rdzv-conf") + 1], args[args.index("--local-addr") + 1]

    assert conf(0) == ("is_host=true", "10.1.0.5") and conf(1) == ("is_host=false", "10.1.0.5")
