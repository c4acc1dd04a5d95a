"""Shared pieces of the hostile-candidate tests (test_untrusted_code.py and the red-team corpus in redteam/):
the plugin source an attack is wrapped in, and host-side sockets that record whether a candidate reached them."""

from __future__ import annotations

import socket
import textwrap
import threading
from contextlib import contextmanager
from typing import Iterator

_MODEL = """{header}
class Model(nn.Module):
    def __init__(self, spec, cfg):
        super().__init__()
        self.lin = nn.Linear(2, 1)
{init}
    def forward(self, batch):
{forward}
        return self.lin(batch["dense"]).squeeze(-1)
"""


def plugin_source(init: str = "", forward: str = "", header: str = "") -> str:
    """Architecture plugin code with INIT in __init__ (runs in the gate) and FORWARD in forward (every batch)."""
    ind = lambda s: textwrap.indent(textwrap.dedent(s).strip("\n"), " " * 8) if s.strip() else ""  # noqa: E731
    return _MODEL.format(header=header, init=ind(init), forward=ind(forward))


@contextmanager
def recording_servers(*servers: socket.socket) -> Iterator[list[bytes]]:
    """Accept on each listening socket in a thread, recording the first bytes of every connection."""
    hits: list[bytes] = []

    def accept(srv: socket.socket) -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed when the test ends
                return
            hits.append(conn.recv(16))
            conn.close()

    for srv in servers:
        srv.listen(5)
        threading.Thread(target=accept, args=(srv,), daemon=True).start()
    try:
        yield hits
    finally:
        for srv in servers:
            srv.close()


def loopback_tcp() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    return srv
