"""The install-surface scripts parse, and the CI prepare step installs Debian's prometheus package."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["scripts/sync-chart-crds.sh", "scripts/ci-prepare-prometheus.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse_and_are_executable(script):
    path = ROOT / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_prepare_prometheus_installs_the_debian_package():
    text = (ROOT / "scripts" / "ci-prepare-prometheus.sh").read_text()
    assert "apt-get install -y --no-install-recommends prometheus" in text


def test_render_base_script_compiles():
    path = ROOT / "scripts" / "render-manifests-base.py"
    assert os.access(path, os.X_OK)
    compile(path.read_text(), str(path), "exec")
