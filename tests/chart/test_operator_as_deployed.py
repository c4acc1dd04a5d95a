"""The operator as the chart deploys it, on the real test control plane.

`helm install` with the chart's defaults (cluster-wide) and with operator.watchNamespaces; the pod
runtime harness runs the operator pod the Deployment created (its command, args, env with the
downward API, its mounted ConfigMap) with a token of the chart's ServiceAccount, so the chart's RBAC
is what the operator gets. Each mode must reconcile an Evolution with no refused call in its log.
(A default install used to crash-loop: kopf failed on `namespaces=None` without --namespace.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cambrian.testing.deployed import deployed_chart

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "quickstart" / "evolution.yaml"


def phase(c, ns: str, kind: str, name: str) -> str | None:
    r = c.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return ((json.loads(r.stdout).get("status") or {}).get("phase")) if r.returncode == 0 else None


def training_jobs(c, ns: str) -> list[str]:
    return [j["metadata"]["name"] for j in c.get_json("jobs", "-n", ns)["items"]]


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_operator_runs_as_the_chart_deploys_it(cluster, tmp_path, mode):
    c = cluster
    namespaced = mode == "namespaced"
    with deployed_chart(c, tmp_path, watch=["first"] if namespaced else None, workloads=2 if namespaced else 1) as d:
        svc = d.runtime.services[d.operator_pod]
        (cmd,) = svc["commands"].values()
        (env,) = svc["env"].values()
        # The Deployment's own command line, with the pod's ports mapped to free loopback ports.
        health = svc["ports"][8080]
        expected = ["operator", "run", "--liveness", f"http://127.0.0.1:{health}/healthz",
                    "--peering", f"{d.release}-cambrian-operator"]  # two replicas elect one (test_operator_failover.py)
        expected += ["--namespace", d.workloads[0]] if namespaced else []
        assert Path(cmd[0]).name == "cambrian" and cmd[1:] == expected
        # The env a kubelet would give it: the downward API, the mounted config, the chart's SA token.
        assert env["CAMBRIAN_NAMESPACE"] == d.namespace
        chart_config = yaml.safe_load(Path(env["CAMBRIAN_OPERATOR_CONFIG"]).read_text())
        assert {"training", "serving"} <= set(chart_config), chart_config  # the chart's rendered operator.yaml
        assert env["CAMBRIAN_METRICS_PORT"] == str(svc["ports"][8000])
        assert "KUBECONFIG" in env and Path(env["KUBECONFIG"]).parent.name == "serviceaccount"
        who = json.loads(c.kubectl("auth", "whoami", "-o", "json", "--kubeconfig", env["KUBECONFIG"]).stdout)
        assert who["status"]["userInfo"]["username"] == (
            f"system:serviceaccount:{d.namespace}:{d.release}-cambrian-operator")

        # An Evolution in a workload namespace, applied as a user would: reconciled, its Job created.
        app = d.workloads[0]
        c.kubectl("apply", "-n", app, "-f", str(EXAMPLE))
        d.wait_for("the Evolution's phase", lambda: phase(c, app, "evolution", "quickstart"), timeout=240)
        d.wait_for("the baseline training Job", lambda: training_jobs(c, app), timeout=240)
        if namespaced:  # a namespace the operator does not watch is left alone
            c.kubectl("apply", "-n", d.workloads[1], "-f", str(EXAMPLE))
        time.sleep(15)  # a reconcile interval: the timers and watches run under the chart's RBAC too
        assert httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=30).status_code == 200
        assert not d.operator_exited(), d.operator_log()[-4000:]
        assert d.forbidden() == [], d.operator_log()[-4000:]
        if namespaced:
            assert phase(c, d.workloads[1], "evolution", "quickstart") is None
            assert training_jobs(c, d.workloads[1]) == []
