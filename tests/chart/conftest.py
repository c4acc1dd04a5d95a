"""Fixtures for the install-surface tests: the helm, kubectl and promtool binaries, and rendering.

helm is looked up in $CAMBRIAN_HELM, then the test-cluster cache (scripts/build-test-cluster.sh
--print-bin-dir), then PATH; kubectl likewise with $CAMBRIAN_KUBECTL. A missing tool skips the
tests that need it, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cambrian"


@lru_cache(maxsize=None)
def _cluster_bin_dir() -> Path | None:
    script = ROOT / "scripts" / "build-test-cluster.sh"
    if not script.exists():
        return None
    try:
        out = subprocess.run(["bash", str(script), "--print-bin-dir"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip().splitlines()
    except (subprocess.SubprocessError, OSError):
        return None
    return Path(out[-1]) if out else None


def find_tool(name: str, env_var: str) -> tuple[str | None, str]:
    """(path or None, where it was looked for)."""
    env = os.environ.get(env_var)
    if env:
        return (env if os.access(env, os.X_OK) else None), f"${env_var}={env}"
    bin_dir = _cluster_bin_dir()
    if bin_dir is not None and os.access(bin_dir / name, os.X_OK):
        return str(bin_dir / name), str(bin_dir)
    return shutil.which(name), f"${env_var}, {bin_dir or 'the test-cluster cache'}, PATH"


@pytest.fixture(scope="session")
def helm() -> str:
    path, where = find_tool("helm", "CAMBRIAN_HELM")
    if path is None:
        pytest.skip(f"helm not found (looked in {where}); set CAMBRIAN_HELM or run scripts/build-test-cluster.sh")
    return path


@pytest.fixture(scope="session")
def kubectl() -> str:
    path, where = find_tool("kubectl", "CAMBRIAN_KUBECTL")
    if path is None:
        pytest.skip(f"kubectl not found (looked in {where}); set CAMBRIAN_KUBECTL")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found; install it with scripts/ci-prepare-prometheus.sh")
    return path


class Renderer:
    """`helm template` of a chart with --set arguments; results cached per argument list."""

    # Values that switch every optional part on (router, monitoring, Gateway API, DNS, keys, namespaces).
    ALL_ON = ("--values", str(Path(__file__).resolve().parent / "values-all-on.yaml"))

    # Render for a current Kubernetes whatever default the helm binary was built with (a helm built
    # without its version ldflags assumes v1.20, below the chart's kubeVersion).
    KUBE_VERSION = "1.36.0"

    def __init__(self, helm: str):
        self.helm = helm
        self._cache: dict[tuple, list[dict]] = {}

    def run(self, *args: str, chart: Path = CHART, release: str = "cambrian",
            namespace: str = "cambrian") -> subprocess.CompletedProcess:
        return subprocess.run([self.helm, "template", release, str(chart), "--namespace", namespace,
                               "--kube-version", self.KUBE_VERSION, *args],
                              capture_output=True, text=True, timeout=60)

    def lint(self, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess:
        return subprocess.run([self.helm, "lint", "--strict", str(chart), "--kube-version", self.KUBE_VERSION, *args],
                              capture_output=True, text=True, timeout=60)

    def docs(self, *args: str, chart: Path = CHART, release: str = "cambrian",
             namespace: str = "cambrian") -> list[dict]:
        key = (args, str(chart), release, namespace)
        if key not in self._cache:
            proc = self.run(*args, chart=chart, release=release, namespace=namespace)
            assert proc.returncode == 0, f"helm template {' '.join(args)} failed:\n{proc.stderr}"
            self._cache[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return self._cache[key]

    @staticmethod
    def by_kind(docs: list[dict], kind: str) -> list[dict]:
        return [d for d in docs if d["kind"] == kind]

    @staticmethod
    def one(docs: list[dict], kind: str, name: str) -> dict:
        found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def render(helm) -> Renderer:
    return Renderer(helm)


# The real control plane (skipped with the reason when scripts/build-test-cluster.sh has not built it).
try:
    from cambrian.testing.fixtures import cluster  # noqa: E402,F401
except ImportError as exc:  # keep the offline chart tests running without the cluster harness
    _why = f"cambrian.testing.fixtures unavailable: {exc}"

    @pytest.fixture(scope="session")
    def cluster():
        pytest.skip(_why)
