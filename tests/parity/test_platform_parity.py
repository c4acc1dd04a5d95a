"""Parity of the two platforms (issue 12, deliverable 6): one seeded scenario (cambrian.testing.parity: a weak
baseline, the built-in proposer, a user's Hypothesis whose delta does not apply, two Rollouts, one that wins and
one that breaches a guardrail) is reconciled by the local driver over the LocalPlatform and by the kopf handlers
over the KubernetesPlatform on the real test control plane. Training results and online readouts are the same
on both (the scenario's stand-in trainer and readout, entered at each platform's own seam); every persisted
status of every object is recorded and each object's sequence of phases, verdicts and decisions must be the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cambrian.operator.platform.kubernetes import KubernetesPlatform
from cambrian.testing import parity as P
from cambrian.testing.fixtures import cluster, cluster_namespace  # noqa: F401
from cambrian.testing.waiting import poll

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
W1 = f"Hypothesis/{P.EVOLUTION}-w1"
RO = f"Rollout/{P.EVOLUTION}-ro-{P.EVOLUTION}-w1"

# What the scenario must give on each platform: each object's distinct (phase, verdict, failure stage) /
# (phase, decision, winner) / (phase, champion) transitions, in order.
EXPECTED = {
    f"Evolution/{P.EVOLUTION}": [("Running", None), ("Running", "baseline"), ("BudgetExhausted", "baseline"),
                                 ("BudgetExhausted", f"{P.EVOLUTION}-w1-0")],
    f"Hypothesis/{P.EVOLUTION}-bad": [("Rejected", None, "static")],
    f"{W1}-0": [("Training", None, None), ("Training", "promising", None), ("Scored", "better", None),
                ("Live", "better", None), ("Launched", "better", None)],
    f"{W1}-1": [("Training", None, None), ("Training", "promising", None), ("Scored", "better", None),
                ("Live", "better", None), ("Retired", "better", None)],
    f"{W1}-2": [("Training", None, None), ("Training", "promising", None), ("Scored", "not_better", None)],
    f"{W1}-3": [("Training", None, None), ("Scored", "not_better", None)],
    f"{W1}-4": [("Training", None, None), ("Failed", None, "training")],
    f"{RO}-0": [("Deploying", None, None), ("Running", None, None), ("Promoted", "promote", "treatment")],
    f"{RO}-1": [("Deploying", None, None), ("Running", None, None), ("RolledBack", "rollback", None)],
}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict:
    """The scenario through the local driver (once for the module): each object's transitions."""
    root = tmp_path_factory.mktemp("parity")
    world, bundle = P.train_real_bundle(root)
    with pytest.MonkeyPatch.context() as mp:
        return run_local(root / "local", world, bundle, mp)


def outcome(seen: P.Transitions, objects: list[tuple[str, dict]], events: list[tuple[str, str, str, str]]) -> dict:
    """What a run is compared by: each object's transitions, its final status's loop fields, its distinct journal
    entries (sorted: entries of one object written in the same second have no order in the cluster's Events;
    distinct: the cluster can post an entry twice when a change handler and a timer step the same old status,
    see handlers._reported, which the local driver, stepping each object once per pass, never does; without the
    Evolution's retirement of a Rollout that then decided on its own, see P.retirement_decided_elsewhere)."""
    journal: dict[str, list] = {}
    for kind, name, event, message in events:
        obj, ev, msg = P.journal_entry(kind, name, event, message)
        if not P.retirement_decided_elsewhere(kind, event, message, objects):
            journal.setdefault(obj, []).append([ev, msg])
    return {"transitions": seen.table(),
            "status": {f"{k}/{P.normalized(o['metadata']['name'])}": P.summary(k, o) for k, o in sorted(
                objects, key=lambda ko: (ko[0], ko[1]["metadata"]["name"]))},
            "journal": {k: sorted(set(map(tuple, v))) for k, v in sorted(journal.items())}}


def run_local(root: Path, world: Path, bundle: Path, monkeypatch) -> dict:
    """The scenario through the local driver; every status it writes is recorded."""
    from cambrian.operator import loop
    from cambrian.operator.local_driver import LocalDriver
    from cambrian.operator.localstore import LocalStore
    from cambrian.operator.platform.local import LocalPlatform, stop_leftovers

    seen = P.Transitions()
    write = LocalStore.write_status

    def recording(self, kind, name, status):
        write(self, kind, name, status)
        seen.add(kind, name, {"status": status})

    monkeypatch.setattr(LocalStore, "write_status", recording)
    monkeypatch.setattr(LocalPlatform, "prometheus_readout", lambda self, rollout, gauges=None: P.readout(rollout))
    driver = LocalDriver(root, data_dir=world, train_command=P.local_train_command(bundle), poll_s=0.1)
    driver.apply([P.evolution(), P.bad_hypothesis()])
    try:
        summary = driver.run()
    finally:
        stop_leftovers(root.resolve())
    assert summary.reason.startswith("every Evolution is done"), summary
    store = LocalStore(root)
    objects = [(k, o) for k in ("Evolution", "Hypothesis", "Rollout") for o in store.list(loop.PLURALS[k])]
    rows = [json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()]
    return outcome(seen, objects, [(r["kind"], r["name"], r["event"], r["message"]) for r in rows])


def run_cluster(c, ns: str, monkeypatch, tmp_path: Path) -> dict:
    """The scenario through the kopf handlers on the test control plane, until the same end state."""
    from kopf.testing import KopfRunner

    from cambrian.operator.platform.kubernetes import KubernetesPlatform

    from cambrian.operator import crdgen

    for kind in crdgen.NAMES:
        r = c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / crdgen.file_name(kind)),
                      check=False)
        assert r.returncode == 0, r.stderr
    for plural in ("evolutions", "hypotheses", "rollouts"):
        c.kubectl("wait", "--for=condition=Established", f"crd/{plural}.cambrian.dev", "--timeout=60s")
    pv = c.bound_claim(ns, "bundles", tmp_path / "bundles")
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
    monkeypatch.setattr(KubernetesPlatform, "prometheus_readout", lambda self, rollout, gauges=None: P.readout(rollout))
    seen = P.Transitions()

    def status(kind, name):
        return (c.get_json(kind, name, "-n", ns).get("status") or {}) if name else {}

    def done() -> bool:
        hyps = c.get_json("hypotheses", "-n", ns)["items"]
        ros = c.get_json("rollouts", "-n", ns)["items"]
        evo = status("evolution", P.EVOLUTION)
        return (len(hyps) == len(P.PLAN) + 1 and len(ros) == 2
                and all((r.get("status") or {}).get("phase") in ("Promoted", "RolledBack") for r in ros)
                and all((h.get("status") or {}).get("phase") in ("Launched", "Retired", "Scored", "Failed", "Rejected")
                        for h in hyps)
                and (evo.get("champion") or {}).get("hypothesis") is not None)

    args = ["run", "--standalone", "--namespace", ns, "-m", "cambrian.operator.handlers"]
    try:
        with P.ClusterWatch(c.kubeconfig, ns, seen) as watch, P.KwokTrainer(c, ns) as trainer, \
                KopfRunner(args, timeout=300) as runner:
            c.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([P.evolution(), P.bad_hypothesis()]))
            poll("the scenario concluded in the cluster", done, 240,
                 lambda: f"\ntransitions: {json.dumps(seen.table(), indent=1)}\ntrainer: {trainer.finished} "
                         f"{trainer.errors[-5:]}\noperator log:\n{runner.stdout[-6000:]}")
            # The scenario's timing assumption (spec.cadence.online): every hypothesis is judged against the baseline
            # before the review that starts the first Rollout (whose winner becomes the champion, the new reference)
            judged = seen.first("Hypothesis", ("Scored", "Failed", "Rejected"), last=True)
            started = seen.first("Rollout", ("Pending", "Deploying"))
            assert judged is not None and started is not None and judged < started, (
                f"the first Rollout started {started - judged if judged and started else '?'} s before the last "
                "hypothesis was judged: the cluster trained slower than the scenario's online cadence allows")
            # one more review after the last decision: nothing else starts (as the local driver's end requires)
            reviews = status("evolution", P.EVOLUTION)["counters"]["reviews"]
            poll("one more review", lambda: status("evolution", P.EVOLUTION)["counters"]["reviews"] > reviews, 60)
            objects = [(kind, o) for kind in ("Evolution", "Hypothesis", "Rollout")
                       for o in c.get_json(P.ClusterWatch.PLURALS[kind], "-n", ns)["items"]]
            # a step's Proposed/Validated/TrainingStarted travel as one Event (requests per object): split again
            events = [(e["involvedObject"]["kind"], e["involvedObject"]["name"], reason, message)
                      for e in c.get_json("events", "-n", ns)["items"]
                      if (e.get("source") or {}).get("component") == "cambrian-operator"
                      for reason, message in KubernetesPlatform.journal_entries(e["reason"], e.get("message") or "")]
        assert runner.exit_code == 0, runner.stdout[-4000:]
        # (after the runner: it captures stdout while the operator runs)
        print(f"parity: the last hypothesis was judged {started - judged:.1f} s before the first Rollout started")
        assert not trainer.errors, trainer.errors
        assert not [e for e in watch.errors if "410" not in e and "Gone" not in e], watch.errors
    finally:
        c.kubectl("delete", "pv", pv, "--wait=false", check=False)
    return outcome(seen, objects, events)


def test_the_local_platform_runs_the_scenario(local_run):
    assert local_run["transitions"] == EXPECTED, json.dumps(local_run["transitions"], indent=1)


@pytest.mark.cluster
def test_the_kubernetes_platform_gives_the_same_phases_verdicts_and_decisions(
        local_run, cluster, cluster_namespace, tmp_path, monkeypatch):  # noqa: F811
    remote = run_cluster(cluster, cluster_namespace, monkeypatch, tmp_path)
    Path(os.environ.get("PARITY_DUMP", os.devnull)).write_text(json.dumps({"local": local_run, "kubernetes": remote},
                                                                          indent=1))
    # the operator persists a new Hypothesis' admission before its Job (handlers.step_hypothesis, issue 16: time to
    # first phase); the local driver writes the step's end. Otherwise the phases are the same.
    for name, local in local_run["transitions"].items():
        if name.startswith("Hypothesis/") and local and local[0][0] == "Training":
            seq = remote["transitions"].get(name) or []
            assert seq[:1] == [("Validated", None, None)], (name, seq)
            remote["transitions"][name] = seq[1:]
    for part in ("transitions", "status", "journal"):
        assert remote[part] == local_run[part], json.dumps({"local": local_run[part], "kubernetes": remote[part]},
                                                           indent=1)
