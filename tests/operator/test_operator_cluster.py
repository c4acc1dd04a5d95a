"""The CRDs and the operator against a real API server (testing/cluster.py: etcd,
kube-apiserver, controller-manager, scheduler, kwok). Skipped when the control plane is not built."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml

from cambrian.testing.fixtures import cluster, cluster_namespace  # noqa: F401
from cambrian.testing.waiting import poll

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def crds_installed(cluster):  # noqa: F811
    from cambrian.operator import crdgen

    for kind in crdgen.NAMES:
        r = cluster.kubectl("apply", "--server-side", "-f", os.path.join(REPO, "crds", crdgen.file_name(kind)),
                            check=False)
        assert r.returncode == 0, r.stderr
    for plural in ("evolutions", "hypotheses", "rollouts"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.cambrian.dev", "--timeout=60s")
    return cluster


def _apply(c, ns, obj, check=False):
    return c.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj), check=check)


class _Objects:
    """loop.Objects over the API server (what the operator's own index serves)."""

    def __init__(self, custom):
        self.custom = custom

    def get(self, plural, namespace, name):
        return next((o for o in self.list(plural, namespace) if o["metadata"]["name"] == name), None)

    def list(self, plural, namespace):
        return self.custom.list_namespaced_custom_object("cambrian.dev", "v1alpha1", namespace, plural)["items"]


def _example(name):
    with open(os.path.join(REPO, "manifests", "examples", f"{name}.yaml")) as f:
        return yaml.safe_load(f)


def test_examples_apply_and_bad_specs_are_rejected(crds_installed, cluster_namespace):
    c, ns = crds_installed, cluster_namespace
    for name in ("evolution", "hypothesis", "rollout"):
        r = _apply(c, ns, _example(name))
        assert r.returncode == 0, r.stderr
    names = c.kubectl("get", "cambrian", "-n", ns, "-o", "name").stdout.split()
    assert len(names) == 3  # category "cambrian"
    bad = _example("rollout")
    bad["metadata"]["name"] = "bad"
    bad["spec"]["ramp"]["steps"][0]["weights"] = [90, 5, 6]
    r = _apply(c, ns, bad)
    assert r.returncode != 0 and "must sum to 100" in r.stderr
    hyp = _example("hypothesis")
    hyp["spec"]["delta"]["patch"] = {"label": "CAST(like AS DOUBLE)"}
    r = _apply(c, ns, hyp)
    assert r.returncode != 0 and "spec.delta is immutable" in r.stderr
    evo = _example("evolution")
    evo["metadata"]["name"] = "bad-evo"
    evo["spec"]["agent"]["proposalsPerWakeup"] = 5
    r = _apply(c, ns, evo)
    assert r.returncode != 0 and "explore + exploit + innovate" in r.stderr
    # PromQL metrics: the API server's CEL (RE2) takes {{arm}} and {{window}} and refuses any other placeholder
    ro = _example("rollout")
    ro["metadata"]["name"] = "promql"
    ro["spec"]["metrics"]["promql"] = [{"name": "signup", "kind": "proportion", "queries": {
        "users": 'sum(max_over_time(x{arm="{{arm}}"}[{{window}}]))', "sumY": 'sum(y{arm="{{arm}}"})'}}]
    r = _apply(c, ns, ro)
    assert r.returncode == 0, r.stderr
    ro["metadata"]["name"] = "promql-bad"
    ro["spec"]["metrics"]["promql"][0]["queries"]["sumY"] = 'sum(y{arm="{{arm}}", ns="{{ns}}"})'
    r = _apply(c, ns, ro)
    assert r.returncode != 0 and "the only placeholders are {{arm}} and {{window}}" in r.stderr
    del ro["spec"]["metrics"]["promql"][0]["queries"]["sumY"]
    r = _apply(c, ns, ro)
    assert r.returncode != 0 and "kind proportion: give queries users, sumY" in r.stderr


def server_bundle(dep: dict) -> str:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("--bundle") + 1]


def test_operator_end_to_end(crds_installed, cluster_namespace, monkeypatch, tmp_path):
    from kopf.testing import KopfRunner

    c, ns = crds_installed, cluster_namespace
    pv = c.bound_claim(ns, "bundles", tmp_path / "bundles")
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
    metrics = json.dumps({"v": 1, "metrics": {"val_loss": 0.5, "auc": 0.7}})
    baseline_metrics = json.dumps({"v": 1, "metrics": {"val_loss": 0.6, "auc": 0.6}})
    evo = {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "e2e"},
        "spec": {
            "objective": {"northStar": [{"name": "returning_users"}]},
            "agent": {"provider": "builtin", "personas": ["optimizer"], "proposalsPerWakeup": 1,
                      "quotas": {"explore": 1, "exploit": 0, "innovate": 0}},
            "cadence": {"offline": "1h", "online": "3s"},
            "launchPolicy": "manual",
            "training": {"image": "cambrian/trainer:test", "memory": "1Gi", "cpu": "1",
                         "podAnnotations": {"kwok.cambrian.dev/exit-code": "0",
                                            "kwok.cambrian.dev/termination-message": baseline_metrics}},
            "experiment": {"ramp": {"steps": [{"weights": [95, 5], "duration": "1h"}]}},
            "data": {"world": {"users": 100, "days": 3}},
            "storage": {"claimName": "bundles"},
        },
    }
    # A second loop whose candidates gain 1e-9 over a baseline whose seeds agree: never better, never rolled out.
    tiny = json.loads(json.dumps(evo))
    tiny["metadata"]["name"] = "tiny-gain"
    tiny["spec"]["launchPolicy"] = "auto"
    hyp = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": "e2e-adamw"},
           "spec": {"evolutionRef": {"name": "e2e"}, "component": "optimizer", "explanation": "AdamW",
                    "delta": {"patch": {"name": "AdamW", "weight_decay": 0.01}}}}

    def get(kind, name):
        r = c.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait(what, pred, timeout=90):
        return poll(what, pred, timeout, lambda: f"; operator log:\n{runner.stdout[-4000:]}")

    args = ["run", "--standalone", "--namespace", ns, "-m", "cambrian.operator.handlers"]
    with KopfRunner(args, timeout=240) as runner:
        _apply(c, ns, evo, check=True)
        _apply(c, ns, tiny, check=True)
        champion = wait("the baseline champion", lambda: ((get("evolution", "e2e") or {}).get("status") or {})
                        .get("champion", {}).get("bundle"))
        assert champion.startswith("pvc://bundles/")
        # production serves the champion: Deployment + Service e2e-champion on its bundle, rolling safely
        dep = wait("the champion's Deployment", lambda: get("deployment", "e2e-champion"))
        assert server_bundle(dep) == "/var/lib/cambrian/" + champion.split("/", 3)[3]
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert dep["metadata"]["ownerReferences"][0]["kind"] == "Evolution"
        assert get("service", "e2e-champion")["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        wait("the champion serving", lambda: {x["type"]: x for x in (get("evolution", "e2e") or {})
                                              .get("status", {}).get("conditions", [])}
             .get("ChampionServing", {}).get("status") == "True")
        jobs = json.loads(c.kubectl("get", "jobs", "-n", ns, "-l", "cambrian.dev/owner-kind=evolution",
                                    "-o", "json").stdout)["items"]
        jobs = [j for j in jobs if j["metadata"]["ownerReferences"][0]["name"] == "e2e"]
        assert len(jobs) == 3  # the baseline's three seeds, for its noise floor
        job = jobs[0]
        floor = get("evolution", "e2e")["status"]["baselineMetrics"]["val_loss"]
        assert floor == {"value": 0.6, "std": 0.0, "stderr": 0.0, "seeds": 3}
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert job["metadata"]["ownerReferences"][0]["kind"] == "Evolution"

        # Later runs score better than the baseline (0.5 < 0.6), so the Online Agent rolls them out.
        evo["spec"]["training"]["podAnnotations"]["kwok.cambrian.dev/termination-message"] = metrics
        _apply(c, ns, evo, check=True)
        _apply(c, ns, hyp, check=True)
        wait("the tiny-gain champion", lambda: ((get("evolution", "tiny-gain") or {}).get("status") or {})
             .get("champion", {}).get("bundle"))
        tiny["spec"]["training"]["podAnnotations"]["kwok.cambrian.dev/termination-message"] = json.dumps(
            {"v": 1, "metrics": {"val_loss": 0.6 - 1e-9, "auc": 0.6}})
        _apply(c, ns, tiny, check=True)
        tiny_h = json.loads(json.dumps(hyp))
        tiny_h["metadata"]["name"], tiny_h["spec"]["evolutionRef"]["name"] = "tiny-adamw", "tiny-gain"
        _apply(c, ns, tiny_h, check=True)
        st = wait("the hypothesis scored", lambda: ((get("hypothesis", "e2e-adamw") or {}).get("status") or {})
                  if ((get("hypothesis", "e2e-adamw") or {}).get("status") or {}).get("phase") in ("Scored", "Live") else None)
        # 0.1 better on its first seed (promising), confirmed by two more seeds: better, and rolled out below
        assert st["offlineScore"] == 0.5 and st["attempts"] == 1 and st["verdict"] == "better"
        assert [r["seed"] for r in st["seedRuns"]] == [0, 1000, 1001] and st["confirmations"] == 2

        ro_name = wait("a rollout for it", lambda: next(iter(json.loads(c.kubectl(
            "get", "rollouts", "-n", ns, "-l", "cambrian.dev/hypothesis=e2e-adamw", "-o", "json").stdout)["items"]),
            {}).get("metadata", {}).get("name"))
        ro = wait("the rollout running", lambda: get("rollout", ro_name)
                  if ((get("rollout", ro_name) or {}).get("status") or {}).get("phase") == "Running" else None)
        assert ro["status"]["weightsSummary"] == "control=95,treatment=5"
        cms = json.loads(c.kubectl("get", "configmaps", "-n", ns, "-l", f"cambrian.dev/rollout={ro_name}",
                                   "-o", "json").stdout)["items"]
        (router,) = [x for x in cms if "router.yaml" in x.get("data", {})]
        cfg = yaml.safe_load(router["data"]["router.yaml"])
        assert [(a["name"], a["weight"]) for a in cfg["arms"]] == [("control", 95), ("treatment", 5)]
        wait("the hypothesis live", lambda: ((get("hypothesis", "e2e-adamw") or {}).get("status") or {})
             .get("phase") == "Live")

        tst = wait("the 1e-9 hypothesis scored", lambda: ((get("hypothesis", "tiny-adamw") or {}).get("status") or {})
                   if ((get("hypothesis", "tiny-adamw") or {}).get("status") or {}).get("phase") == "Scored" else None)
        assert tst["verdict"] == "not_better" and abs(tst["gain"] - 1e-9) < 1e-12 and tst["noiseFloor"] == 1e-4
        reviews = get("evolution", "tiny-gain")["status"]["counters"]["reviews"]
        wait("two more reviews of tiny-gain", lambda: get("evolution", "tiny-gain")["status"]["counters"]["reviews"]
             >= reviews + 2, timeout=30)
        tiny_hyps = [h for h in json.loads(c.kubectl("get", "hypotheses", "-n", ns, "-o", "json").stdout)["items"]
                     if h["spec"]["evolutionRef"]["name"] == "tiny-gain"]
        assert tiny_hyps and all((h.get("status") or {}).get("verdict") == "not_better" for h in tiny_hyps), tiny_hyps
        assert all(h["status"]["confirmations"] == 0 for h in tiny_hyps)  # nothing promising: no extra seeds
        assert not [r for r in json.loads(c.kubectl("get", "rollouts", "-n", ns, "-o", "json").stdout)["items"]
                    if r["spec"].get("evolutionRef", {}).get("name") == "tiny-gain"]

        # The analysis promotes the treatment (written as the operator would, Prometheus being absent here):
        # the Evolution switches production to its bundle with a rolling update of the same Deployment.
        treatment = ro["spec"]["treatments"][0]["bundle"]
        assert treatment.startswith("pvc://bundles/") and treatment != champion
        c.kubectl("patch", "rollout", ro_name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"phase": "Promoted", "decision": "promote", "winner": "treatment", "reason": "test"}}))
        switched = wait("production switched to the winner", lambda: (lambda d: d if d and server_bundle(d).endswith(
            treatment.split("/", 3)[3]) else None)(get("deployment", "e2e-champion")))
        assert switched["metadata"]["uid"] == dep["metadata"]["uid"]  # updated in place, not replaced
        assert switched["metadata"]["generation"] > dep["metadata"]["generation"]
        evo_status = wait("the new champion serving", lambda: (lambda st: st if {x["type"]: x["status"] for x in
                          st.get("conditions", [])}.get("ChampionServing") == "True" and st.get("champion", {})
                          .get("hypothesis") == "e2e-adamw" else None)((get("evolution", "e2e") or {}).get("status") or {}))
        assert evo_status["champion"]["bundle"] == treatment
    assert runner.exit_code == 0, runner.stdout[-4000:]
    c.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_without_a_bundle_claim_no_rollout_starts_and_the_evolution_says_why(crds_installed, cluster_namespace,
                                                                              monkeypatch):
    """Before: without spec.storage.claimName every bundle is job://... (gone with its Job's pod), yet a
    Rollout was started with it, whose arms could never load their model."""
    from kopf.testing import KopfRunner

    c, ns = crds_installed, cluster_namespace
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
    good = json.dumps({"v": 1, "metrics": {"val_loss": 0.5, "auc": 0.7}})
    worse = json.dumps({"v": 1, "metrics": {"val_loss": 0.6, "auc": 0.6}})
    evo = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "noclaim"},
           "spec": {"objective": {"northStar": [{"name": "returning_users"}]},
                    "agent": {"provider": "builtin", "personas": ["optimizer"], "proposalsPerWakeup": 1,
                              "quotas": {"explore": 1, "exploit": 0, "innovate": 0}},
                    "cadence": {"offline": "1h", "online": "2s"},
                    "training": {"image": "cambrian/trainer:test", "memory": "1Gi", "cpu": "1",
                                 "podAnnotations": {"kwok.cambrian.dev/exit-code": "0",
                                                    "kwok.cambrian.dev/termination-message": worse}},
                    "data": {"world": {"users": 100, "days": 3}}}}
    hyp = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": "noclaim-adamw"},
           "spec": {"evolutionRef": {"name": "noclaim"}, "component": "optimizer", "explanation": "AdamW",
                    "delta": {"patch": {"name": "AdamW", "weight_decay": 0.01}}}}

    def conditions():
        st = (c.get_json("evolution", "noclaim", "-n", ns).get("status") or {})
        return {x["type"]: x for x in st.get("conditions", [])}

    with KopfRunner(["run", "--standalone", "--namespace", ns, "-m", "cambrian.operator.handlers"], timeout=180) as runner:
        _apply(c, ns, evo, check=True)
        c.wait_for("the baseline champion", lambda: (c.get_json("evolution", "noclaim", "-n", ns).get("status") or {})
                   .get("champion", {}).get("bundle"), 90)
        evo["spec"]["training"]["podAnnotations"]["kwok.cambrian.dev/termination-message"] = good  # a better candidate
        _apply(c, ns, evo, check=True)
        _apply(c, ns, hyp, check=True)
        c.wait_for("the hypothesis scored", lambda: (c.get_json("hypothesis", "noclaim-adamw", "-n", ns)
                                                     .get("status") or {}).get("phase") == "Scored", 90)
        c.wait_for("the reason in status", lambda: conditions().get("RolloutsServable", {}).get("status") == "False", 60)
        reviews = c.get_json("evolution", "noclaim", "-n", ns)["status"]["counters"]["reviews"]
        c.wait_for("three more reviews", lambda: c.get_json("evolution", "noclaim", "-n", ns)["status"]["counters"]
                   ["reviews"] >= reviews + 3, 60)
        cond = conditions()
        assert c.get_json("rollouts", "-n", ns)["items"] == []
        assert cond["RolloutsServable"]["reason"] == "BundleNotServable"
        assert "job://" in cond["RolloutsServable"]["message"] and "spec.storage.claimName" in cond["RolloutsServable"]["message"]
        assert cond["ChampionServing"]["status"] == "False" and cond["ChampionServing"]["reason"] == "BundleNotServable"
        assert c.kubectl("get", "deployments", "-n", ns, "-o", "name").stdout.strip() == ""
        events = [e for e in c.get_json("events", "-n", ns)["items"] if e["reason"] == "BundleNotServable"]
        # one Warning for the champion, one for the rollouts: reported once, not at every review
        assert sorted(e["message"].split(":")[0] for e in events) == ["champion baseline", "no Rollout is started"], events
        assert all(e["type"] == "Warning" and e.get("count", 1) == 1 for e in events)
    assert runner.exit_code == 0, runner.stdout[-4000:]


# ---------------------------------------------------------------------------------------------
# Failover mid-Rollout: two operator processes in one kopf peering, the leader killed while it ramps
# ---------------------------------------------------------------------------------------------

RAMP = [[95, 5], [80, 20], [60, 40], [50, 50]]
STEP_SECONDS = 15


def _operator_replica(c, ns: str, peering: str, priority: int, log_path):
    """`cambrian operator run` as the chart runs a replica: peering on, its own priority; a process of its own."""
    import sys

    env = {**c.env(), "CAMBRIAN_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "cambrian.cli", "operator", "run", "--namespace", ns,
                                 "--peering", peering, "--priority", str(priority), "--interval", "2"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _working(log: str) -> bool:
    """A peering kopf operator starts paused and logs each change: Pausing / Resuming operations."""
    return log.rfind("Resuming operations") > log.rfind("Pausing operations")


def test_standby_continues_a_live_rollout_when_the_leader_dies(crds_installed, cluster_namespace, tmp_path):
    """The leader is SIGKILLed (no goodbye to the peering) right after its first ramp step. The standby
    resumes once the dead peer's entry expires, continues the ramp from the persisted status (each step
    once, in order), keeps the arms it finds, and takes the decision that follows: nothing lost, nothing
    done twice (Events, ramp steps, Deployments)."""
    c, ns = crds_installed, cluster_namespace
    c.kubectl("apply", "--server-side", "-f", os.path.join(REPO, "crds", "kopfpeerings.kopf.dev.yaml"))
    c.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=60s")
    pv = c.bound_claim(ns, "bundles", tmp_path / "bundles")
    _apply(c, ns, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "failover"}}, check=True)
    logs = {name: tmp_path / f"operator-{name}.log" for name in ("leader", "standby")}
    procs = {"leader": _operator_replica(c, ns, "failover", 200, logs["leader"]),
             "standby": _operator_replica(c, ns, "failover", 100, logs["standby"])}
    log = lambda name: logs[name].read_text(errors="replace")  # noqa: E731

    def wait(what, pred, timeout=120):
        for name, p in procs.items():
            if name != "leader" and p.poll() is not None:
                raise AssertionError(f"operator {name} exited {p.returncode}:\n{log(name)[-4000:]}")
        return poll(what, pred, timeout, lambda: "".join(f"\n--- {n}:\n{log(n)[-3000:]}" for n in procs))

    def rollout() -> dict:
        return json.loads(c.kubectl("get", "rollout", "ramp", "-n", ns, "-o", "json").stdout)

    def events() -> list[tuple[str, str, int]]:
        items = c.get_json("events", "-n", ns, "--field-selector", "involvedObject.kind=Rollout")["items"]
        return sorted((e["reason"], e["message"], e.get("count") or 1) for e in items)

    def deployments() -> dict[str, str]:
        return {d["metadata"]["labels"].get("cambrian.dev/arm", "?"): d["metadata"]["uid"]
                for d in c.get_json("deployments", "-n", ns)["items"]}

    def router_weights() -> list[tuple[str, int]]:
        cms = c.get_json("configmaps", "-n", ns, "-l", "cambrian.dev/rollout=ramp")["items"]
        (router,) = [x for x in cms if "router.yaml" in x.get("data", {})]
        return [(a["name"], a["weight"]) for a in yaml.safe_load(router["data"]["router.yaml"])["arms"]]

    try:
        def peers() -> dict:
            return c.get_json("kopfpeering", "failover", "-n", ns).get("status") or {}

        # kopf starts a peering replica paused and logs only changes: the standby logs nothing while it waits
        wait("both replicas in the peering, the leader working", lambda: len(peers()) == 2 and _working(log("leader")))
        time.sleep(3)
        assert not _working(log("standby")), log("standby")
        _apply(c, ns, {
            "apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "ramp"},
            "spec": {"control": {"name": "control", "bundle": "pvc://bundles/bundles/e/baseline/bundle"},
                     "treatments": [{"name": "treatment", "hypothesisRef": {"name": "h"},
                                     "bundle": "pvc://bundles/bundles/h/attempt-1/bundle"}],
                     "salt": "failover",
                     "ramp": {"steps": [{"weights": w, "duration": f"{STEP_SECONDS}s"} for w in RAMP]},
                     # no Prometheus here: no readout falls due during the test, so no ReadoutSkipped warnings
                     "metrics": {"northStar": [{"name": "returning_users"}], "readout": {"interval": "1h"}},
                     "decisionPolicy": "manual"}}, check=True)
        wait("the leader's first ramp step (and its Event)",
             lambda: rollout().get("status", {}).get("step") == 1 and ("Ramped", "step 1: control=80,treatment=20", 1)
             in events(), timeout=180)
        arms = deployments()
        assert sorted(arms) == ["control", "router", "treatment"], arms  # the two arms and the rollout's router
        assert "ramp" not in log("standby"), "the paused replica handled the Rollout"

        procs["leader"].kill()  # SIGKILL: a crash, its peering entry stays until it expires
        procs["leader"].wait(timeout=30)
        wait("the standby to resume", lambda: _working(log("standby")), timeout=240)
        wait("the last ramp step", lambda: rollout()["status"].get("step") == len(RAMP) - 1, timeout=120)
        st = rollout()["status"]
        assert st["phase"] == "Running" and st["weightsSummary"] == "control=50,treatment=50"
        assert len(st["stepHistory"]) == len(RAMP) and st["stepHistory"] == sorted(st["stepHistory"])
        assert router_weights() == [("control", 50), ("treatment", 50)]

        # The decision after the takeover: a rollback approved by annotation, taken once by the new leader.
        c.kubectl("annotate", "rollout", "ramp", "-n", ns, "cambrian.dev/approve=rollback")
        wait("the rollback", lambda: rollout()["status"].get("phase") == "RolledBack")
        wait("every user back on control", lambda: router_weights() == [("control", 100), ("treatment", 0)])
        wait("the rollback's Event", lambda: any(r == "RolledBack" for r, _, _ in events()), timeout=30)
        time.sleep(5)  # a few more timer intervals (2 s): a duplicate would show now
        seen = events()
        assert [(r, m.split(":")[0], n) for r, m, n in seen if r != "RolledBack"] == sorted(
            [("Created", "arms control, treatment; 4 ramp steps", 1), ("Started", "step 0", 1)]
            + [("Ramped", f"step {k}", 1) for k in range(1, len(RAMP))]), seen
        assert [(r, n) for r, _, n in seen if r == "RolledBack"] == [("RolledBack", 1)], seen
        # the treatment's arm goes with the rollback; the control's and the router are the ones the dead leader made
        wait("the treatment arm removed", lambda: deployments() == {k: arms[k] for k in ("control", "router")},
             timeout=60)
        assert "ramp" in log("standby") and procs["standby"].poll() is None
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        c.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_an_approval_given_before_the_rollout_awaits_one_is_removed_with_a_warning(crds_installed, cluster_namespace):
    """approve=promote on a Rollout that is not AwaitingApproval approves nothing: the step removes it (a merge patch
    with null, KubernetesPlatform.mark) and posts a Warning Event, so it cannot promote a later recommendation.
    Before: it stayed on the object and promoted at the first step in AwaitingApproval."""
    from datetime import datetime, timezone

    from cambrian.operator import loop
    from cambrian.operator.platform.kubernetes import KubernetesPlatform

    c, ns = crds_installed, cluster_namespace
    api_client = c.api_client()
    from kubernetes import client

    Objects = lambda: _Objects(client.CustomObjectsApi(api_client))  # noqa: E731
    _apply(c, ns, {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "early", "annotations": {"cambrian.dev/approve": "promote", "keep": "me"}},
        "spec": {"control": {"name": "control", "bundle": "pvc://bundles/bundles/e/baseline/bundle"},
                 "treatments": [{"name": "treatment", "hypothesisRef": {"name": "h"},
                                 "bundle": "pvc://bundles/bundles/h/attempt-1/bundle"}],
                 "salt": "early", "ramp": {"steps": [{"weights": [90, 10], "duration": "1h"}]},
                 "metrics": {"northStar": [{"name": "returning_users"}], "readout": {"interval": "1h"}},
                 "decisionPolicy": "manual"}}, check=True)
    obj = Objects().get("rollouts", ns, "early")
    s = loop.step("Rollout", obj, Objects(), KubernetesPlatform(api_client=api_client), datetime.now(timezone.utc))
    assert s.result.status.phase == "Deploying"
    annotations = Objects().get("rollouts", ns, "early")["metadata"]["annotations"]
    assert "cambrian.dev/approve" not in annotations and annotations["keep"] == "me"
    warnings = [e for e in c.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=early")["items"]
                if e["reason"] == "ApprovalIgnored"]
    assert [e["type"] for e in warnings] == ["Warning"] and "Pending" in warnings[0]["message"]


# Gateway API's HTTPRoute, as far as the operator uses it (the real CRD's schema is not needed to store one)
HTTPROUTE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    # a *.k8s.io group: the API server wants the approval the real CRD carries
    "metadata": {"name": "httproutes.gateway.networking.k8s.io",
                 "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"}},
    "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
             "names": {"kind": "HTTPRoute", "plural": "httproutes", "singular": "httproute", "listKind": "HTTPRouteList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def test_two_live_rollouts_of_one_evolution_take_turns_on_its_http_route(crds_installed, cluster_namespace):
    """Two Rollouts of one Evolution (topK 2) with spec.serving.httpRoute, each step a fresh KubernetesPlatform (an
    operator restarted between any two steps: who holds the route is read back from the route). Before: both ran,
    and the route carried only the last one's arms, so the first one's users were served by the second one's arms
    while its analysis believed its own weights held; and a deleted Rollout's finalizer wrote its control over the
    route whoever held it. Now the first holds the route, the second waits (its ramp not started) until the first
    concluded and the champion has the route back, and a stale write is refused by the API server (409).
    The holder's route goes to its router alone, once that router is ready (before: to its arms at the ramp's
    weights, which the Gateway split per request, no user kept on one arm nor logged as exposed); the user's
    matches, filters and other rules stay (before: spec.rules was replaced by one bare rule); and deleting the
    holder gives the route back to the champion (before: it pointed at the deleted holder's Services)."""
    from datetime import datetime, timezone

    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from cambrian.operator import loop
    from cambrian.operator.platform.kubernetes import KubernetesPlatform, router_name
    from cambrian.operator.reconcile import rollout as R

    c, ns = crds_installed, cluster_namespace
    r = c.kubectl("apply", "-f", "-", input=yaml.safe_dump(HTTPROUTE_CRD), check=False)
    assert r.returncode == 0, r.stderr
    c.kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io", "--timeout=60s")
    rank = {"name": "rank", "matches": [{"path": {"type": "PathPrefix", "value": "/rank"}}],
            "filters": [{"type": "RequestHeaderModifier",
                         "requestHeaderModifier": {"set": [{"name": "x-via", "value": "gateway"}]}}],
            "backendRefs": [{"name": "e-champion", "port": 8080, "weight": 100}]}
    redirect = {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {
                    "type": "ReplaceFullPath", "replaceFullPath": "/rank"}, "statusCode": 301}}]}
    _apply(c, ns, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "feed"},
                   "spec": {"parentRefs": [{"name": "gateway"}], "rules": [rank, redirect]}}, check=True)
    evo = _example("evolution")
    evo["metadata"]["name"] = "e"
    evo["spec"]["serving"] = {"httpRoute": {"name": "feed"}}
    _apply(c, ns, evo, check=True)
    for name in ("r1", "r2"):
        _apply(c, ns, {
            "apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
            "spec": {"evolutionRef": {"name": "e"}, "control": {"name": "control", "bundle": "file:///b/champion"},
                     "treatments": [{"name": "treatment", "hypothesisRef": {"name": f"h-{name}"},
                                     "bundle": f"file:///b/{name}"}],
                     "salt": name, "ramp": {"steps": [{"weights": [90, 10], "duration": "1h"}]},
                     "metrics": {"northStar": [{"name": "returning_users"}], "readout": {"interval": "1h"}},
                     "decisionPolicy": "manual"}}, check=True)
    custom = client.CustomObjectsApi(c.api_client())
    objects = _Objects(custom)

    def step(name: str) -> dict:
        s = loop.step("Rollout", objects.get("rollouts", ns, name), objects, KubernetesPlatform(api_client=c.api_client()),
                      datetime.now(timezone.utc))
        if s.result is not None:
            custom.patch_namespaced_custom_object_status("cambrian.dev", "v1alpha1", ns, "rollouts", name,
                                                         {"status": s.result.status.wire()})
        return objects.get("rollouts", ns, name)["status"]

    def read() -> dict:
        return custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", ns, "httproutes", "feed")

    def route() -> tuple[str | None, list[tuple[str, int]]]:
        r = read()
        return ((r["metadata"].get("annotations") or {}).get("cambrian.dev/route-holder"),
                [(b["name"], b["weight"]) for b in r["spec"]["rules"][0]["backendRefs"]])

    def router(name: str) -> str:
        return router_name(R.owner_of(loop.meta_of(objects.get("rollouts", ns, name))))

    def waiting(st: dict) -> str | None:
        return next((x["reason"] for x in st.get("conditions") or [] if x["type"] == "RouteHeld"), None)

    poll("r1 running", lambda: step("r1").get("phase") == "Running", 120)
    poll("r2 running or waiting for the route", lambda: (st := step("r2")).get("phase") == "Running" or waiting(st), 120)
    # r1's router serves (kwok readies its pod): r1's route goes to it alone, and r1's ramp stays in the router
    poll("r1's route on its router", lambda: step("r1") and route() == ("r1", [(router("r1"), 100)]), 120)
    # before: (None, [(r2's control, 90), (r2's treatment, 10)]), r2 the last writer
    rules = read()["spec"]["rules"]  # the user's rule kept whole but for its backends, the redirect untouched
    assert rules == [{**rank, "backendRefs": [{"name": router("r1"), "port": 8080, "weight": 100}]}, redirect]
    st2 = step("r2")
    assert st2["phase"] == "Deploying" and waiting(st2) == "WaitingForRoute" and not st2.get("startedAt")
    routers = c.get_json("configmaps", "-n", ns, "-l", "cambrian.dev/rollout=r2")["items"]
    assert not [m for m in routers if "router.yaml" in (m.get("data") or {})]  # no user goes through r2 yet

    # r1 rolls back: its router sends every user to control, the route stays on it until its Evolution takes it
    c.kubectl("annotate", "rollout", "r1", "-n", ns, "cambrian.dev/approve=rollback")
    assert step("r1")["phase"] == "RolledBack" and route() == ("r1", [(router("r1"), 100)])
    cm = c.get_json("configmap", router("r1"), "-n", ns)
    assert [(a["name"], a["weight"]) for a in yaml.safe_load(cm["data"]["router.yaml"])["arms"]] == [
        ("control", 100), ("treatment", 0)]
    assert step("r2")["phase"] == "Deploying"
    from cambrian.operator.reconcile import httproute as HR
    from cambrian.operator.reconcile.actions import Owner, RouteChampion

    platform = KubernetesPlatform(api_client=c.api_client())
    owner = Owner("Evolution", "e", "uid-e", ns)
    serving = {"httpRoute": {"name": "feed", "port": 8080}}
    seen = platform.http_route(owner, serving)
    assert seen.holder == "r1" and HR.champion_takes(seen, False, ["r2"])
    platform.route_champion(RouteChampion(owner, "e-champion", serving, seen.version))
    assert route() == (None, [("e-champion", 100)])
    with pytest.raises(ApiException) as stale:  # decided on the reading before: the API server refuses it
        platform.route_champion(RouteChampion(owner, "e-champion", serving, seen.version))
    assert stale.value.status == 409

    assert step("r2")["phase"] == "Running" and route()[0] == "r2"
    poll("r2's route on its router", lambda: step("r2") and route() == ("r2", [(router("r2"), 100)]), 120)
    # deleting r1 moves nothing on r2's route (before: its finalizer sent the route to r1's control arm)
    loop.finalize_rollout(objects.get("rollouts", ns, "r1"), objects, platform)
    assert route() == ("r2", [(router("r2"), 100)])
    # deleting r2, the holder, gives the route back to the champion before its router goes
    loop.finalize_rollout(objects.get("rollouts", ns, "r2"), objects, platform)
    assert route() == (None, [("e-champion", 100)]) and read()["spec"]["rules"][1] == redirect
    assert not c.get_json("services", "-n", ns, "-l", "cambrian.dev/rollout=r2")["items"]


def test_the_spend_ledger_survives_the_api_server_and_its_marks_land(crds_installed, cluster_namespace):
    """The Evolution's step against the API server: status.spendLedger is kept by the CRD's schema (not pruned), the
    marks land on the Hypotheses (KubernetesPlatform.mark), the merge patch drops the names once marked (nulls), and
    after `kubectl delete hypotheses --all` the spend stays."""
    from datetime import datetime, timezone

    from kubernetes import client

    from cambrian.operator import handlers, loop
    from cambrian.operator.platform.kubernetes import KubernetesPlatform
    from cambrian.operator.reconcile.actions import A_SPEND_COUNTED

    c, ns = crds_installed, cluster_namespace
    api_client = c.api_client()
    custom = client.CustomObjectsApi(api_client)

    class Objects:
        def get(self, plural, namespace, name):
            return next((o for o in self.list(plural, namespace) if o["metadata"]["name"] == name), None)

        def list(self, plural, namespace):
            return custom.list_namespaced_custom_object("cambrian.dev", "v1alpha1", namespace, plural)["items"]

    _apply(c, ns, {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "evo"},
                   "spec": {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100}},
                            "agent": {"budgets": {"evaluations": 5}}, "noise": {"baselineSeeds": 3}}}, check=True)
    for name in ("h1", "h2"):
        _apply(c, ns, {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": name},
                       "spec": {"evolutionRef": {"name": "evo"}, "component": "optimizer", "explanation": "x",
                                "delta": {"patch": {"lr": 0.01}}}}, check=True)
        custom.patch_namespaced_custom_object_status("cambrian.dev", "v1alpha1", ns, "hypotheses", name, {
            "status": {"phase": "Scored", "attempts": 1, "gpuHours": 0.5}})
    # the baseline was trained (its three runs): the step goes on to the spend
    custom.patch_namespaced_custom_object_status("cambrian.dev", "v1alpha1", ns, "evolutions", "evo", {"status": {
        "phase": "Running", "champion": {"name": "baseline", "bundle": "pvc://b/baseline"}}})
    platform = KubernetesPlatform(api_client=api_client)

    def step():
        evo = Objects().get("evolutions", ns, "evo")
        s = loop.step("Evolution", evo, Objects(), platform, datetime.now(timezone.utc))
        custom.patch_namespaced_custom_object_status("cambrian.dev", "v1alpha1", ns, "evolutions", "evo", {
            "status": handlers.status_patch([evo.get("status") or {}], s.result.status)})  # as handlers._step
        return Objects().get("evolutions", ns, "evo")["status"]

    st = step()
    assert st["spend"]["evaluations"] == 5 and set(st["spendLedger"]["closing"]) == {"h1", "h2"}
    step()  # the marks
    assert all(A_SPEND_COUNTED in h["metadata"]["annotations"] for h in Objects().list("hypotheses", ns))
    st = step()
    assert st["spendLedger"].get("closing", {}) == {} and st["spendLedger"]["closed"]["evaluations"] == 2
    c.kubectl("delete", "hypotheses", "--all", "-n", ns, "--wait=true")
    st = step()
    assert st["spend"]["evaluations"] == 5 and st["phase"] == "BudgetExhausted"



def _two_arm_rollout(name: str, **spec) -> dict:
    """A Rollout of a control and one treatment arm, a one-hour step at 90/10, no readout due during a test."""
    return {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
            "spec": {"control": {"name": "control", "bundle": "pvc://bundles/bundles/e/baseline/bundle"},
                     "treatments": [{"name": "treatment", "hypothesisRef": {"name": "h"},
                                     "bundle": "pvc://bundles/bundles/h/attempt-1/bundle"}],
                     "salt": name, "ramp": {"steps": [{"weights": [90, 10], "duration": "1h"}]},
                     "metrics": {"northStar": [{"name": "returning_users"}], "readout": {"interval": "1h"}}, **spec}}


def _rollout_children(c, ns: str, name: str) -> list[tuple[str, str]]:
    """(kind, arm) of the Deployments, Services and ConfigMaps a Rollout made (arm `router`: its router)."""
    return sorted((x["kind"], x["metadata"]["labels"].get("cambrian.dev/arm")) for kind in
                  ("deployments", "services", "configmaps")
                  for x in c.get_json(kind, "-n", ns, "-l", f"cambrian.dev/rollout={name}")["items"])


def test_a_released_rollout_removes_its_arms_and_router_from_the_cluster(crds_installed, cluster_namespace):
    """A concluded Rollout keeps its control and winner's arms and its router (production may still reach them) until
    its Evolution marks it cambrian.dev/released; its next step then deletes them. Before: they stayed until the
    Rollout was deleted (locally its processes were stopped at once)."""
    from datetime import datetime, timezone

    from kubernetes import client

    from cambrian.operator import loop
    from cambrian.operator.platform.kubernetes import KubernetesPlatform

    c, ns = crds_installed, cluster_namespace
    api_client = c.api_client()
    custom = client.CustomObjectsApi(api_client)

    class Objects:
        def get(self, plural, namespace, name):
            return custom.get_namespaced_custom_object("cambrian.dev", "v1alpha1", namespace, plural, name)

        def list(self, plural, namespace):
            return custom.list_namespaced_custom_object("cambrian.dev", "v1alpha1", namespace, plural)["items"]

    _apply(c, ns, _two_arm_rollout("won"), check=True)
    custom.patch_namespaced_custom_object_status("cambrian.dev", "v1alpha1", ns, "rollouts", "won", {"status": {
        "phase": "Promoted", "decision": "promote", "winner": "treatment", "reason": "test", "observedGeneration": 1}})
    platform = KubernetesPlatform(api_client=api_client)

    def step():
        s = loop.step("Rollout", Objects().get("rollouts", ns, "won"), Objects(), platform, datetime.now(timezone.utc))
        custom.patch_namespaced_custom_object_status("cambrian.dev", "v1alpha1", ns, "rollouts", "won",
                                                     {"status": s.result.status.wire()})

    def children():
        return _rollout_children(c, ns, "won")

    step()  # concluded, not released: the winner's and control's arms and the router (100% on the winner) are kept
    kept = children()
    assert kept == sorted([(k, a) for k in ("Deployment", "Service") for a in ("control", "router", "treatment")]
                          + [("ConfigMap", "router")]), kept
    c.kubectl("annotate", "rollout", "won", "-n", ns, "cambrian.dev/released=h")
    step()
    assert children() == []
    step()  # nothing is set up again
    assert children() == []


def test_the_operator_releases_a_concluded_rollout_once_it_is_annotated(crds_installed, cluster_namespace, monkeypatch,
                                                                       tmp_path):
    """Through the kopf handlers (not a direct loop.step): a concluded Rollout has no timer, so only the change of
    its cambrian.dev/released annotation can wake it. Its next step removes the arms and the router it kept and
    says so in status.arms[].ready. A Rollout without an Evolution (this one) is released by whoever annotates it.
    Before: the annotated Rollout kept its control arm, its router and status.arms[].ready true (the parity
    test's cluster Rollouts, 90 s after their Evolution annotated them)."""
    from kopf.testing import KopfRunner

    c, ns = crds_installed, cluster_namespace
    pv = c.bound_claim(ns, "bundles", tmp_path / "bundles")
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
    monkeypatch.setenv("CAMBRIAN_METRICS_PORT", "off")

    def status() -> dict:
        return c.get_json("rollout", "hand", "-n", ns).get("status") or {}

    def children() -> list[tuple[str, str]]:
        return _rollout_children(c, ns, "hand")

    def ready() -> dict[str, bool]:
        return {a["name"]: bool(a.get("ready")) for a in status().get("arms") or []}

    def wait(what, pred, timeout=90):  # (KopfRunner.stdout waits for the operator to end: its log is in the report)
        return poll(what, pred, timeout, lambda: f"; status {status()}; children {children()}")

    kept = sorted([(k, a) for k in ("Deployment", "Service") for a in ("control", "router")] + [("ConfigMap", "router")])
    try:
        with KopfRunner(["run", "--standalone", "--namespace", ns, "-m", "cambrian.operator.handlers"],
                        timeout=180) as runner:
            _apply(c, ns, _two_arm_rollout("hand", decisionPolicy="manual"), check=True)
            wait("the rollout running", lambda: status().get("phase") == "Running")
            c.kubectl("annotate", "rollout", "hand", "-n", ns, "cambrian.dev/approve=rollback")
            wait("rolled back, the control arm and the router kept",
                 lambda: status().get("phase") == "RolledBack" and children() == kept
                 and ready() == {"control": True, "treatment": False})
            c.kubectl("annotate", "rollout", "hand", "-n", ns, "cambrian.dev/released=by-hand")
            wait("the arms and router released", lambda: children() == [] and ready() == {"control": False,
                                                                                           "treatment": False},
                 timeout=45)
            time.sleep(3)  # nothing is set up again
            assert children() == [] and status()["phase"] == "RolledBack"
        assert runner.exit_code == 0, runner.stdout[-4000:]
    finally:
        c.kubectl("delete", "pv", pv, "--wait=false", check=False)
