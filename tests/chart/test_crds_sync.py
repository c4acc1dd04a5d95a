"""crds/ holds only the CRDs (so `kubectl apply -f crds/` works), and charts/cambrian/crds/ and
manifests/crds/ are byte copies of them (scripts/sync-chart-crds.sh makes both)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "crds"
COPIES = {"charts/cambrian/crds": set(), "manifests/crds": {"kustomization.yaml"}}  # folder -> files that are not copies
KUBECTL_READS = (".yaml", ".yml", ".json")  # what `kubectl apply -f DIR` reads from a folder


def test_crds_folder_holds_only_crds():
    """`kubectl apply -f crds/` (the command in manifests/examples) reads every .yaml/.yml/.json file
    there: each must be a CRD, or kubectl exits 1 (it did on crds/kustomization.yaml)."""
    files = sorted(p for p in SOURCE.iterdir() if p.suffix in KUBECTL_READS)
    assert files, "crds/ holds no CRDs"
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(d.get("apiVersion") == "apiextensions.k8s.io/v1"
                            and d.get("kind") == "CustomResourceDefinition" for d in docs), (
            f"crds/{path.name} is not a CRD: `kubectl apply -f crds/` would fail on it")


@pytest.mark.parametrize("folder", sorted(COPIES))
def test_copies_are_byte_copies_of_crds(folder):
    sources = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    copy_dir = ROOT / folder
    copies = {p.name: p.read_bytes() for p in copy_dir.iterdir()
              if p.suffix in KUBECTL_READS and p.name not in COPIES[folder]}
    hint = "run scripts/sync-chart-crds.sh"
    assert sorted(copies) == sorted(sources), f"{folder} CRD files differ from crds/: {hint}"
    for name, data in sources.items():
        assert copies[name] == data, f"{folder}/{name} differs from crds/{name}: {hint}"


def test_crds_kustomization_lists_every_crd():
    kustomization = yaml.safe_load((ROOT / "manifests" / "crds" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in SOURCE.glob("*.yaml"))


def test_sync_script_check_mode_agrees():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "sync-chart-crds.sh"), "--check"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sync_script_detects_and_repairs_drift(tmp_path):
    """The script in a scratch copy of the layout: changed, missing and stale copies are found, then
    fixed; the kustomization beside the kustomize copies is kept."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "sync-chart-crds.sh"
    script.write_bytes((ROOT / "scripts" / "sync-chart-crds.sh").read_bytes())
    (tmp_path / "crds").mkdir()
    (tmp_path / "crds" / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    chart = tmp_path / "charts" / "cambrian" / "crds"
    chart.mkdir(parents=True)
    (chart / "a.yaml").write_text("kind: CustomResourceDefinition  \n")  # whitespace differs
    (chart / "gone.yaml").write_text("old\n")
    kust = tmp_path / "manifests" / "crds"
    kust.mkdir(parents=True)
    (kust / "kustomization.yaml").write_text("resources: [a.yaml]\n")
    (kust / "gone.yaml").write_text("old\n")
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1
    for line in ("differs: charts/cambrian/crds/a.yaml", "stale: charts/cambrian/crds/gone.yaml",
                 "differs: manifests/crds/a.yaml", "stale: manifests/crds/gone.yaml"):
        assert line in check.stdout
    assert "kustomization" not in check.stdout
    subprocess.run(["bash", str(script)], check=True, capture_output=True, timeout=30)
    assert sorted(p.name for p in chart.iterdir()) == ["a.yaml"]
    assert sorted(p.name for p in kust.iterdir()) == ["a.yaml", "kustomization.yaml"]
    for d in (chart, kust):
        assert (d / "a.yaml").read_bytes() == (tmp_path / "crds" / "a.yaml").read_bytes()
    assert subprocess.run(["bash", str(script), "--check"], capture_output=True, timeout=30).returncode == 0
