"""Session-wide real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).

`cluster` (session) and `cluster_namespace` (per test) come from cambrian.testing.fixtures; the
tests are skipped, with the reason, when scripts/build-test-cluster.sh has not built the binaries.
"""

from cambrian.testing.fixtures import (  # noqa: F401
    cluster, cluster_namespace, pytest_runtest_makereport)
