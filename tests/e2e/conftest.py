"""End-to-end fixtures: the real control plane, and the pod runtime harness (cambrian.testing.podruntime)
that plays the container runtime: it runs the training pods' real commands on the host and hands the
results back to kwok, so the pods finish with the real termination message."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# Fast level-based timers and a free metrics port (read when cambrian.operator.handlers is imported).
os.environ.setdefault("CAMBRIAN_OPERATOR_INTERVAL", "1")
os.environ.setdefault("CAMBRIAN_METRICS_PORT", "0")
os.environ.setdefault("CAMBRIAN_METRICS_ADDR", "127.0.0.1")

from cambrian.testing.fixtures import cluster, cluster_namespace, pytest_runtest_makereport  # noqa: E402,F401
from cambrian.testing.podruntime import PodRuntime  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pod_runtime(cluster, cluster_namespace, tmp_path):  # noqa: F811
    with PodRuntime(cluster, cluster_namespace, tmp_path / "runtime") as rt:
        yield rt
    shutil.rmtree(tmp_path / "runtime" / "pods", ignore_errors=True)


@pytest.fixture
def crds(cluster):
    from cambrian.operator import crdgen

    for kind in crdgen.NAMES:
        r = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                            str(REPO / "crds" / crdgen.file_name(kind)), check=False)
        assert r.returncode == 0, r.stderr
    for plural in ("evolutions", "hypotheses", "rollouts"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.cambrian.dev", "--timeout=60s")
    return cluster


@pytest.fixture
def chart(crds, cluster_namespace, tmp_path):
    """`helm install` of charts/cambrian into the test namespace; returns its rendered operator.yaml.

    The chart's operator Deployment is installed as it is (replicas 1): with no container runtime its
    pod is only marked Running by kwok and runs nothing, so the operator under test is the in-process one."""
    c, ns = crds, cluster_namespace
    release = "cam"
    r = c.helm("install", release, str(REPO / "charts" / "cambrian"), "-n", ns, "--set", "prometheus.url=http://unused:9090",
               check=False)
    assert r.returncode == 0, r.stderr
    cm = json.loads(c.kubectl("get", "configmap", f"{release}-cambrian-operator", "-n", ns, "-o", "json",
                              check=False).stdout or "null") or json.loads(c.kubectl(
        "get", "configmap", "-n", ns, "-l", "app.kubernetes.io/component=operator", "-o", "json").stdout)["items"][0]
    path = tmp_path / "operator.yaml"
    path.write_text(cm["data"]["operator.yaml"])
    yield path
    c.helm("uninstall", release, "-n", ns, check=False)
