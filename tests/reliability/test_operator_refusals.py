"""Objects the API server accepts but the operator cannot act on, against the real control plane with
the operator running in-process (issue 21, item 3). Each case reaches a visible phase or reason and a
Kubernetes Event within a reconcile or two, and then stays quiet: no status rewrites, no repeated
events, until its spec changes. (What admission refuses is in test_bad_inputs.py's corpus.)

Before the fix: a Hypothesis named over 63 characters looped on a 422 for its ConfigMap label with an
empty status; a child the API server refused (here: a node selector key it does not accept) was
retried every 10 s with an empty status; an invalid spec.baseline left only a condition, no phase, no
event, and "failed permanently" in the log on every tick; missing prerequisites (PriorityClass, PVC,
Kueue queue, nodes for the selector) showed nothing but "Training" or "waiting"."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import yaml

os.environ.setdefault("CAMBRIAN_OPERATOR_INTERVAL", "1")  # read when handlers.py is imported
os.environ.setdefault("CAMBRIAN_METRICS_PORT", "0")
os.environ.setdefault("CAMBRIAN_METRICS_ADDR", "127.0.0.1")

from cambrian.operator import crdgen  # noqa: E402
from cambrian.testing.waiting import poll  # noqa: E402
from cambrian.operator.reconcile.common import label_value  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = json.dumps({"v": 1, "metrics": {"val_loss": 0.5, "auc": 0.7}})
LONG = "a-hypothesis-whose-name-is-longer-than-any-kubernetes-label-value-may-be-x"
assert len(LONG) > 63


def evolution(name: str, **training) -> dict:
    return {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": name},
        "spec": {
            "objective": {"northStar": [{"name": "returning_users"}]},
            "agent": {"provider": "builtin", "personas": ["optimizer"], "proposalsPerWakeup": 1,
                      "quotas": {"explore": 1, "exploit": 0, "innovate": 0}},
            "cadence": {"offline": "1h", "online": "1h"},
            "training": {"image": "cambrian/trainer:test", "memory": "1Gi", "cpu": "1", "gpu": {"count": 0},
                         "podAnnotations": {"kwok.cambrian.dev/exit-code": "0",
                                            "kwok.cambrian.dev/termination-message": METRICS}, **training},
            "data": {"world": {"users": 100, "days": 3}},
        },
    }


def hypothesis(name: str, evolution_name: str, patch: dict) -> dict:
    return {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Hypothesis", "metadata": {"name": name},
            "spec": {"evolutionRef": {"name": evolution_name}, "component": "optimizer",
                     "explanation": "issue 21", "delta": {"patch": patch}}}


@pytest.fixture(scope="module")
def operator(cluster):
    """CRDs, a namespace, and the operator watching it (in-process, as the other cluster suites run it)."""
    from kopf.testing import KopfRunner

    for kind in crdgen.NAMES:
        r = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                            os.path.join(REPO, "crds", crdgen.file_name(kind)), check=False)
        assert r.returncode == 0, r.stderr
    for plural in ("evolutions", "hypotheses", "rollouts"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.cambrian.dev", "--timeout=60s")
    ns = f"refusals-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    try:
        with KopfRunner(["run", "--standalone", "--namespace", ns, "-m", "cambrian.operator.handlers"],
                        timeout=600) as runner:
            yield Ops(cluster, ns, runner)
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


class Ops:
    def __init__(self, cluster, ns, runner):
        self.c, self.ns, self.runner = cluster, ns, runner

    def apply(self, obj: dict) -> None:
        r = self.c.kubectl("apply", "-n", self.ns, "-f", "-", input=yaml.safe_dump(obj), check=False)
        assert r.returncode == 0, r.stderr

    def get(self, kind: str, name: str) -> dict:
        r = self.c.kubectl("get", kind, name, "-n", self.ns, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def status(self, kind: str, name: str) -> dict:
        return self.get(kind, name).get("status") or {}

    def events(self, name: str) -> list[dict]:
        out = self.c.kubectl("get", "events", "-n", self.ns, "--field-selector", f"involvedObject.name={name}",
                             "-o", "json").stdout
        return json.loads(out)["items"]

    def wait(self, what: str, pred, timeout: float = 90):
        return poll(what, pred, timeout, lambda: f"; operator log:\n{self.runner.stdout[-4000:]}")

    def quiet(self, kind: str, name: str, seconds: float = 5.0) -> None:
        """Several timer intervals pass (1 s here) without a status write or a new event."""
        before, events = self.get(kind, name)["metadata"]["resourceVersion"], len(self.events(name))
        time.sleep(seconds)
        assert self.get(kind, name)["metadata"]["resourceVersion"] == before, f"{kind} {name} keeps being written"
        assert len(self.events(name)) == events, f"{kind} {name} keeps getting events"


def _reasons(events: list[dict]) -> list[str]:
    return [e["reason"] for e in events]


def test_a_long_hypothesis_name_trains(operator):
    """Its ConfigMap and Job carry the owner label as a hashed value <= 63 characters."""
    operator.apply(evolution("long-evo"))
    operator.wait("the baseline champion", lambda: operator.status("evolution", "long-evo").get("champion", {}).get("bundle"))
    operator.apply(hypothesis(LONG, "long-evo", {"name": "AdamW", "weight_decay": 0.01}))
    st = operator.wait("the long-named hypothesis scored", lambda: operator.status("hypothesis", LONG)
                       if operator.status("hypothesis", LONG).get("phase") in ("Scored", "Live") else None)
    assert st["attempts"] == 1 and st["offlineScore"] == 0.5
    job = operator.get("job", st["jobName"])
    assert job["metadata"]["labels"]["cambrian.dev/owner"] == label_value(LONG) != LONG


def test_an_invalid_baseline_fails_once_visibly_and_resumes_after_an_edit(operator):
    bad = evolution("bad-baseline")
    bad["spec"]["baseline"] = {"optimizer": {"name": "Adam", "lr": -1}}
    operator.apply(bad)
    st = operator.wait("phase Failed", lambda: operator.status("evolution", "bad-baseline")
                       if operator.status("evolution", "bad-baseline").get("phase") == "Failed" else None, 30)
    assert "spec.baseline" in st["reason"] and "lr" in st["reason"]
    assert [c["reason"] for c in st["conditions"] if c["type"] == "Ready"] == ["InvalidSpec"]
    events = operator.wait("the event", lambda: operator.events("bad-baseline"), 15)
    assert [(e["reason"], e["type"]) for e in events] == [("InvalidSpec", "Warning")]
    operator.quiet("evolution", "bad-baseline")
    assert not operator.c.kubectl("get", "jobs", "-n", operator.ns, "-l", "cambrian.dev/owner=bad-baseline",
                                  "-o", "name").stdout.strip()
    bad["spec"]["baseline"] = {"optimizer": {"name": "Adam", "lr": 0.01}}
    operator.apply(bad)
    operator.wait("the baseline champion after the edit",
                  lambda: operator.status("evolution", "bad-baseline").get("champion", {}).get("bundle"))
    assert "Resumed" in _reasons(operator.events("bad-baseline"))
    assert operator.status("evolution", "bad-baseline")["phase"] == "Running"


def test_a_child_the_api_server_refuses_fails_the_parent_once(operator):
    """A node selector key the Job API refuses (422): the Evolution says so and stops trying."""
    evo = evolution("refused", nodeSelector={"not a label key!": "x"})
    operator.apply(evo)
    st = operator.wait("phase Failed", lambda: operator.status("evolution", "refused")
                       if operator.status("evolution", "refused").get("phase") == "Failed" else None, 30)
    assert "was refused" in st["reason"] and "nodeSelector" in st["reason"]
    assert [c["reason"] for c in st["conditions"] if c["type"] == "Ready"] == ["Refused"]
    operator.wait("the Refused event", lambda: "Refused" in _reasons(operator.events("refused")), 15)
    operator.quiet("evolution", "refused")
    assert _reasons(operator.events("refused")).count("Refused") == 1
    del evo["spec"]["training"]["nodeSelector"]
    operator.apply(evo)
    operator.wait("the baseline champion after the edit",
                  lambda: operator.status("evolution", "refused").get("champion", {}).get("bundle"))


@pytest.mark.parametrize("name,training,says", [
    ("no-priority-class", {"priorityClassName": "cambrian-missing"}, "PriorityClass cambrian-missing does not exist"),
    ("no-queue", {"queueName": "cambrian-missing"}, "Kueue LocalQueue cambrian-missing does not exist"),
    ("no-nodes", {"nodeSelector": {"cambrian.dev/pool": "nowhere"}}, "cannot be scheduled"),
])
def test_a_missing_prerequisite_is_named_in_status_and_one_event(operator, name, training, says):
    operator.apply(evolution(name, **training))

    def blocked():  # one read: a status read before the one that named the blocker may not have it yet
        st = operator.status("evolution", name)
        return st if says in (st.get("reason") or "") else None

    st = operator.wait(f"the blocker of {name}", blocked, 60)
    (c,) = [c for c in st["conditions"] if c["type"] == "ChampionReady"]
    assert c["reason"] == "Blocked" and says in c["message"]
    operator.wait("the Blocked event", lambda: "Blocked" in _reasons(operator.events(name)), 15)
    time.sleep(4)
    assert _reasons(operator.events(name)).count("Blocked") == 1


def test_a_missing_volume_claim_is_named(operator):
    evo = evolution("no-claim")
    evo["spec"]["storage"] = {"claimName": "cambrian-missing-bundles"}
    operator.apply(evo)
    st = operator.wait("the blocker", lambda: operator.status("evolution", "no-claim")
                       if "cambrian-missing-bundles" in (operator.status("evolution", "no-claim").get("reason") or "")
                       else None, 60)
    assert "persistentvolumeclaim" in st["reason"]


def test_a_delta_that_breaks_the_config_is_rejected_with_an_event(operator):
    """spec.delta.patch is free-form for the CRD; the trainer's own parser refuses it before any Job."""
    operator.apply(evolution("delta-evo"))
    operator.apply(hypothesis("negative-lr", "delta-evo", {"lr": -5}))
    st = operator.wait("Rejected", lambda: operator.status("hypothesis", "negative-lr")
                       if operator.status("hypothesis", "negative-lr").get("phase") == "Rejected" else None, 30)
    assert "lr" in st["reason"]
    operator.wait("the Rejected event", lambda: "Rejected" in _reasons(operator.events("negative-lr")), 15)
    assert not st.get("jobName")
    operator.quiet("hypothesis", "negative-lr")


def test_a_rollout_whose_bundles_claim_is_missing_says_so(operator):
    """The shipped example Rollout on an install without the PVC: before, only "waiting for every
    arm's Deployment to be ready"."""
    ro = yaml.safe_load(open(os.path.join(REPO, "manifests", "examples", "rollout.yaml")))
    ro["metadata"]["name"] = "no-bundles"
    del ro["spec"]["evolutionRef"]
    operator.apply(ro)
    st = operator.wait("the arms' blocker", lambda: operator.status("rollout", "no-bundles")
                       if 'persistentvolumeclaim "cambrian-bundles" not found' in
                       (operator.status("rollout", "no-bundles").get("reason") or "") else None, 60)
    assert st["phase"] == "Deploying" and "arm control" in st["reason"]
    assert [c["reason"] for c in st["conditions"] if c["type"] == "ArmsReady"] == ["Blocked"]
    operator.wait("the Blocked event", lambda: "Blocked" in _reasons(operator.events("no-bundles")), 15)
