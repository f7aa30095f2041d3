"""What ``control_plane/realtime/_compat.py`` relies on in python-socketio, python-engineio and aiohttp,
checked against the installed versions: one test per patched behaviour, so an upgrade that changes
one fails here. No database: a bare Socket.IO server set up as ``server.create_server`` does."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import socketio
from aiohttp import web
from engineio import async_socket as eio_async_socket
from engineio import exceptions as eio_exceptions

from control_plane.realtime import _compat, transport
from control_plane.realtime.pubsub import BATCH_EVENT, RedisLink
from tests.realtime.conftest import wait_until

pytestmark = pytest.mark.smoke
ROOT = Path(__file__).resolve().parents[2]


# -- versions ---------------------------------------------------------------------------------------


def test_the_installed_versions_are_supported():
    _compat.check_versions()


@pytest.mark.parametrize(
    ("dist", "version"),
    [("python-socketio", "5.19.0"), ("python-engineio", "4.15.0"), ("aiohttp", "4.0.0a1")],
)
def test_an_unsupported_version_fails_loudly_naming_it(dist, version):
    installed = {"python-socketio": "5.18.1", "python-engineio": "4.15.1", "aiohttp": "3.14.5", dist: version}
    with pytest.raises(
        _compat.UnsupportedLibrary, match=rf"{dist}.*{version.replace('.', '[.]')} is installed"
    ):
        _compat.check_versions(installed.__getitem__)


def test_the_supported_ranges_are_pyprojects_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dist in ("python-socketio", "python-engineio"):
        low, high = _compat.SUPPORTED[dist]
        pin = f"{dist}~={'.'.join(map(str, low))}"
        assert pin in deps, f"pyproject.toml should pin {pin} (_compat.SUPPORTED), not {deps}"
        assert high == (low[0], low[1] + 1)  # what ~=X.Y.Z allows


# -- a bare server ------------------------------------------------------------------------------------


class CountingPoll(_compat.FastPoll):
    calls = 0

    async def __call__(self) -> list:
        CountingPoll.calls += 1
        return await super().__call__()


class RecordingDriver(transport.CoalescingWebSocket):
    made: ClassVar[list[RecordingDriver]] = []

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        RecordingDriver.made.append(self)


@pytest.fixture
async def bare(aiohttp_server, monkeypatch):
    """A Socket.IO server with the relay's driver and ping tracking; ``connected`` records, per
    sid, the engine.io socket ``_compat.engineio_socket`` saw inside the connect handler."""
    RecordingDriver.made, CountingPoll.calls = [], 0
    monkeypatch.setattr(_compat, "FastPoll", CountingPoll)
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    _compat.install_websocket_driver(sio.eio, RecordingDriver)
    _compat.track_ping_tasks(sio.eio)
    connected: dict[str, Any] = {}

    @sio.on("connect")
    async def on_connect(sid, environ, auth):
        connected[sid] = _compat.engineio_socket(sio, sid, "/")

    app = web.Application()
    sio.attach(app)
    server = await aiohttp_server(app)
    ns = SimpleNamespace(sio=sio, url=f"http://127.0.0.1:{server.port}", connected=connected, shut=False)
    yield ns
    if not ns.shut:  # a second shutdown() raises
        await sio.shutdown()
    await _compat.cancel_ping_tasks(sio.eio)


async def _client(url: str, transports: list[str] | None = None) -> tuple[socketio.AsyncClient, list]:
    client = socketio.AsyncClient(reconnection=False)
    got: list = []
    client.on("*", lambda event, data: got.append((event, data)))
    await client.connect(url, transports=transports, wait_timeout=10)
    return client, got


# -- engine.io ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("transports", [["websocket"], None])  # straight, or upgraded from polling
async def test_engineio_upgrades_with_the_installed_driver_and_its_writer_polls_ours(bare, transports):
    client, got = await _client(bare.url, transports)
    try:
        await wait_until(lambda: RecordingDriver.made and client.transport() == "websocket", what="upgrade")
        driver = RecordingDriver.made[-1]
        sock = _compat.socket_of_handler(driver.handler)
        assert isinstance(sock, eio_async_socket.AsyncSocket)  # the handler is the socket's bound method
        assert isinstance(sock.poll, CountingPoll)  # replace_poll: an instance attribute
        sid = next(iter(bare.connected))
        await bare.sio.emit("hello", {"n": 1}, to=sid)
        await wait_until(lambda: got, what="an event through the driver")
        assert got == [("hello", {"n": 1})] and CountingPoll.calls > 0  # the writer used our poll
    finally:
        await client.disconnect()


async def test_a_packet_put_in_the_send_queue_reaches_the_client(bare):
    client, got = await _client(bare.url, ["websocket"])
    try:
        ((sid, seen_in_connect_handler),) = bare.connected.items()
        assert seen_in_connect_handler is None  # not "connected" before the CONNECT packet is out
        sock = _compat.engineio_socket(bare.sio, sid, "/")
        assert isinstance(sock, eio_async_socket.AsyncSocket)
        assert _compat.engineio_socket(bare.sio, "no-such-sid", "/") is None
        assert _compat.enqueue_message(sock, '2["x",{"seq":1}]', limit=0) == _compat.FULL
        assert _compat.backlog(sock) == 0
        assert _compat.enqueue_message(sock, '2["x",{"seq":2}]', limit=10) == _compat.SENT
        await wait_until(lambda: got, what="the queued packet")
        assert got == [("x", {"seq": 2})] and _compat.backlog(sock) == 0
    finally:
        await client.disconnect()
    await wait_until(lambda: sock.closed, what="socket closed")
    assert _compat.enqueue_message(sock, '2["x",{"seq":3}]', limit=10) == _compat.CLOSED


async def _poll_scenario(poll, sock) -> list:
    out = []
    for item in ("a", "b"):
        sock.queue.put_nowait(item)
    out.append(await poll())  # everything queued, without waiting
    later = asyncio.get_running_loop().call_later(0.005, sock.queue.put_nowait, "c")
    out.append(await poll())  # waits for the next one
    later.cancel()
    with pytest.raises(eio_exceptions.QueueEmpty):  # none within ping_interval + ping_timeout
        await poll()
    sock.queue.put_nowait("d")
    sock.queue.put_nowait(None)
    out.append(await poll())  # the close marker stays queued for the next call
    out.append(await poll())
    out.append(sock.queue.qsize())
    return out


async def test_fast_poll_answers_as_engineios_poll_does():
    def fake_socket() -> SimpleNamespace:
        server = SimpleNamespace(ping_interval=0.02, ping_timeout=0.01)
        return SimpleNamespace(queue=asyncio.Queue(), server=server)

    theirs, ours = fake_socket(), fake_socket()
    expected = await _poll_scenario(lambda: eio_async_socket.AsyncSocket.poll(theirs), theirs)
    assert expected == [["a", "b"], ["c"], ["d"], [], 0]
    assert await _poll_scenario(_compat.FastPoll(ours), ours) == expected


async def test_engineio_leaves_its_ping_tasks_running_after_shutdown(bare):
    client, _ = await _client(bare.url, ["websocket"])
    await client.disconnect()
    tasks = list(_compat._ping_tasks[bare.sio.eio])
    assert tasks  # started through start_background_task with AsyncSocket._send_ping
    await bare.sio.shutdown()
    bare.shut = True
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks)  # what cancel_ping_tasks is for
    await _compat.cancel_ping_tasks(bare.sio.eio)
    assert all(t.cancelled() for t in tasks)


# -- aiohttp ------------------------------------------------------------------------------------------


async def test_raw_frames_on_request_transport_interleave_with_aiohttps_own(aiohttp_client):
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        raw = request.transport
        assert raw is not None
        raw.write(transport.text_frame(b"one") + transport.text_frame("twö".encode()))
        await ws.send_str("three")
        raw.write(transport.text_frame(b"x" * 70_000))  # the 8-byte length form
        await ws.send_bytes(b"five")
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    client = await aiohttp_client(app)
    async with client.ws_connect("/ws", compress=15) as ws:  # offers permessage-deflate
        assert ws.compress == 0  # and is not granted it: frames are plain
        got = [(await ws.receive(timeout=5)).data for _ in range(5)]
        await ws.send_str("bye")
    assert got == ["one", "twö", "three", "x" * 70_000, b"five"]  # in order, intact


async def test_drain_waits_until_the_transport_resumes_writing(aiohttp_client):
    steps: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await _compat.drain(request)  # not paused: returns at once
        steps.append("free")
        request.protocol.pause_writing()  # what asyncio calls past the transport's high-water mark
        waiting = asyncio.ensure_future(_compat.drain(request))
        await asyncio.sleep(0.05)
        steps.append("blocked" if not waiting.done() else "not blocked")
        request.protocol.resume_writing()
        await asyncio.wait_for(waiting, 2)
        steps.append("resumed")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    client = await aiohttp_client(app)
    async with client.ws_connect("/ws") as ws:
        await ws.receive(timeout=5)
    assert steps == ["free", "blocked", "resumed"]


# -- the Redis link (public API; its message is python-socketio AsyncRedisManager's) -----------------


async def test_the_redis_link_reads_batches_and_skips_its_own():
    link = RedisLink("redis://127.0.0.1:1/0")  # never connects here
    got: list = []
    batch = {"method": "emit", "event": BATCH_EVENT, "data": [["t1", 7, '2["e",{}]']], "namespace": "/"}
    other = json.dumps({"host_id": "another", **batch}).encode()
    mine = json.dumps({"host_id": link.host_id, **batch}).encode()
    for data in (other, mine, json.dumps({"host_id": "x", "method": "disconnect", "sid": "s"}).encode()):
        link._handle({"type": "message", "data": data}, got.extend)
    assert got == [("t1", 7, '2["e",{}]')]
    await link.aclose()
