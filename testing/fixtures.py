"""pytest fixtures for the real control plane.  Import them into a conftest.py:

    from cambrian.testing.fixtures import (  # noqa: F401
        cluster, cluster_namespace, pytest_runtest_makereport)  # the hook adds logs to failures

Every suite importing them shares one cluster per pytest process (cluster.shared_cluster).
"""

from __future__ import annotations

import uuid

import pytest

from cambrian.testing.cluster import (Cluster, shared_cluster, stop_shared_cluster,
                                      unavailable_reason)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = shared_cluster()
    yield c
    stop_shared_cluster()


@pytest.fixture
def cluster_namespace(cluster: Cluster) -> str:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(f"ServiceAccount default in {name}", lambda: cluster.kubectl(
        "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, 30)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the component log tails to the report of a failed test that used the cluster."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        c = getattr(item, "funcargs", {}).get("cluster")
        if isinstance(c, Cluster):
            rep.sections.append(("cluster component logs", c.logs(30)))
