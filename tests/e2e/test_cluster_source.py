"""Issue 17 in cluster mode: an Evolution whose `spec.data.source` is Parquet in an S3-compatible bucket (moto's
server on loopback), with its credentials in a Secret and its tables declared by the Evolution itself
(`spec.data.customDeclaration`, with a proxy of its own), trained end to end on the real test control plane.

The Evolution's one snapshot lives on its storage claim: the first training pod's `fetch` init container (the
only step given the Secret) copies the declared tables there, checked, every later one finds it; the trusted
steps read it read-only and hand the candidate's steps their rows. The pod runtime harness runs the pods' real
commands on the host, so the fetch really reads the bucket."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pandas as pd
import pytest

from cambrian.testing import dataservers
from cambrian.testing.kubectl import Ctl, status, wait

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

OPERATOR = ["run", "--standalone", "--namespace", "{ns}", "-m", "cambrian.operator.handlers"]
TABLES = ("impressions", "user_days", "items", "users")


def shop() -> dict:
    from cambrian.trainer.schema import WORLD

    mine = WORLD.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    return {**mine, "name": "shop", "proxies": [*mine["proxies"], {"name": "watch_corr",
                                                                    "signal": "impressions.watch_seconds"}]}


def evolution(name: str, uri: str) -> dict:
    return {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": name},
        "spec": {
            "baseline": {"optimizer": {"name": "SGD", "lr": 0.0001}, "architecture": {"name": "mlp", "hidden": [16]},
                         "training": {"epochs": 1, "max_train_examples": 20000, "batch_size": 64}},
            "objective": {"northStar": [{"name": "watch_minutes", "direction": "maximize"}]},
            "agent": {"provider": "builtin", "personas": ["optimizer"], "proposalsPerWakeup": 1,
                      "quotas": {"explore": 0, "exploit": 1, "innovate": 0},
                      "budgets": {"evaluations": 3}},  # two baseline seeds and one candidate
            "topK": 1,
            "cadence": {"offline": "1h", "online": "3650d"},  # the offline loop only
            "training": {"memory": "1Gi", "cpu": "1", "maxAttempts": 1,
                         "podAnnotations": {"kwok.cambrian.dev/duration": "1h"}},
            # the world's tables declared as the team's own, with a proxy of its own
            "data": {"source": {"uri": uri, "secretRef": {"name": "warehouse"}}, "customDeclaration": shop()},
            "noise": {"baselineSeeds": 2, "confirmSeeds": 1},
            "storage": {"claimName": "runs"},  # where the Evolution's one snapshot of the bucket is kept
        },
    }


def test_an_evolution_trains_on_its_own_bucket_in_the_cluster(cluster, cluster_namespace, chart, pod_runtime,
                                                               tmp_path, monkeypatch):
    from kopf.testing import KopfRunner

    if dataservers.moto_server() is None:
        pytest.skip("moto_server not found: scripts/setup.sh installs it")
    c, ns, rt = cluster, cluster_namespace, pod_runtime
    k = Ctl(c, ns)
    world = tmp_path / "world"
    subprocess.run([sys.executable, "-m", "cambrian.cli", "world", "generate", "--users", "300", "--days", "4",
                    "--seed", "3", "--out", str(world)], check=True, capture_output=True)
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
    monkeypatch.setenv("CAMBRIAN_OPERATOR_CONFIG", str(chart))
    monkeypatch.setenv("CAMBRIAN_PROMETHEUS_URL", "http://127.0.0.1:9")  # no Rollout in this test
    claim = tmp_path / "claim"
    pv = c.bound_claim(ns, "runs", claim)
    with dataservers.moto_s3() as s3, contextlib.ExitStack() as cleanup:
        cleanup.callback(c.kubectl, "delete", "pv", pv, "--wait=false", check=False)
        s3.upload({f"world/{name}.parquet": world / f"{name}.parquet" for name in TABLES})
        secret = s3.env["AWS_SECRET_ACCESS_KEY"]
        c.kubectl("create", "secret", "generic", "warehouse", "-n", ns,
                  *(f"--from-literal={key}={value}" for key, value in s3.env.items()))
        with KopfRunner([a.format(ns=ns) for a in OPERATOR], timeout=600) as runner:
            k.apply(evolution("own", "s3://lake/world"))
            # the budget covers the candidate: Validated is only a waypoint here (admission comes first, issue 16)
            (hyp,) = wait("the candidate scored", lambda: (lambda hs: hs if hs and all(
                status(h).get("phase") in ("Scored", "Failed") for h in hs) else None)(k.get("hypotheses")),
                timeout=420, runner=runner, rt=rt)
            evo = wait("both baseline seeds", lambda: (lambda e: e if len(status(e).get("baselineRuns") or []) == 2
                                                        else None)(k.get("evolution", "own")), runner=runner, rt=rt)
        log = runner.stdout  # once the operator has stopped
    assert status(hyp)["phase"] == "Scored", status(hyp)
    assert 0 < status(hyp)["offlineScore"] < 1 and status(hyp)["proxyMetrics"]["auc"]["value"] > 0.5
    assert -1 <= status(hyp)["proxyMetrics"]["watch_corr"]["value"] <= 1  # the Evolution's own declaration's proxy
    # every run trained on the bucket's rows: the snapshot holds all of them (the last day is held out)
    impressions = len(pd.read_parquet(world / "impressions.parquet"))
    for run in status(evo)["baselineRuns"]:
        assert 0 < run["metrics"]["n_train"] < run["metrics"]["n_train"] + run["metrics"]["n_val"] <= impressions
    # one snapshot on the claim, complete, which every Job's fetch step names
    (snapshot,) = (claim / "data").iterdir()
    assert (snapshot / "world.json").is_file() and len(pd.read_parquet(snapshot / "impressions.parquet")) == impressions
    jobs = k.get("jobs")
    assert len(jobs) >= 3 and not rt.errors and len(rt.runs) == len(jobs), (rt.errors, rt.runs)
    assert all(r["rc"] == 0 for r in rt.runs), rt.runs
    # the Secret reaches the fetch step alone, and no status, termination message or log line carries it
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        with_secret = [x["name"] for x in pod["initContainers"] + pod["containers"] if "envFrom" in x]
        assert with_secret == ["fetch"] and pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "warehouse"}}]
        fetch = pod["initContainers"][0]["command"]
        assert fetch[fetch.index("--out") + 1] == f"/snapshots/{snapshot.name}"
    seen = json.dumps([k.get("hypotheses"), k.get("evolutions"), [r["message"] for r in rt.runs]]) + log
    assert secret not in seen
