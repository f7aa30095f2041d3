"""Realtime fixtures: running control-plane nodes on real ports, and consumers on both clients a
CRM would use (python-socketio's AsyncClient and Node's socket.io-client in a child process)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from control_plane.app import create_app

NODE_DIR = Path(__file__).resolve().parent / "node_client"
CLIENT_JS = NODE_DIR / "client.js"


async def wait_until(
    predicate: Callable[[], object], within_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Node:
    """One control-plane process's app behind a real HTTP server."""

    app: Any
    url: str

    @property
    def events(self):
        return self.app["events"]


@pytest.fixture
async def start_node(aiohttp_server, make_settings, empty_db) -> Callable[..., Awaitable[Node]]:
    async def start(**env: str) -> Node:
        server = await aiohttp_server(create_app(make_settings(**env)))
        return Node(app=server.app, url=f"http://127.0.0.1:{server.port}")

    return start


@pytest.fixture
async def node(start_node) -> Node:
    return await start_node()


@pytest.fixture
async def new_tenant(admin_headers) -> AsyncIterator[Callable[..., Awaitable[dict[str, Any]]]]:
    """Create a tenant on a node over HTTP: its JSON plus ``headers`` and ``key``."""
    async with aiohttp.ClientSession() as http:

        async def make(node: Node, name: str = "t") -> dict[str, Any]:
            async with http.post(f"{node.url}/api/tenants", json={"name": name}, headers=admin_headers) as r:
                assert r.status == 201, await r.text()
                tenant = await r.json()
            tenant["key"] = tenant["api_key"]
            tenant["headers"] = {"Authorization": f"Bearer {tenant['api_key']}"}
            return tenant

        yield make


@dataclass
class Consumer:
    """What a consumer saw: events (name, envelope), connect errors, disconnects."""

    events: list[tuple[str, dict]] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    connected: bool = False

    def seqs(self, tenant_id: str | None = None) -> list[int]:
        return [env["seq"] for _, env in self.events if tenant_id is None or env["tenant_id"] == tenant_id]

    def tenants(self) -> set[str]:
        return {env["tenant_id"] for _, env in self.events}


class PyConsumer(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._on_any)
        self.sio.on("connect_error", self._on_error)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_any(self, event: str, data: dict) -> None:
        self.events.append((event, data))

    async def _on_error(self, data: Any) -> None:
        self.errors.append(data)

    async def _on_disconnect(self, *args: Any) -> None:
        self.connected = False

    async def connect(self, url: str, auth: dict | None, *, expect_ok: bool = True) -> None:
        try:
            await self.sio.connect(url, auth=auth, wait_timeout=10)
            self.connected = True
        except socketio.exceptions.ConnectionError:
            if expect_ok:
                raise

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


class NodeConsumer(Consumer):
    """The npm socket.io-client in a Node child process (tests/realtime/node_client/client.js)."""

    def __init__(self) -> None:
        super().__init__()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self.closed = False

    async def connect(
        self, url: str, auth: dict | None, *, expect_ok: bool = True, transport: str = "default"
    ) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(CLIENT_JS),
            url,
            json.dumps(auth or {}),
            transport,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await wait_until(lambda: self.connected or self.errors or self.closed, 15, "node client connect")
        if expect_ok:
            assert self.connected, f"node client did not connect: {self.errors}"

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            kind = line["kind"]
            if kind == "event":
                self.events.append((line["event"], line["envelope"]))
            elif kind == "connect":
                self.connected = True
            elif kind == "connect_error":
                self.errors.append({"message": line["message"], "data": line["data"]})
            elif kind == "disconnect":
                self.connected = False
        self.closed = True

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


@pytest.fixture(scope="session")
def node_client_installed() -> None:
    """socket.io-client from tests/realtime/node_client (scripts/test runs npm ci there)."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed; the realtime tests drive the npm socket.io-client")
    if not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, stdout=subprocess.DEVNULL
        )


@pytest.fixture
async def consumers(node_client_installed):
    """Factory: ``await consumers("py" | "node")``; every consumer is closed afterwards."""
    made: list[Consumer] = []

    def make(kind: str) -> Consumer:
        consumer = PyConsumer() if kind == "py" else NodeConsumer()
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        await consumer.close()  # type: ignore[attr-defined]
