"""A multi-worker Evolution on the test control plane (testing/cluster.py: kwok runs the pods): the operator
creates the gang (Indexed Job, rendezvous Service, NetworkPolicy) and reads the metrics back."""

from __future__ import annotations

import json

import pytest
import yaml

from cambrian.testing.fixtures import cluster, cluster_namespace  # noqa: F401
from cambrian.testing.waiting import poll

from .test_operator_cluster import crds_installed  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_the_operator_creates_the_gang_and_reads_its_metrics(crds_installed, cluster_namespace, monkeypatch):  # noqa: F811
    from kopf.testing import KopfRunner

    c, ns = crds_installed, cluster_namespace
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
    metrics = json.dumps({"v": 1, "metrics": {"val_loss": 0.5, "auc": 0.7, "workers": 4}})
    evo = {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "gang"},
        "spec": {
            "objective": {"northStar": [{"name": "returning_users"}]},
            "agent": {"provider": "builtin", "personas": ["optimizer"], "proposalsPerWakeup": 1,
                      "quotas": {"explore": 1, "exploit": 0, "innovate": 0}},
            "cadence": {"offline": "1h", "online": "1h"},
            "launchPolicy": "manual",
            "training": {"image": "cambrian/trainer:test", "memory": "1Gi", "cpu": "1", "workers": 2,
                         "gpusPerWorker": 2,
                         "podAnnotations": {"kwok.cambrian.dev/exit-code": "0",
                                            "kwok.cambrian.dev/termination-message": metrics}},
            "data": {"world": {"users": 100, "days": 3}},
            "noise": {"baselineSeeds": 2, "confirmSeeds": 1},
        },
    }

    hyp = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": "gang-adamw"},
           "spec": {"evolutionRef": {"name": "gang"}, "component": "optimizer", "explanation": "AdamW",
                    "delta": {"patch": {"name": "AdamW", "weight_decay": 0.01}}}}

    def get(*what):
        r = c.kubectl("get", *what, "-n", ns, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait(what, pred, timeout=90):
        return poll(what, pred, timeout, lambda: f"; operator log:\n{runner.stdout[-4000:]}")

    args = ["run", "--standalone", "--namespace", ns, "-m", "cambrian.operator.handlers"]
    with KopfRunner(args, timeout=180) as runner:
        c.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(evo))
        champion = wait("the baseline champion from the gang", lambda: (
            ((get("evolution", "gang") or {}).get("status") or {}).get("champion") or {}).get("bundle"))
        assert champion.startswith("job://")
        baseline = get("jobs", "-l", "cambrian.dev/owner-kind=evolution")["items"]
        assert len(baseline) == 2  # the baseline's two seeds (its noise floor), each a gang
        job = sorted(baseline, key=lambda j: j["metadata"]["name"])[0]
        name, spec = job["metadata"]["name"], job["spec"]
        assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] == 2
        assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
        svc = get("service", name)
        assert svc["spec"]["selector"]["batch.kubernetes.io/job-completion-index"] == "0"
        steps = {c["name"]: c for c in spec["template"]["spec"]["initContainers"]}
        command = steps["trainer"]["command"]  # the step that runs the candidate's training meets the others
        assert f"{svc['spec']['clusterIP']}:29400" in command
        assert command[command.index("--workers") + 1] == "4"
        assert spec["template"]["spec"]["containers"][0]["command"][-2:] == ["--workers", "4"]  # the scorer
        assert get("networkpolicy", name)["spec"]["podSelector"]["matchLabels"] == {"batch.kubernetes.io/job-name": name}
        pods = get("pods", "-l", f"job-name={name}")["items"]
        assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]

        # a hypothesis trains as a gang too, and its score is the metric read back from the gang's pods
        c.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(hyp))
        scored = wait("the hypothesis scored", lambda: (
            ((get("hypothesis", "gang-adamw") or {}).get("status") or {}).get("offlineScore")))
        assert scored == 0.5
        jobs = get("jobs", "-l", "cambrian.dev/owner-kind=hypothesis")["items"]
        assert jobs and all(j["spec"]["completionMode"] == "Indexed" for j in jobs)
