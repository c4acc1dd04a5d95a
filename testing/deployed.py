"""The chart as a user installs it, with its operator running as the chart's Deployment runs it.

    with deployed_chart(cluster, workdir, watch=["apps"]) as d:   # `helm install` + the operator pod
        d.cluster.kubectl("apply", "-n", "apps", "-f", ...)
        d.wait_for(...); assert not d.forbidden()

`helm install` of charts/cambrian into a fresh release namespace (CRDs from the chart, the chart's
RBAC), then the pod runtime harness (podruntime.PodRuntime) runs the operator pod the Deployment
created: its own command, args, env and mounted ConfigMap, with a token of the chart's
ServiceAccount. Nothing of the test process (its kubeconfig, its environment) reaches the operator.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cambrian.testing.cluster import REPO_ROOT, Cluster
from cambrian.testing.podruntime import PodRuntime

CHART = REPO_ROOT / "charts" / "cambrian"
# A refused API call; not a log timestamp's milliseconds (",403").
FORBIDDEN = re.compile(r"(?<![,.])\b403\b|Forbidden|forbidden:|[Nn]ot enough permissions")


def refused_calls(logs: list[str]) -> list[str]:
    return [line for log in logs for line in log.splitlines() if FORBIDDEN.search(line)]


@dataclass
class DeployedChart:
    cluster: Cluster
    release: str
    namespace: str              # the release namespace (operator, ConfigMap, ServiceAccount)
    workloads: list[str]        # namespaces the test puts Evolutions in
    runtime: PodRuntime
    workload_runtime: PodRuntime | None = None  # runs what the operator creates, when asked
    operator_pod: str = ""

    def operator_log(self) -> str:
        return self.runtime.log(self.operator_pod) if self.operator_pod in self.runtime.services else ""

    def forbidden(self) -> list[str]:
        """Lines of the operator replicas' logs (the active one and the standby) that report a refused
        API call (403)."""
        prefix = f"{self.release}-cambrian-operator-"
        logs = [self.runtime.log(n) for n in list(self.runtime.services) if n.startswith(prefix)]
        return refused_calls(logs)

    def operator_exited(self) -> dict[str, int]:
        return self.runtime.exited(self.operator_pod) if self.operator_pod in self.runtime.services else {}

    def wait_for(self, what: str, predicate: Callable[[], object], timeout: float = 180):
        """Poll until predicate() is truthy (returned); fail with the operator's log and exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.operator_pod and self.operator_exited():
                raise AssertionError(f"the operator exited {self.operator_exited()} while waiting for {what}\n"
                                     f"{self.operator_log()[-6000:]}")
            value = predicate()
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}\nharness errors: {self.runtime.errors}\n"
                             f"{self.replica_logs()}")

    def replica_logs(self, tail: int = 4000) -> str:
        """Every operator replica's log tail: the one that holds the peering lease may not be the first pod."""
        prefix = f"{self.release}-cambrian-operator-"
        names = [n for n in list(self.runtime.services) if n.startswith(prefix)]
        if not names:
            return "(no operator)"
        return "\n".join(f"operator log ({n}):\n{self.runtime.log(n)[-tail:]}" for n in names)


def _operator_pod(c: Cluster, ns: str, release: str) -> dict | None:
    pods = c.get_json("pods", "-n", ns, "-l", f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator")
    running = [p for p in pods["items"] if (p.get("status") or {}).get("phase") == "Running"]
    return running[0] if running else None


def _delete_namespaces(c: Cluster, names: list[str], timeout: float = 90) -> None:
    """Delete the workload namespaces while the operator still runs, as a user would: it lifts its
    finalizers as its objects go. Deleted after it stopped, they would stay Terminating until the next
    test's cluster-wide operator met them."""
    for n in names:
        c.kubectl("delete", "namespace", n, "--wait=false", check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.kubectl("get", "namespace", n, check=False).returncode != 0 for n in names):
            return
        time.sleep(1)


@contextlib.contextmanager
def deployed_chart(c: Cluster, workdir: Path, *, watch: list[str] | None = None, workloads: int = 1,
                   values: dict[str, str] | None = None, jobs: bool = False,
                   deployments_in_workloads: bool = False) -> Iterator[DeployedChart]:
    """Install the chart and run its operator pod; yields once the operator process is up.

    watch: None installs the default (cluster-wide) mode; a list sets operator.watchNamespaces to
    that many of the workload namespaces (the names are generated: watch=["a"] means the first).
    values: extra `--set` pairs. jobs / deployments_in_workloads: the harness also runs the
    training Jobs / the serving Deployments in the workload namespaces."""
    tag = uuid.uuid4().hex[:8]
    ns, release = f"cam-{tag}", f"cam-{tag}"  # unique: the ClusterRole and its binding are cluster-scoped
    names = [f"app-{tag}-{i}" for i in range(workloads)]
    for n in [ns, *names]:
        c.kubectl("create", "namespace", n)
    sets = dict(values or {})
    if watch is not None:
        sets.update({f"operator.watchNamespaces[{i}]": names[i] for i in range(len(watch))})
    args = ["install", release, str(CHART), "-n", ns]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    c.helm(*args, timeout=180)
    runtime = PodRuntime(c, [ns], Path(workdir) / "runtime", deployments=True, jobs=False)
    workload_rt = PodRuntime(c, names, Path(workdir) / "workloads", jobs=jobs, deployments=deployments_in_workloads)
    try:
        with runtime, workload_rt:
            d = DeployedChart(c, release, ns, names, runtime, workload_rt)
            pod = d.wait_for("the operator pod Running", lambda: _operator_pod(c, ns, release), timeout=120)
            d.operator_pod = pod["metadata"]["name"]
            d.wait_for("the operator process", lambda: d.operator_pod in runtime.services, timeout=60)
            try:
                yield d
            finally:
                _delete_namespaces(c, names)
    finally:
        c.helm("uninstall", release, "-n", ns, check=False, timeout=120)
        for n in [ns, *names]:
            c.kubectl("delete", "namespace", n, "--wait=false", check=False)
