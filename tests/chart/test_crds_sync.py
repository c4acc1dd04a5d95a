"""charts/cambrian/crds/ is a byte copy of crds/*.yaml (scripts/sync-chart-crds.sh makes it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE, COPY = ROOT / "crds", ROOT / "charts" / "cambrian" / "crds"


def test_chart_crds_are_byte_copies_of_crds():
    sources = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml") if p.name != "kustomization.yaml"}
    if not sources:
        pytest.skip("crds/ holds no CRDs yet")
    copies = {p.name: p.read_bytes() for p in COPY.iterdir() if p.suffix in (".yaml", ".yml", ".json")}
    hint = "run scripts/sync-chart-crds.sh"
    assert sorted(copies) == sorted(sources), f"chart CRD files differ from crds/: {hint}"
    for name, data in sources.items():
        assert copies[name] == data, f"charts/cambrian/crds/{name} differs from crds/{name}: {hint}"


def test_sync_script_check_mode_agrees():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "sync-chart-crds.sh"), "--check"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sync_script_detects_and_repairs_drift(tmp_path):
    """The script in a scratch copy of the layout: a changed and a stale copy are found, then fixed."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "sync-chart-crds.sh"
    script.write_bytes((ROOT / "scripts" / "sync-chart-crds.sh").read_bytes())
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (tmp_path / "crds" / "kustomization.yaml").write_text("resources: [a.yaml]\n")  # not a CRD: never copied
    dst = tmp_path / "charts" / "cambrian" / "crds"
    dst.mkdir(parents=True)
    (dst / "a.yaml").write_text("kind: CustomResourceDefinition  \n")  # whitespace differs
    (dst / "gone.yaml").write_text("old\n")
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1
    assert "differs: charts/cambrian/crds/a.yaml" in check.stdout and "stale: charts/cambrian/crds/gone.yaml" in check.stdout
    subprocess.run(["bash", str(script)], check=True, capture_output=True, timeout=30)
    assert sorted(p.name for p in dst.iterdir()) == ["a.yaml"]
    assert (dst / "a.yaml").read_bytes() == (tmp_path / "crds" / "a.yaml").read_bytes()
    assert subprocess.run(["bash", str(script), "--check"], capture_output=True, timeout=30).returncode == 0
