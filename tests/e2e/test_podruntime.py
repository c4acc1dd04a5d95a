"""The pod runtime harness's translation of a pod into a host process (no cluster needed): what the
operator pod gets must be what a kubelet would give it, or the chart tests would test something else."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cambrian.testing.podruntime import PodRuntime, field_ref, service_account_kubeconfig

POD = {
    "metadata": {"name": "op-7d9-x", "namespace": "cam", "uid": "u-1", "labels": {"app": "op"},
                 "annotations": {"a/b": "c"}},
    "spec": {"nodeName": "kwok-cpu-0", "serviceAccountName": "cam-operator", "containers": []},
    "status": {"hostIP": "10.0.0.2", "podIP": "10.0.1.5"},
}


class FakeCluster:
    """kubectl answers for the objects a pod refers to; records the calls."""

    def __init__(self, objects: dict[tuple[str, str], dict], ca: Path):
        self.objects, self.calls = objects, []
        self.server, self.pki = "https://127.0.0.1:6443", SimpleNamespace(ca_cert=ca)

    def kubectl(self, *args, check=True, **kw):
        self.calls.append(args)
        if args[:2] == ("create", "token"):
            return subprocess.CompletedProcess(args, 0, "tok-123\n", "")
        import json
        return subprocess.CompletedProcess(args, 0, json.dumps(self.objects[(args[1], args[2])]), "")


def test_field_refs_resolve_as_the_downward_api():
    assert field_ref(POD, "metadata.namespace") == "cam"
    assert field_ref(POD, "metadata.name") == "op-7d9-x"
    assert field_ref(POD, "metadata.labels['app']") == "op"
    assert field_ref(POD, "metadata.annotations['a/b']") == "c"
    assert field_ref(POD, "spec.serviceAccountName") == "cam-operator"
    assert field_ref(POD, "status.podIP") == "10.0.1.5"
    with pytest.raises(ValueError, match="not supported"):
        field_ref(POD, "spec.containers[0].image")


def test_a_container_becomes_the_same_process_with_host_paths_and_ports(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/the/test/admin/kubeconfig")  # must not reach the pod
    ca = tmp_path / "ca.crt"
    ca.write_text("CA")
    c = FakeCluster({("configmap", "settings"): {"data": {"level": "debug"}},
                     ("secret", "keys"): {"data": {"k": base64.b64encode(b"s3cret").decode()}}}, ca)
    rt = PodRuntime(c, "cam", tmp_path)
    container = {
        "name": "operator", "command": ["cambrian"],
        "args": ["operator", "run", "--liveness", "http://0.0.0.0:8080/healthz", "--config", "/etc/cambrian/op.yaml"],
        "ports": [{"containerPort": 8000}, {"containerPort": 8080}],
        "env": [{"name": "CONFIG", "value": "/etc/cambrian/op.yaml"},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "METRICS_PORT", "value": "8000"},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "k"}}},
                {"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/cambrian"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes = {"config": tmp_path / "vol" / "config", "tmp": tmp_path / "vol" / "tmp"}
    ports = {8000: 41000, 8080: 41001}
    cmd, env = rt._process(POD, container, volumes, tmp_path, ports, {"KUBECONFIG": str(tmp_path / "sa.kubeconfig")})
    assert cmd == [str(Path(sys.executable).parent / "cambrian"), "operator", "run", "--liveness",
                   "http://127.0.0.1:41001/healthz", "--config", f"{tmp_path}/vol/config/op.yaml"]
    assert env["CONFIG"] == f"{tmp_path}/vol/config/op.yaml" and env["HOME"] == f"{tmp_path}/vol/tmp"
    assert (env["NS"], env["METRICS_PORT"], env["LEVEL"], env["KEY"]) == ("cam", "41000", "debug", "s3cret")
    assert env["KUBECONFIG"] == str(tmp_path / "sa.kubeconfig")  # the pod's own credentials, never the test's
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "CONFIG", "NS", "METRICS_PORT", "LEVEL", "KEY", "HOME", "KUBECONFIG"}


def test_env_from_a_secret_gives_all_its_keys_and_env_entries_win(tmp_path):
    secret = {"data": {k: base64.b64encode(v.encode()).decode() for k, v in {"PGPASSWORD": "pw", "MODE": "a"}.items()}}
    c = FakeCluster({("secret", "warehouse"): secret, ("configmap", "opts"): {"data": {"LEVEL": "info"}}}, tmp_path / "ca")
    rt = PodRuntime(c, "cam", tmp_path)
    container = {"name": "fetch", "command": ["true"],
                 "envFrom": [{"secretRef": {"name": "warehouse"}}, {"configMapRef": {"name": "opts"}, "prefix": "X_"}],
                 "env": [{"name": "MODE", "value": "b"}]}
    _, env = rt._process(POD, container, {}, tmp_path, {}, {})
    assert (env["PGPASSWORD"], env["MODE"], env["X_LEVEL"]) == ("pw", "b", "info")


def test_unsupported_env_sources_are_refused(tmp_path):
    rt = PodRuntime(FakeCluster({}, tmp_path / "ca"), "cam", tmp_path)
    container = {"name": "x", "command": ["true"], "env": [{"name": "R", "valueFrom": {"resourceFieldRef": {}}}]}
    with pytest.raises(ValueError, match="not supported"):
        rt._process(POD, container, {}, tmp_path, {}, {})


def test_service_account_kubeconfig_carries_a_pod_bound_token_and_the_ca(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("CA")
    c = FakeCluster({}, ca)
    path = service_account_kubeconfig(c, "cam", "cam-operator", tmp_path / "kc", bound_pod=POD)
    (call,) = c.calls
    assert call[:3] == ("create", "token", "cam-operator") and "--bound-object-uid=u-1" in call
    cfg = yaml.safe_load(path.read_text())
    assert cfg["users"][0]["user"] == {"token": "tok-123"}
    assert base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]) == b"CA"
    assert cfg["clusters"][0]["cluster"]["server"] == c.server
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_pods_that_do_not_mount_a_token_get_no_credentials(tmp_path):
    c = FakeCluster({("serviceaccount", "default"): {"automountServiceAccountToken": False}}, tmp_path / "ca")
    rt = PodRuntime(c, "cam", tmp_path)
    assert rt._credentials({**POD, "spec": {**POD["spec"], "automountServiceAccountToken": False}}, tmp_path) == {}
    assert rt._credentials({**POD, "spec": {"containers": []}}, tmp_path) == {}  # the SA opts out
    assert not any(call[:2] == ("create", "token") for call in c.calls)


def test_the_cluster_harness_finds_the_repository():
    # testing/ moved out of cambrian/: a stale parents[2] made REPO_ROOT the folder above the repository, so
    # find_bin_dir() found no build script and every cluster test was skipped as "binaries not built".
    from cambrian.testing import cluster

    assert cluster.BUILD_SCRIPT.is_file() and (cluster.REPO_ROOT / "charts" / "cambrian" / "Chart.yaml").is_file()


def test_a_configmap_volume_waits_for_its_configmap_as_a_kubelet_does(tmp_path):
    """The operator creates a training Job's ConfigMap beside the Job: the harness must wait for it (a kubelet
    retries the mount), not fail the pod on the first NotFound; any other error fails at once."""
    import json

    class Late(FakeCluster):
        def __init__(self, *a, missing=2, error="NotFound"):
            super().__init__(*a)
            self.missing, self.error = missing, error

        def kubectl(self, *args, check=True, **kw):
            if args[:2] == ("get", "configmap") and self.missing > 0:
                self.missing -= 1
                self.calls.append(args)
                return subprocess.CompletedProcess(args, 1, "", f'Error from server ({self.error}): configmaps "run" ...')
            return super().kubectl(*args, check=check, **kw)

    ca = tmp_path / "ca.crt"
    ca.write_text("CA")
    pod = {**POD, "spec": {**POD["spec"], "volumes": [{"name": "run", "configMap": {"name": "run"}}]}}
    late = Late({("configmap", "run"): {"data": {"config.json": json.dumps({"seed": 1})}}}, ca)
    vols = PodRuntime(late, "cam", tmp_path)._volumes(pod, tmp_path / "p")
    assert json.loads((vols["run"] / "config.json").read_text()) == {"seed": 1}
    assert sum(1 for c in late.calls if c[:2] == ("get", "configmap")) == 3
    denied = Late({}, ca, missing=1, error="Forbidden")
    with pytest.raises(RuntimeError, match="Forbidden"):
        PodRuntime(denied, "cam", tmp_path)._volumes(pod, tmp_path / "q")
