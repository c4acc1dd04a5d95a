"""Real data servers on loopback for the tests of trainer/sources.py: a private PostgreSQL cluster (Debian's
`postgresql` package) and moto's S3 server (in a virtualenv of its own, CAMBRIAN_MOTO_VENV or
~/.cache/cambrian/moto: its botocore cannot share the project's environment); scripts/setup.sh installs both.
Nothing is mocked: the code under test speaks the servers' own wire protocols.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cambrian.testing.cluster import die_with_parent, free_ports
from cambrian.testing.waiting import poll

UNPRIVILEGED = 65534  # nobody: PostgreSQL refuses to run as root


def postgres_bin() -> Path | None:
    """The folder of Debian's initdb/postgres (not on PATH: /usr/lib/postgresql/VERSION/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    database: str = "postgres"

    def url(self, password: bool = False) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql://{self.user}{secret}@127.0.0.1:{self.port}/{self.database}"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _accepting(bindir: Path, port: int) -> bool:
    """pg_isready's answer: 0 only once the server accepts connections (1 while it starts up)."""
    if not _listening(port):
        return False
    ready = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], check=False)
    return ready.returncode == 0


@contextmanager
def postgres_server(password: str = "cambrian-test-secret") -> Iterator[Postgres]:
    """A fresh cluster in a temporary folder, password (SCRAM) authentication, TCP on loopback only."""
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("initdb: install Debian's postgresql package (scripts/setup.sh does)")
    root = Path(tempfile.mkdtemp(prefix="cambrian-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(password + "\n")
    as_user: dict = {}
    if os.geteuid() == 0:
        os.chown(root, UNPRIVILEGED, UNPRIVILEGED)
        os.chown(pwfile, UNPRIVILEGED, UNPRIVILEGED)
        as_user = {"user": UNPRIVILEGED, "group": UNPRIVILEGED, "extra_groups": []}
    port = free_ports(1)[0]
    server = None
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "cambrian", "--auth=scram-sha-256",
                        f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"], check=True, capture_output=True,
                       cwd=root, **as_user)
        log = open(root / "server.log", "wb")
        server = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                                   "-k", str(root), "-c", "fsync=off", "-c", "full_page_writes=off"],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                  # a killed test run leaves no server (nor its running queries) behind:
                                  # SIGINT is PostgreSQL's fast shutdown, which ends every backend
                                  preexec_fn=functools.partial(die_with_parent, signal.SIGINT), **as_user)
        # a listening port is not enough: "the database system is starting up" refuses logins for a while
        poll("PostgreSQL to accept connections", lambda: server.poll() is not None or _accepting(bindir, port),
             timeout=30, interval=0.1)
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited: {(root / 'server.log').read_text()[-2000:]}")
        yield Postgres(port, "cambrian", password)
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)  # fast shutdown: do not wait for clients still connected
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]

    def upload(self, files: dict[str, Path], bucket: str = "lake") -> None:
        """Local files to `bucket/KEY` for each KEY -> file (the bucket is created), through Arrow's S3 client."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint.split("://")[1], scheme="http",
                               access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                               allow_bucket_creation=True)
        fs.create_dir(bucket)
        for key, local in files.items():
            with fs.open_output_stream(f"{bucket}/{key}") as out:
                out.write(Path(local).read_bytes())


def moto_server() -> Path | None:
    venv = Path(os.environ.get("CAMBRIAN_MOTO_VENV", Path.home() / ".cache" / "cambrian" / "moto"))
    found = venv / "bin" / "moto_server"
    return found if found.is_file() else None


@contextmanager
def moto_s3() -> Iterator[S3]:
    """moto's S3 API as a real HTTP server on loopback."""
    binary = moto_server()
    if binary is None:
        raise FileNotFoundError("moto_server: run scripts/setup.sh (it installs moto[server] in its own virtualenv)")
    port = free_ports(1)[0]
    server = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    try:
        poll("moto's S3 server", lambda: server.poll() is not None or _listening(port), timeout=30, interval=0.1)
        if server.poll() is not None:
            raise RuntimeError("moto_server exited at start: is moto[server] installed?")
        endpoint = f"http://127.0.0.1:{port}"
        yield S3(endpoint, {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "cambrian-test-key",
                            "AWS_SECRET_ACCESS_KEY": "cambrian-test-secret-key", "AWS_DEFAULT_REGION": "us-east-1"})
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
