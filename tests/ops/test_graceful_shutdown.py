"""SIGTERM with clients connected: a real control plane with running sandbox sessions (scripted
bridges), 50 python-socketio clients, 3 npm socket.io-client followers and an admin-panel-like
client. The signal is logged at once, the process exits within STOP_WAIT_S + 3 s with no bridge left,
and the clients, reconnecting by themselves to a new process on the same address with ``since``,
end up with every event of the log, in order, none twice -- those published around the shutdown
included. A second signal ends a shutdown at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import socketio

from control_plane.supervisor.process import find_orphans
from tests.ops.server import ADMIN, Server, server_env
from tests.support import wait_for

pytestmark = pytest.mark.timeout(300)

STOP_WAIT_S = 5.0
TENANTS = 3
PY_CLIENTS = 50
NODE_DIR = Path(__file__).resolve().parents[1] / "realtime" / "node_client"
FOLLOWER_JS = NODE_DIR / "follower.js"


class Follower:
    """A python-socketio client that reconnects by itself, with ``since`` = the last seq it holds
    (per tenant for the admin's multi-tenant connection)."""

    def __init__(self, url: str, auth: dict[str, Any], tenants: list[str]) -> None:
        self.url = url
        self.base = auth
        self.tenants = tenants
        self.seqs: dict[str, list[int]] = {t: [] for t in tenants}
        self.connects = 0
        self.disconnect_reasons: list[str] = []
        self.sio = socketio.AsyncClient(reconnection_delay=0.2, reconnection_delay_max=1.0)
        self.sio.on("*", self._on_event)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)

    def auth(self) -> dict[str, Any]:
        last = {t: (s[-1] if s else 0) for t, s in self.seqs.items()}
        if "tenants" in self.base:
            return {**self.base, "since": last}
        return {**self.base, "since": last[self.tenants[0]]}

    async def _on_event(self, event: str, envelope: dict) -> None:
        self.seqs[envelope["tenant_id"]].append(envelope["seq"])

    async def _on_connect(self) -> None:
        self.connects += 1

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnect_reasons.append(str(reason))

    async def connect(self) -> None:
        await self.sio.connect(self.url, auth=self.auth, transports=["websocket"], wait_timeout=10)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


class NodeFollower:
    """tests/realtime/node_client/follower.js: the npm socket.io-client, reconnecting by itself."""

    def __init__(self, url: str, auth: dict[str, Any], tenant_id: str) -> None:
        self.url, self.auth, self.tenant_id = url, auth, tenant_id
        self.seqs: dict[str, list[int]] = {tenant_id: []}
        self.connects = 0
        self.disconnect_reasons: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task | None = None

    async def connect(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(FOLLOWER_JS),
            self.url,
            json.dumps(self.auth),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self.reader = asyncio.create_task(self._read())
        await wait_for(lambda: self.connects > 0, timeout=20, message="node follower connects")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            if line["kind"] == "event":
                self.seqs[line["envelope"]["tenant_id"]].append(line["envelope"]["seq"])
            elif line["kind"] == "connect":
                self.connects += 1
            elif line["kind"] == "disconnect":
                self.disconnect_reasons.append(line["reason"])

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
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def api(http: aiohttp.ClientSession, server: Server, method: str, path: str, headers, **kw) -> Any:
    async with http.request(method, server.url + path, headers=headers, **kw) as resp:
        body = await resp.json()
        assert resp.status < 300, (resp.status, body)
        return body


async def ready_sandbox_tenant(
    http: aiohttp.ClientSession, server: Server, name: str, *, admin: dict[str, str] = ADMIN
) -> dict[str, Any]:
    tenant = await api(http, server, "POST", "/api/tenants", admin, json={"name": name, "sandbox": True})
    tenant["headers"] = {"Authorization": f"Bearer {tenant['api_key']}"}
    await api(http, server, "POST", "/api/session/start", tenant["headers"])

    async def state(wanted: str) -> bool:
        return (await api(http, server, "GET", "/api/session", tenant["headers"]))["state"] == wanted

    await wait_for(lambda: state("qr"), timeout=30, interval=0.1, message=f"{name} shows a QR")
    await api(http, server, "POST", "/api/sandbox/scan", tenant["headers"])
    await wait_for(lambda: state("ready"), timeout=30, interval=0.1, message=f"{name} ready")
    return tenant


async def event_log(http: aiohttp.ClientSession, server: Server, tenant: dict[str, Any]) -> list[dict]:
    events: list[dict] = []
    since = 0
    while True:
        page = await api(
            http, server, "GET", "/api/events", tenant["headers"], params={"since": since, "limit": 1000}
        )
        events += page["events"]
        since = page["next_since"]
        if not page["has_more"]:
            return events


async def inject_until_refused(http: aiohttp.ClientSession, server: Server, tenants: list[dict]) -> list[str]:
    """Incoming messages, round robin, until the server stops answering: the ids it accepted."""
    accepted: list[str] = []
    for i in range(100_000):
        tenant = tenants[i % len(tenants)]
        body = {"from": f"1555000{i % 1000:04d}", "text": f"around the shutdown {i}"}
        try:
            async with http.post(
                server.url + "/api/sandbox/incoming", json=body, headers=tenant["headers"]
            ) as resp:
                if resp.status != 200:
                    return accepted
                accepted.append((await resp.json())["id"])
        except aiohttp.ClientError:
            return accepted
    return accepted


@pytest.fixture(scope="session")
def node_client_installed() -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        pytest.fail("node and tests/realtime/node_client/node_modules are needed (npm ci there)")


@pytest.fixture
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("shutdown")
    yield path
    leftovers = find_orphans((path / "sessions").resolve()) if (path / "sessions").exists() else []
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"bridges survived: {leftovers}"


@pytest.fixture
async def servers(work, database_url, empty_db):
    made: list[Server] = []
    env = server_env(database_url, work, STOP_WAIT_S=str(STOP_WAIT_S), HEARTBEAT_INTERVAL_S="1")

    def make() -> Server:
        server = Server(env, work / "server.log")
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


async def test_sigterm_with_clients_connected_exits_in_time_and_loses_no_event(
    servers, work, node_client_installed
):
    first = servers()
    await first.start()
    clients: list[Any] = []
    async with aiohttp.ClientSession() as http:
        tenants = [await ready_sandbox_tenant(http, first, f"shop-{i}") for i in range(TENANTS)]
        ids = [t["id"] for t in tenants]
        for i in range(PY_CLIENTS):
            tenant = tenants[i % TENANTS]
            clients.append(Follower(first.url, {"token": tenant["api_key"]}, [tenant["id"]]))
        admin = Follower(first.url, {"token": ADMIN["Authorization"][7:], "tenants": ids}, ids)
        clients.append(admin)
        clients += [NodeFollower(first.url, {"token": t["api_key"]}, t["id"]) for t in tenants]
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            injector = asyncio.create_task(inject_until_refused(http, first, tenants))
            await wait_for(lambda: len(admin.seqs[ids[0]]) > 20, timeout=30, message="events flow")

            started = time.monotonic()
            first.signal(signal.SIGTERM)
            code = await first.wait_exit(STOP_WAIT_S + 10)
            took = time.monotonic() - started
            accepted = await injector
            log = first.log_text()
            assert code == 0, log[-3000:]
            assert took < STOP_WAIT_S + 3, f"exit took {took:.1f}s"
            assert "SIGTERM received: shutting down" in log and "shutdown complete" in log
            assert find_orphans((work / "sessions").resolve()) == []  # no bridge left
            assert accepted, "the injector got nothing through"

            second = servers()  # a new process on the same address (a restart)
            await second.start()
            await wait_for(
                lambda: all(c.connects >= 2 for c in clients), timeout=60, interval=0.1, message="reconnects"
            )
            logs = {t["id"]: await event_log(http, second, t) for t in tenants}
            expected = {tenant_id: [e["seq"] for e in events] for tenant_id, events in logs.items()}

            def caught_up() -> bool:
                return all(c.seqs[t][-len(expected[t]) :] == expected[t] for c in clients for t in c.seqs)

            await wait_for(caught_up, timeout=60, interval=0.1, message="every client has the whole log")
            for c in clients:
                for tenant_id, seqs in c.seqs.items():
                    assert seqs == list(range(1, len(seqs) + 1)), f"gaps or repeats in {tenant_id}"
            # the messages accepted around the shutdown were all stored and published
            received = {
                e["data"]["provider_message_id"]
                for events in logs.values()
                for e in events
                if e["type"] == "message.received"
            }
            assert set(accepted) <= received, f"lost: {sorted(set(accepted) - received)[:5]}"
            for c in clients:  # let go as a lost connection, not told to stay away
                assert c.disconnect_reasons and not {"io server disconnect", "server disconnect"} & set(
                    c.disconnect_reasons
                ), c.disconnect_reasons

            took = await second.terminate(STOP_WAIT_S + 10)  # again, the clients connected again
            assert took < STOP_WAIT_S + 3, f"second exit took {took:.1f}s"
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def frozen_bridge(server: Server, http: aiohttp.ClientSession) -> tuple[dict, int]:
    """A ready sandbox tenant whose bridge is then SIGSTOPped: it answers nothing, not even SIGTERM,
    until it is killed."""
    tenant = await ready_sandbox_tenant(http, server, "frozen")
    pid = (await api(http, server, "GET", "/api/session", tenant["headers"]))["pid"]
    os.kill(pid, signal.SIGSTOP)
    return tenant, pid


async def test_a_frozen_bridge_still_lets_the_process_exit_in_time(servers, work):
    server = servers()
    await server.start()
    async with aiohttp.ClientSession() as http:
        _, pid = await frozen_bridge(server, http)
        took = await server.terminate(STOP_WAIT_S + 10)
    assert server.proc is not None and server.proc.returncode == 0, server.log_text()[-3000:]
    assert STOP_WAIT_S - 1 < took < STOP_WAIT_S + 3, f"exit took {took:.1f}s"  # waited, then killed it
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert find_orphans((work / "sessions").resolve()) == []


async def test_a_second_signal_exits_at_once(servers, work):
    server = servers()
    await server.start()
    async with aiohttp.ClientSession() as http:
        _, pid = await frozen_bridge(server, http)
        server.signal(signal.SIGTERM)
        await wait_for(lambda: "SIGTERM received" in server.log_text(), timeout=5, message="first logged")
        started = time.monotonic()
        server.signal(signal.SIGINT)
        code = await server.wait_exit(STOP_WAIT_S)
        took = time.monotonic() - started
    log = server.log_text()
    assert code == 1, log[-3000:]  # forced
    assert took < 2, f"a second signal took {took:.1f}s"
    assert "second signal (SIGINT): killing the bridges and exiting now" in log
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert find_orphans((work / "sessions").resolve()) == []
