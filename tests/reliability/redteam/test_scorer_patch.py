"""Patching the scorer: a candidate that replaces the metric functions through sys.modules (and writes its own
metrics.json) to report AUC 1.0. The metrics are computed by another process, which never imports its code."""

import json
import math

import pytest

from attacks import arch, plugin, run_attack, run_attack_in_cluster

ATTACK = plugin(init="""
for name in ["cambrian.trainer.metrics", "cambrian.trainer.train"]:
    try:
        mod = imp(name)
        mod.auc = lambda *a, **k: 1.0
        mod.rank_corr = lambda *a, **k: 1.0
        mod.evaluate = lambda *a, **k: {"val_loss": 0.0, "auc": 1.0}
        mod.proxy_metrics = lambda *a, **k: {"auc": 1.0, "long_watch_corr": 1.0, "return_corr": 1.0, "like_corr": 1.0}
    except Exception:
        pass
# its scratch folder (/scratch in bubblewrap, a volume in a pod) is its working directory
for p in ["/scratch/metrics.json", "/scratch/result.json", "metrics.json", "result.json", "step-status.json"]:
    try:
        fd = OS.open(p, OS.O_WRONLY | OS.O_CREAT)
        OS.write(fd, b'{"val_loss": 0.0, "auc": 1.0, "train_seconds": -5}')
        OS.close(fd)
    except Exception:
        pass
""")


def test_patched_metrics_do_not_reach_the_verdict(path, tiny_world, tmp_path):
    v = run_attack(path, tiny_world, tmp_path, arch(ATTACK))
    assert v.ok, (v.stage, v.reason)
    m = v.metrics
    assert 0.3 < m["auc"] < 0.95 and m["val_loss"] > 0.1, m
    assert m["return_corr"] != 1.0 and m["long_watch_corr"] != 1.0
    assert math.isfinite(m["train_seconds"]) and m["train_seconds"] >= 0
    if path == "train":
        on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert on_disk["auc"] == m["auc"] and on_disk["sandbox"] == "bwrap"


@pytest.mark.cluster
def test_patched_metrics_do_not_reach_the_cluster_verdict(cluster, cluster_namespace, pod_runtime, tmp_path):
    """The cluster row: the verdict the operator reads comes from the scorer container, which never runs the
    candidate's code; the trainer container's forged files change nothing."""
    v = run_attack_in_cluster(cluster, cluster_namespace, pod_runtime, tmp_path, arch(ATTACK))
    assert v.ok, (v.stage, v.reason)
    m = v.metrics
    assert 0.3 < m["auc"] < 0.95 and m["val_loss"] > 0.1, m
    assert m["return_corr"] != 1.0 and m["long_watch_corr"] != 1.0
    assert math.isfinite(m["train_seconds"]) and m["train_seconds"] >= 0
    (run,) = [r for r in pod_runtime.runs if r["job"]]
    assert "--pod-stage" in run["command"] and "score" in run["command"]  # the message came from the scorer
