"""Fixtures of the red-team corpus; the attack helpers are in attacks.py (importable by every test file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from attacks import PATHS  # noqa: E402


@pytest.fixture(params=PATHS)
def path(request) -> str:
    """Each attack runs through `cambrian train`, the offline loop's worker cold, and a warm worker slot."""
    return request.param


from cambrian.testing.fixtures import cluster, cluster_namespace  # noqa: E402,F401


@pytest.fixture
def pod_runtime(cluster, cluster_namespace, tmp_path):  # noqa: F811
    """The cluster row: the test control plane, and the harness that runs its training pods' containers."""
    from cambrian.testing.podruntime import PodRuntime

    with PodRuntime(cluster, cluster_namespace, tmp_path / "runtime") as rt:
        yield rt
