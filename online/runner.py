"""Run aiohttp apps: in the foreground (CLI) or on a background thread (tests, in-process rollouts)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, shutdown_timeout=10)
    await site.start()
    bound = runner.addresses[0][1]  # port 0 -> the OS's choice
    return runner, bound


def serve_forever(app: web.Application, host: str, port: int, port_file: str | None = None,
                  on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; writes the bound port to `port_file` (atomically) once listening."""

    async def main() -> None:
        runner, bound = await _start(app, host, port)
        if port_file:
            tmp = Path(f"{port_file}.tmp{os.getpid()}")
            tmp.write_text(str(bound))
            tmp.replace(port_file)
        if on_ready:
            on_ready(bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


class BackgroundApp:
    """An app served on 127.0.0.1 from a daemon thread with its own event loop."""

    def __init__(self, app_factory: Callable[[], web.Application] | web.Application, port: int = 0,
                 host: str = "127.0.0.1"):
        self._factory = app_factory
        self.host, self.port = host, port
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> "BackgroundApp":
        self._thread.start()

        async def go() -> None:
            app = self._factory if isinstance(self._factory, web.Application) else self._factory()
            self._runner, self.port = await _start(app, self.host, self.port)

        self.call(go())
        return self

    def call(self, coro: Awaitable, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
            self._runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self) -> "BackgroundApp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
