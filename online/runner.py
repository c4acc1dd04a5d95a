"""Run aiohttp apps: in the foreground (CLI) or on a background thread (tests, in-process rollouts)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, NamedTuple

from aiohttp import web


class Admin(NamedTuple):
    """The operator-facing app of a service (metrics, and the router's weights and flush), served on a port of its
    own so that the port users reach (the one behind a Service and a Gateway) never serves it."""

    app: web.Application
    host: str = "127.0.0.1"
    port: int = 0
    port_file: str | None = None


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, shutdown_timeout=10)
    await site.start()
    bound = runner.addresses[0][1]  # port 0 -> the OS's choice
    return runner, bound


def _write_port(port_file: str | None, port: int) -> None:
    if port_file:
        tmp = Path(f"{port_file}.tmp{os.getpid()}")
        tmp.write_text(str(port))
        tmp.replace(port_file)


def serve_forever(app: web.Application, host: str, port: int, port_file: str | None = None,
                  on_ready: Callable[[int], None] | None = None, admin: Admin | None = None) -> None:
    """Serve until SIGTERM/SIGINT; writes the bound port to `port_file` (atomically) once listening. With `admin`,
    its app is served on its own port, on the same event loop (it shares the app's state), and its port file is
    written first: once `port_file` exists, both listen."""

    async def main() -> None:
        runner, bound = await _start(app, host, port)  # first: its startup hooks make what the admin app uses
        admin_runner = None
        if admin is not None:
            admin_runner, admin_bound = await _start(admin.app, admin.host, admin.port)
            _write_port(admin.port_file, admin_bound)
        _write_port(port_file, bound)
        if on_ready:
            on_ready(bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()

    asyncio.run(main())


class BackgroundApp:
    """An app served on 127.0.0.1 from a daemon thread with its own event loop."""

    def __init__(self, app_factory: Callable[[], web.Application] | web.Application, port: int = 0,
                 host: str = "127.0.0.1", admin: web.Application | None = None):
        self._factory = app_factory
        self.host, self.port = host, port
        self._admin, self.admin_port = admin, None  # admin: served on a port of its own, on the same loop
        self.loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @classmethod
    def of(cls, service: Any) -> "BackgroundApp":
        """A model server's or router's app, with its admin app (`admin_url`) on a port of its own."""
        return cls(service.app(), admin=service.admin_app())

    def start(self) -> "BackgroundApp":
        self._thread.start()

        async def go() -> None:
            app = self._factory if isinstance(self._factory, web.Application) else self._factory()
            runner, self.port = await _start(app, self.host, self.port)
            self._runners.append(runner)
            if self._admin is not None:
                runner, self.admin_port = await _start(self._admin, self.host, 0)
                self._runners.insert(0, runner)  # stopped first

        self.call(go())
        return self

    def call(self, coro: Awaitable, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def stop(self) -> None:
        while self._runners:
            self.call(self._runners.pop(0).cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "BackgroundApp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
