"""High availability of the operator (README "High availability"): with more than one replica the chart
runs kopf's peering (leader election), a PodDisruptionBudget and a rolling update; with one replica kopf
runs standalone and the pod is recreated, so two operators never work at once in either case."""

from __future__ import annotations

import pytest

from cambrian.operator import cli as operator_cli


def _operator(render, docs):
    return render.one(docs, "Deployment", "cambrian-operator")


def test_default_is_two_replicas_electing_through_a_cluster_peering(render):
    docs = render.docs()
    dep = _operator(render, docs)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--peering") + 1] == "cambrian-operator"
    (peering,) = render.by_kind(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "cambrian-operator"
    # kopf names each replica by POD_ID in the peering object's status
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    (pdb,) = render.by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_watched_namespaces_get_a_peering_each_and_a_namespaced_rule(render):
    docs = render.docs("--set", "operator.watchNamespaces={team-a,team-b}")
    assert not render.by_kind(docs, "ClusterKopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in render.by_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    (role,) = render.by_kind(docs, "ClusterRole")
    kopf_rules = [r for r in role["rules"] if r["apiGroups"] == ["kopf.dev"]]
    assert kopf_rules == [{"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
                           "verbs": ["get", "list", "watch", "patch"]}]


def test_one_replica_runs_standalone_recreated_without_peering_rights(render):
    docs = render.docs("--set", "operator.replicas=1")
    dep = _operator(render, docs)
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert "--peering" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not render.by_kind(docs, "ClusterKopfPeering") and not render.by_kind(docs, "PodDisruptionBudget")
    (role,) = render.by_kind(docs, "ClusterRole")
    assert not [r for r in role["rules"] if "kopf.dev" in r["apiGroups"]]


def test_cli_passes_the_peering_and_a_random_priority_to_kopf(monkeypatch):
    """Replicas of one Deployment have the same arguments: kopf pauses every peer on a priority tie,
    so each process must draw its own priority."""
    import kopf
    from typer.testing import CliRunner

    seen = []

    async def fake_operator(**kwargs):
        seen.append(kwargs)

    monkeypatch.setattr(kopf, "operator", fake_operator)
    runner = CliRunner()
    for _ in range(2):
        assert runner.invoke(operator_cli.app, ["run", "--peering", "p1", "-n", "ns"]).exit_code == 0
    assert runner.invoke(operator_cli.app, ["run", "--peering", "p1", "--priority", "7"]).exit_code == 0
    assert runner.invoke(operator_cli.app, ["run"]).exit_code == 0
    a, b, fixed, alone = seen
    assert a["peering_name"] == "p1" and a["standalone"] is False and a["namespaces"] == ["ns"]
    assert a["priority"] != b["priority"] and a["priority"] >= 1
    assert fixed["priority"] == 7 and fixed["clusterwide"] is True
    assert alone["standalone"] is True and alone["peering_name"] is None and alone["priority"] is None


@pytest.mark.parametrize("bad", [["--priority", "0"], ["--priority", "x"]])
def test_cli_refuses_a_bad_priority(bad):
    from typer.testing import CliRunner

    r = CliRunner().invoke(operator_cli.app, ["run", "--peering", "p", *bad])
    assert r.exit_code == 2
