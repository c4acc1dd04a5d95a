"""The README's quickstart, as a user runs it, to a concluded Rollout.

`helm install` (defaults), `kubectl apply -n NS -f manifests/examples/quickstart/`, and nothing else:
the operator runs as the chart deploys it (cambrian.testing.deployed), the pod runtime harness runs
the training Jobs' and the serving arms' real commands, and the bundles travel from the Jobs to the
arms on the example's own claim. The test control plane has no volume provisioner, so a hostPath
PersistentVolume stands in for the default StorageClass; and one chart value is set that only kwok
reads (training pods wait for the harness instead of finishing after kwok's default half second).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cambrian.operator.platform.kubernetes import label_value
from cambrian.testing.deployed import deployed_chart

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "manifests" / "examples" / "quickstart"
CONCLUDED = ("Promoted", "RolledBack", "Inconclusive")


def stand_in_volume(c, namespace: str, claim: str, path: Path) -> str:
    """A 1 GiB hostPath volume reserved for NAMESPACE/CLAIM (what a default StorageClass would provision)."""
    path.mkdir(parents=True, exist_ok=True)
    name = f"pv-{namespace}"
    c.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                      "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path)},
                      "claimRef": {"namespace": namespace, "name": claim}}})
    return name


def is_arm(service: dict) -> bool:
    return (service["pod"]["metadata"].get("labels") or {}).get("cambrian.dev/arm") not in (None, "router")


def test_readme_quickstart_reaches_a_concluded_rollout(cluster, tmp_path):
    c = cluster
    readme = (ROOT / "README.md").read_text()
    assert "kubectl apply -n cambrian -f manifests/examples/quickstart/" in readme  # what the user is told
    claim = yaml.safe_load((QUICKSTART / "bundles-pvc.yaml").read_text())["metadata"]["name"]
    kwok_waits = {r"training.podAnnotations.kwok\.cambrian\.dev/duration": "1h"}
    t0 = time.monotonic()
    with deployed_chart(c, tmp_path, values=kwok_waits, jobs=True, deployments_in_workloads=True) as d:
        app, rt = d.workloads[0], d.workload_runtime
        pv = stand_in_volume(c, app, claim, tmp_path / "volume")
        try:
            c.kubectl("apply", "-n", app, "-f", f"{QUICKSTART}/")

            def rollout():
                items = c.get_json("rollouts", "-n", app)["items"]
                return items[0] if items else None

            try:
                ro = d.wait_for("a Rollout of a trained winner", rollout, timeout=900)
            except AssertionError as exc:  # say where the offline loop stood
                seen = c.kubectl("get", "hypotheses,evolutions", "-n", app, "-o", "custom-columns=NAME:.metadata.name,"
                                 "PHASE:.status.phase,VERDICT:.status.verdict,REASON:.status.reason", check=False)
                raise AssertionError(f"{seen.stdout}\n{exc}") from None
            served: dict[str, int] = {}
            crashed: dict[str, dict] = {}

            def concluded():
                for name, svc in list(rt.services.items()):  # every arm loads its bundle and answers, as does the router
                    if not svc.get("stopped") and rt.exited(name):
                        crashed[name] = rt.exited(name)
                    if 8080 in svc["ports"] and name not in served:
                        try:
                            code = httpx.get(f"http://127.0.0.1:{svc['ports'][8080]}/healthz", timeout=2).status_code
                        except httpx.HTTPError:
                            continue
                        served[name] = code
                st = (c.get_json("rollout", ro["metadata"]["name"], "-n", app).get("status") or {})
                return st if st.get("phase") in CONCLUDED else None

            status = d.wait_for("the Rollout concluded", concluded, timeout=420)
            elapsed = time.monotonic() - t0
            assert not rt.errors and not d.runtime.errors, (rt.errors, d.runtime.errors)
            assert rt.runs and all(r["rc"] == 0 for r in rt.runs), rt.runs
            bundles = {t["bundle"] for t in [ro["spec"]["control"], *ro["spec"]["treatments"]]}
            assert all(b.startswith(f"pvc://{claim}/") for b in bundles), bundles
            # the concluded Rollout's arms (a second winner's Rollout may start its arms as this one ends)
            arms = [n for n, svc in rt.services.items() if is_arm(svc) and (svc["pod"]["metadata"].get("labels") or {})
                    .get("cambrian.dev/rollout") == label_value(ro["metadata"]["name"])]
            assert len(arms) >= 2 and set(arms) < set(served) and set(served.values()) == {200}, (
                served, {n: rt.log(n)[-2000:] for n in rt.services})
            assert crashed == {}, {n: rt.log(n)[-2000:] for n in crashed}
            assert d.forbidden() == [] and not d.operator_exited(), d.operator_log()[-4000:]
            print("quickstart:", status["phase"], status.get("reason"), f"{elapsed:.0f}s;",
                  "training runs:", [(r["job"], r["seconds"]) for r in rt.runs])
        finally:
            c.kubectl("delete", "pv", pv, "--wait=false", check=False)
