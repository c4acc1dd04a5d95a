#!/usr/bin/env python3
"""Renders manifests/base/ (the kustomize base for users without Helm) from charts/cambrian.

The chart is the one source of the install manifests; the base is its default rendering for
release "cambrian" without Helm's bookkeeping labels and without namespaces (the kustomization
sets them).  The CRDs are not part of it (`helm template` leaves the chart's crds/ out): they are
installed apart, by `kubectl apply -k manifests/crds` (copies kept by scripts/sync-chart-crds.sh),
so that deleting the base never deletes them.  tests/chart/test_kustomize_base.py fails when the
base and the chart disagree.

    scripts/render-manifests-base.py            # rewrite the files under manifests/base/
    scripts/render-manifests-base.py --check    # exit 1 when a file would change
Needs helm: $CAMBRIAN_HELM, the test-cluster cache, or PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "cambrian"
BASE = ROOT / "manifests" / "base"
RELEASE = NAMESPACE = "cambrian"
KUBE_VERSION = "1.36.0"  # render for a current cluster whatever default the helm binary has
HEADER = "# Rendered from charts/cambrian by scripts/render-manifests-base.py; do not edit by hand.\n"
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version")
HELM_ONLY_ANNOTATIONS = ("checksum/config",)
# file -> the kinds (or kind/name) it holds
FILES = {
    "rbac.yaml": ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"),
    "operator.yaml": ("ConfigMap/cambrian-operator", "Service/cambrian-operator-metrics", "Deployment/cambrian-operator",
                      "PodDisruptionBudget/cambrian-operator", "ClusterKopfPeering/cambrian-operator"),
    "networkpolicy.yaml": ("NetworkPolicy",),
}


def find_helm() -> str | None:
    """$CAMBRIAN_HELM, then the test-cluster cache's bin dir, then PATH."""
    env = os.environ.get("CAMBRIAN_HELM")
    if env:
        return env if os.access(env, os.X_OK) else None
    script = ROOT / "scripts" / "build-test-cluster.sh"
    if script.exists():
        try:
            out = subprocess.run(["bash", str(script), "--print-bin-dir"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip().splitlines()
            if out and os.access(Path(out[-1]) / "helm", os.X_OK):
                return str(Path(out[-1]) / "helm")
        except (subprocess.SubprocessError, OSError):
            pass
    return shutil.which("helm")


def _strip(obj):
    if isinstance(obj, dict):
        for key, drop in (("labels", HELM_ONLY_LABELS), ("annotations", HELM_ONLY_ANNOTATIONS)):
            if isinstance(obj.get(key), dict):
                for name in drop:
                    obj[key].pop(name, None)
                if not obj[key]:
                    del obj[key]
        for value in obj.values():
            _strip(value)
    elif isinstance(obj, list):
        for value in obj:
            _strip(value)


def base_documents(helm: str) -> dict[str, list[dict]]:
    """The chart's default rendering, cleaned and grouped into the base's files."""
    rendered = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                               "--kube-version", KUBE_VERSION],
                              capture_output=True, text=True, check=True).stdout
    files: dict[str, list[dict]] = {name: [] for name in FILES}
    for doc in yaml.safe_load_all(rendered):
        if not doc:
            continue
        _strip(doc)
        doc["metadata"].pop("namespace", None)
        kind, name = doc["kind"], doc["metadata"]["name"]
        component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if kind == "ConfigMap" and component == "dashboards":
            continue  # the dashboards ship with the chart only (kustomize cannot read files outside the base)
        target = next((f for f, sel in FILES.items() if kind in sel or f"{kind}/{name}" in sel), None)
        if target is None:
            raise SystemExit(f"render-manifests-base: no base file for {kind}/{name}; add it to FILES")
        files[target].append(doc)
    return files


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def dump(docs: list[dict]) -> str:
    return HEADER + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    check = argv[1:] == ["--check"]
    if argv[1:] not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    helm = find_helm()
    if helm is None:
        print("render-manifests-base: helm not found (set CAMBRIAN_HELM)", file=sys.stderr)
        return 1
    stale = []
    for name, docs in base_documents(helm).items():
        path, text = BASE / name, dump(docs)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
    if stale:
        print(("out of date: " if check else "wrote: ") + ", ".join(f"manifests/base/{n}" for n in stale))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
