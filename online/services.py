"""Local service processes (model servers, router, collector): start on a free port, wait for
/healthz, stop by PID. Each is `python -m cambrian.online.cli <command> ... --port 0 --port-file F`; a model
server and a router also get a free admin port (`admin_url`: metrics, the router's weights and flush)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cambrian.errors import CambrianError


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """Stop a child by its own PID: SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


class ServiceError(CambrianError):
    pass


READY_TIMEOUT_S = 90.0
WITH_ADMIN = ("serve", "route")  # the commands with an admin port (online/cli.py)
TEMP_MARK = ".tmp-"  # a start's temp folder is WORKDIR/<name>.tmp-<random> (local_env.remove_temp_folders finds it)  # a service that does not answer /healthz by then is not coming up


class ServiceProcess:
    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None):
        self.name, self.args, self.workdir = name, args, Path(workdir)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = self.workdir / f"{self.name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._log = open(self.log_path, "ab")
        # its temp files (a model server's program host) in the service's folder, its own for each start (the old
        # champion's server may still run under the same name): a driver that recovers the run folder of a killed
        # one removes them (local_env.remove_temp_folders), so they are never left in the system's temp folder
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}{TEMP_MARK}", dir=self.workdir))
        self.admin_port_file = self.workdir / f"{self.name}.admin-port"
        self.admin_port_file.unlink(missing_ok=True)
        admin = ["--admin-port", "0", "--admin-port-file", str(self.admin_port_file)] if self.args[0] in WITH_ADMIN else []
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cambrian.online.cli", *self.args, "--port", "0", "--port-file", str(self.port_file),
             *admin],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def ready(self) -> bool:
        """One look, without waiting: it answers /healthz. Raises ServiceError when it has exited."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise ServiceError(f"{self.name} exited with code {self.proc.returncode}:\n{tail}")
        if self.port is None and self.port_file.exists():
            text = self.port_file.read_text().strip()
            self.port = int(text) if text else None  # written but not flushed yet: look again next time
            if self.port is not None and self.admin_port_file.exists():  # written before the port file
                self.admin_port = int(self.admin_port_file.read_text().strip())
        if self.port is None:
            return False
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "ServiceProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return self
            time.sleep(0.1)
        raise ServiceError(f"{self.name} not ready after {timeout:g} s; see {self.log_path}")

    def stop(self, timeout: float = 15) -> None:
        stop_process(self.proc, timeout)
        if self.proc is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
