"""Sockets: a TCP server on the host's loopback and a filesystem unix socket of the host. The sandbox has its
own network namespace (an empty loopback), no host path to the socket, and seccomp refuses non-unix sockets."""

import socket

import pytest

from attacks import arch, plugin, reported, run_attack, run_attack_in_cluster
from hostile import loopback_tcp, recording_servers


@pytest.fixture
def servers(tmp_path):
    tcp = loopback_tcp()
    unix_path = str(tmp_path / "host.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    with recording_servers(tcp, unix) as hits:
        yield tcp.getsockname()[1], unix_path, hits


def _attack(port: int, unix_path: str) -> str:
    return plugin(init=f"""
sk = imp("socket")
seen = []
try:
    c = sk.create_connection(("127.0.0.1", {port}), timeout=2)
    c.sendall(b"tcp")
    seen.append("tcp=connected")
except Exception as e:
    seen.append("tcp=" + str(type(e)))
try:
    u = sk.socket(sk.AF_UNIX)
    u.connect({unix_path!r})
    u.sendall(b"unix")
    seen.append("unix=connected")
except Exception as e:
    seen.append("unix=" + str(type(e)))
raise RuntimeError("REDTEAM " + " ".join(seen))
""")


def test_candidate_reaches_no_host_socket(path, tiny_world, tmp_path, servers):
    port, unix_path, hits = servers
    report = reported(run_attack(path, tiny_world, tmp_path / "run", arch(_attack(port, unix_path))))
    assert "tcp=connected" not in report and "unix=connected" not in report, report
    assert "unix=<class 'FileNotFoundError'>" in report, report
    assert hits == []


@pytest.mark.cluster
def test_the_cluster_trainer_container_opens_no_network_socket(cluster, cluster_namespace, pod_runtime, tmp_path,
                                                               servers):
    """The cluster row: the step's in-process seccomp filter refuses TCP (the chart's NetworkPolicy is a second
    layer). The harness runs containers as host processes on the host's loopback, so without the filter the
    connection is made. Unix sockets stay allowed (a pod has no host path to one; here the harness shares the
    host's file system, so that half is not asserted)."""
    port, unix_path, hits = servers
    report = reported(run_attack_in_cluster(cluster, cluster_namespace, pod_runtime, tmp_path,
                                            arch(_attack(port, unix_path))))
    assert "tcp=<class 'OSError'>" in report, report  # EAFNOSUPPORT from the filter
    assert b"tcp" not in hits
