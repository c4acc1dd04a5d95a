"""Sockets: a TCP server on the host's loopback and a filesystem unix socket of the host. The sandbox has its
own network namespace (an empty loopback), no host path to the socket, and seccomp refuses non-unix sockets."""

import socket

import pytest

from attacks import arch, plugin, reported, run_attack
from hostile import loopback_tcp, recording_servers


@pytest.fixture
def servers(tmp_path):
    tcp = loopback_tcp()
    unix_path = str(tmp_path / "host.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    with recording_servers(tcp, unix) as hits:
        yield tcp.getsockname()[1], unix_path, hits


def test_candidate_reaches_no_host_socket(path, tiny_world, tmp_path, servers):
    port, unix_path, hits = servers
    code = plugin(init=f"""
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
    report = reported(run_attack(path, tiny_world, tmp_path / "run", arch(code)))
    assert "tcp=connected" not in report and "unix=connected" not in report, report
    assert "unix=<class 'FileNotFoundError'>" in report, report
    assert hits == []
