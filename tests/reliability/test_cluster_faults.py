"""Faults against the real API server (testing/cluster.py): the kubernetes platform under
injected 409 conflicts and 429 throttling, and the operator "killed" (its process state thrown away)
mid-Job and restarted, while a Hypothesis trains on a kwok node.

The handler is the operator's own (cambrian.operator.handlers.reconcile_hypothesis) driven the way kopf
drives it: run it on the object as the API server has it; a kopf.TemporaryError means nothing is written
and the handler runs again later; otherwise its status patch is written to the status subresource (and
that write itself can hit a 409). The API clients of the platform are wrapped so that a seeded share of
calls fail with 429 Too Many Requests, and creates with 409 Conflict *without* creating anything (the
adapter must not take a conflict for success blindly). A restart builds a fresh platform and memo.
Checks: the Hypothesis ends Scored with the trainer's metrics, exactly one Job exists for each of its runs
(attempt 1 and the two confirmation seeds its promising gain earns), and the faults really fired.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster


class Flaky:
    """Wraps a kubernetes API object: some calls fail before reaching the server."""

    def __init__(self, inner, rng: random.Random, stats: dict, p429: float = 0.25, p409: float = 0.25,
                 first_409: set | None = None):
        self._inner, self._rng, self._stats, self._p429, self._p409 = inner, rng, stats, p429, p409
        self._first_409 = first_409 if first_409 is not None else set()  # shared: the first such call, once

    def __getattr__(self, name):
        fn = getattr(self._inner, name)
        if not callable(fn):
            return fn

        def call(*a, **k):
            from kubernetes.client.rest import ApiException

            if self._rng.random() < self._p429:
                self._stats["429"] = self._stats.get("429", 0) + 1
                raise ApiException(status=429, reason="Too Many Requests")
            forced = name in self._first_409
            self._first_409.discard(name)
            if name.startswith(("create_", "replace_", "patch_")) and (forced or self._rng.random() < self._p409):
                self._stats["409"] = self._stats.get("409", 0) + 1
                raise ApiException(status=409, reason="Conflict")
            return fn(*a, **k)

        return call


@pytest.fixture(scope="module")
def crds(cluster):
    for crd in sorted((ROOT / "crds").glob("*.cambrian.dev.yaml")):
        r = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd), check=False)
        assert r.returncode == 0, r.stderr
    for plural in ("evolutions", "hypotheses", "rollouts"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.cambrian.dev", "--timeout=60s")
    return cluster


def _example(name: str) -> dict:
    return yaml.safe_load((ROOT / "manifests" / "examples" / f"{name}.yaml").read_text())


def test_hypothesis_survives_conflicts_throttling_and_operator_restarts(crds, cluster_namespace):
    import kopf
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from cambrian.operator import handlers
    from cambrian.operator.platform.kubernetes import KubernetesPlatform

    c, ns = crds, cluster_namespace
    config.load_kube_config(config_file=str(c.kubeconfig))  # the handlers' own CustomObjectsApi() uses it
    metrics = {"val_loss": 0.4242, "auc": 0.61, "long_watch_corr": 0.2, "return_corr": 0.05, "like_corr": 0.1,
               "top_watch_share": 0.07}
    evo = _example("evolution")
    t = evo["spec"]["training"]
    for k in ("queueName", "priorityClassName", "nodeSelector", "tolerations"):  # no Kueue/priority class here
        t.pop(k, None)
    t["gpu"] = {"count": 0}
    evo["spec"].pop("storage", None)  # no bundle volume here: bundles stay in the Job
    t["podAnnotations"] = {"kwok.cambrian.dev/duration": "3s", "kwok.cambrian.dev/exit-code": "0",
                           "kwok.cambrian.dev/termination-message": json.dumps({"v": 1, "ok": True, "metrics": metrics})}
    hyp = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": "lr-up"},
           "spec": {"evolutionRef": {"name": evo["metadata"]["name"]}, "component": "optimizer",
                    "explanation": "a larger learning rate", "delta": {"patch": {"lr": 0.01}}}}
    c.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([evo, hyp]))
    # The Evolution's baseline as measured over three seeds (its own reconcile is not run here): 0.4242 is a
    # promising gain, so two confirmation Jobs are created under the same faults, each once.
    client.CustomObjectsApi(c.api_client()).patch_namespaced_custom_object_status(
        "cambrian.dev", "v1alpha1", ns, "evolutions", evo["metadata"]["name"],
        {"status": {"baselineMetrics": {"val_loss": {"value": 0.5, "std": 0.01, "seeds": 3}}}})

    rng = random.Random(5)
    stats: dict[str, int] = {}
    # The seeded draws depend on how many calls each reconcile makes; the Job create always meets one
    # conflict-without-creating, so the case is exercised whatever the order of calls.
    first_409 = {"create_namespaced_job"}
    custom = client.CustomObjectsApi(c.api_client())

    def operator():  # a fresh operator process: new platform, new memo, flaky clients
        p = KubernetesPlatform(api_client=c.api_client())
        p.batch, p.core, p.apps = (Flaky(x, rng, stats, first_409=first_409) for x in (p.batch, p.core, p.apps))
        return kopf.Memo(platform=p)

    memo = operator()
    restarts = temporary = lost_writes = 0
    phases = []
    deadline = time.time() + 120
    while time.time() < deadline:
        body = custom.get_namespaced_custom_object("cambrian.dev", "v1alpha1", ns, "hypotheses", "lr-up")
        phase = (body.get("status") or {}).get("phase")
        phases.append(phase)
        if phase in ("Scored", "Failed", "Rejected"):
            break
        patch = kopf.Patch()
        try:
            handlers.reconcile_hypothesis(kopf.Body(body), patch, memo)
        except kopf.TemporaryError:
            temporary += 1  # kopf retries later from the persisted status
        except ApiException as exc:  # a read was throttled: kopf retries the handler
            assert exc.status == 429, exc
            temporary += 1
        else:
            if patch.status and rng.random() < 0.3:
                lost_writes += 1  # the status write hit a 409 (another writer): nothing persisted
            elif patch.status:
                custom.patch_namespaced_custom_object_status("cambrian.dev", "v1alpha1", ns, "hypotheses", "lr-up",
                                                             {"status": dict(patch.status)})
        if rng.random() < 0.2:
            memo = operator()  # the operator was killed and restarted
            restarts += 1
        time.sleep(0.3)
    final = custom.get_namespaced_custom_object("cambrian.dev", "v1alpha1", ns, "hypotheses", "lr-up")
    st = final.get("status") or {}
    if st.get("phase") != "Scored":
        seen = c.kubectl("get", "jobs,pods,configmaps", "-n", ns, "-o", "wide", check=False).stdout
        pods = c.kubectl("get", "pods", "-n", ns, "-o", "yaml", check=False).stdout[-3000:]
        pytest.fail(f"phase {st.get('phase')}: {st.get('conditions')}\n{seen}\n{pods}\nfaults {stats}")
    assert st["offlineScore"] == pytest.approx(0.4242) and st["attempts"] == 1 and st["verdict"] == "better"
    jobs = json.loads(c.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"]
    mine = [j for j in jobs if any(r.get("uid") == final["metadata"]["uid"]
                                   for r in j["metadata"].get("ownerReferences") or [])]
    assert len(mine) == 3, [j["metadata"]["name"] for j in mine]  # the attempt and two confirmations, none twice
    assert sorted(j["metadata"]["name"] for j in mine) == sorted(r["job"] for r in st["seedRuns"])
    assert st["jobName"] == st["seedRuns"][0]["job"]
    assert stats.get("429", 0) > 0 and stats.get("409", 0) > 0 and temporary > 0
    assert restarts > 0 and "Training" in phases
