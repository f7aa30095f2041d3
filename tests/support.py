"""Helpers shared by tests: a real HTTP server for an app in a background thread, condition waits."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedServer:
    """Runs ``app`` on 127.0.0.1:<free port> in its own thread and event loop (for sync clients such as
    schemathesis/requests or Playwright)."""

    def __init__(self, app_factory: Callable[[], web.Application]) -> None:
        self._factory = app_factory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._factory(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def run(self, coro: Awaitable, timeout: float = 30):
        """Run a coroutine on the server's loop (e.g. to reach app state) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until true; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def unless_installed(path: str | os.PathLike[str], reason: str):
    """Skip when ``path`` is missing, for a developer running pytest by hand on a bare machine.
    scripts/test installs Chromium and the bridge's node_modules and sets GATEWAY_TESTS_REQUIRE_ALL=1:
    there a missing piece fails the tests instead of silently skipping them."""
    import pytest

    required = os.environ.get("GATEWAY_TESTS_REQUIRE_ALL") == "1"
    return pytest.mark.skipif(not required and not Path(path).exists(), reason=reason)


class FakeClock:
    """An injectable wall clock that moves only when told (``clock=FakeClock()``; ``advance(s)``)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def drive(self, *apps: web.Application) -> None:
        """Be the clock of these apps' authentication throttles (when they have one)."""
        for app in apps:
            if app.get("auth_throttle") is not None:
                app["auth_throttle"].clock = self
