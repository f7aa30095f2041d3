"""Fixtures that run the real Node bridge (bridge/src/main.js) as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from control_plane.bridge.protocol import BridgeConnection, BridgeEvent

REPO = Path(__file__).resolve().parents[2]
MAIN_JS = REPO / "bridge" / "src" / "main.js"
NODE = shutil.which("node") or "node"
CHROME_PATH = os.environ.get("CHROME_PATH", "/usr/bin/chromium")


def have_chromium() -> bool:
    return Path(CHROME_PATH).exists()


class RunningBridge:
    """One bridge process, its connection and everything it said."""

    def __init__(self, proc: asyncio.subprocess.Process, session_dir: Path) -> None:
        self.proc = proc
        self.session_dir = session_dir
        self.events: list[BridgeEvent] = []
        self.stderr_lines: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None
        self.conn = BridgeConnection(proc.stdout, proc.stdin, self._on_event, default_timeout_s=5.0)
        self.read_task = asyncio.create_task(self.conn.read_loop())
        self.stderr_task = asyncio.create_task(self._drain_stderr())

    def _on_event(self, event: BridgeEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.stderr_lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def named(self, name: str) -> list[BridgeEvent]:
        return [e for e in self.events if e.name == name]

    async def wait_event(
        self,
        name: str,
        pred: Callable[[dict[str, Any]], bool] = lambda d: True,
        *,
        timeout_s: float = 5.0,
        after: int = 0,
    ) -> BridgeEvent:
        """First event `name` (at index >= after) whose data satisfies pred."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events[after:]:
                if event.name == name and pred(event.data):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {name} event within {timeout_s} s; got {[e.name for e in self.events]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_state(self, state: str, *, timeout_s: float = 5.0) -> BridgeEvent:
        return await self.wait_event("state", lambda d: d.get("state") == state, timeout_s=timeout_s)

    async def ready(self) -> BridgeEvent:
        """Drives a fresh scripted bridge through QR and scan to ready."""
        await self.wait_state("qr")
        await self.conn.request("sandbox.scan")
        ready = await self.wait_event("ready")
        await self.wait_state("ready")  # the state event follows the ready event
        return ready

    async def wait_exit(self, timeout_s: float = 10.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await asyncio.wait_for(self.read_task, 5)
        await asyncio.wait_for(self.stderr_task, 5)
        return code

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def cleanup(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        for task in (self.read_task, self.stderr_task):
            try:
                await asyncio.wait_for(task, 5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        for leftover in processes_using_profile(self.session_dir / "session-session"):
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()  # only if a test failed; the tests assert there is none


Spawn = Callable[..., Awaitable[RunningBridge]]


@pytest.fixture
def sessions_root() -> Iterator[Path]:
    """A short private folder for session dirs.

    Not tmp_path: concurrent pytest runs on this machine prune each other's old basetemps, and
    a short path keeps Chromium's socket paths well inside their limit.
    """
    root = Path(tempfile.mkdtemp(prefix="wab-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def spawn_bridge(sessions_root: Path) -> AsyncIterator[Spawn]:
    """Factory: spawn_bridge(driver="scripted", tenant="t1", session_dir=None, **cli) -> RunningBridge."""
    made: list[RunningBridge] = []

    async def spawn(
        driver: str = "scripted",
        tenant: str = "t1",
        session_dir: Path | None = None,
        heartbeat_ms: int = 200,
        qr_interval_ms: int = 20000,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> RunningBridge:
        sdir = session_dir or sessions_root / tenant
        args = [
            str(MAIN_JS),
            "--tenant", tenant,
            "--session-dir", str(sdir),
            "--driver", driver,
            "--heartbeat-ms", str(heartbeat_ms),
            "--qr-interval-ms", str(qr_interval_ms),
            *(extra or []),
        ]  # fmt: skip
        full_env = dict(os.environ, CHROME_PATH=CHROME_PATH, TMPDIR=str(sdir / "tmp"), **(env or {}))
        proc = await asyncio.create_subprocess_exec(
            NODE,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
        bridge = RunningBridge(proc, sdir)
        made.append(bridge)
        return bridge

    yield spawn
    for bridge in made:
        await bridge.cleanup()
        if bridge.proc.returncode not in (0, None) and bridge.stderr_lines:
            sys.stderr.write("\n".join(bridge.stderr_lines[-30:]) + "\n")


def processes_using_profile(profile_dir: Path) -> list[psutil.Process]:
    """Processes whose command line has exactly --user-data-dir=<profile_dir>."""
    wanted = f"--user-data-dir={profile_dir}"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if wanted in (proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def profile_processes() -> Callable[[Path], list[psutil.Process]]:
    return processes_using_profile


@pytest.fixture
def until() -> Callable[[Callable[[], bool], float, str], Awaitable[None]]:
    return wait_until


@pytest.fixture
async def blackhole_proxy() -> AsyncIterator[str]:
    """An HTTP proxy that accepts connections and never answers: page loads hang instead of failing.

    Chromium on Linux without a desktop environment takes its proxy from https_proxy/http_proxy, so
    a real-driver bridge pointed here keeps its browser up as long as a test needs it.
    """
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()
