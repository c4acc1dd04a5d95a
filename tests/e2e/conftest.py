"""End-to-end fixtures: the real control plane, and the pod runtime harness (cambrian.testing.podruntime)
that plays the container runtime: it runs the training pods' real commands on the host and hands the
results back to kwok, so the pods finish with the real termination message."""

from __future__ import annotations

import os
import shutil

import pytest

# Fast level-based timers and a free metrics port (read when cambrian.operator.handlers is imported).
os.environ.setdefault("CAMBRIAN_OPERATOR_INTERVAL", "1")
os.environ.setdefault("CAMBRIAN_METRICS_PORT", "0")
os.environ.setdefault("CAMBRIAN_METRICS_ADDR", "127.0.0.1")

from cambrian.testing.fixtures import cluster, cluster_namespace, pytest_runtest_makereport  # noqa: E402,F401
from cambrian.testing.podruntime import PodRuntime  # noqa: E402


@pytest.fixture
def pod_runtime(cluster, cluster_namespace, tmp_path):  # noqa: F811
    with PodRuntime(cluster, cluster_namespace, tmp_path / "runtime") as rt:
        yield rt
    shutil.rmtree(tmp_path / "runtime" / "pods", ignore_errors=True)
