"""Sockets: a TCP server on the host's loopback and a filesystem unix socket of the host. The sandbox has its
own network namespace (an empty loopback), no host path to the socket, and seccomp refuses non-unix sockets."""

import socket
import threading

import pytest

from attacks import arch, plugin, reported, run_attack


@pytest.fixture
def servers(tmp_path):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(5)
    unix_path = str(tmp_path / "host.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen(5)
    hits = []

    def accept(srv):
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            hits.append(conn.recv(16))
            conn.close()

    for srv in (tcp, unix):
        threading.Thread(target=accept, args=(srv,), daemon=True).start()
    yield tcp.getsockname()[1], unix_path, hits
    tcp.close()
    unix.close()


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
