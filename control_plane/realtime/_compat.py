"""Every use of python-socketio / python-engineio / aiohttp internals by the relay, in one place.

The relay is tuned below the libraries' public APIs (see ``transport.py``): it writes packets straight
into engine.io's per-connection queues, replaces engine.io's websocket driver and its writer's
``poll``, and cancels the ping tasks engine.io leaves behind. Each such access is a small named
function here, and ``tests/realtime/test_compat.py`` has one test per behaviour it relies on, run
against the installed versions: an upgrade that changes one fails a test, not production.

At import this module checks the installed versions against :data:`SUPPORTED`, the range these
functions were written and tested for, and raises :class:`UnsupportedLibrary` otherwise. To move to
a new release: install it, run ``tests/realtime``, adapt what fails here, then widen
:data:`SUPPORTED` together with the pins in ``pyproject.toml`` and regenerate the lock files.

Replaced by public API (no longer patched): the Redis link between nodes uses redis-py's pub/sub
(``pubsub.py``) instead of overriding ``AsyncRedisManager._listen``/``_handle_emit``/``_publish``; the
relay keeps its own index of connections per tenant instead of reading ``manager.rooms``; the
websocket writes go to ``request.transport`` (aiohttp's public property) instead of
``WebSocketResponse._writer.transport``; the websocket driver is a class of ours implementing
engine.io's driver contract, not a subclass of engine.io's aiohttp driver.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from importlib import metadata
from typing import Any

from aiohttp import web
from engineio import async_socket as eio_async_socket
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

# Installed distribution -> [lowest, first excluded) release; keep equal to pyproject.toml's pins.
SUPPORTED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "python-socketio": ((5, 18, 1), (5, 19)),
    "python-engineio": ((4, 15, 1), (4, 16)),
    "aiohttp": ((3, 9), (4,)),
}


class UnsupportedLibrary(ImportError):
    """An installed library is outside the range the relay's internals were verified for."""


def _release(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:  # 5.19.0rc1 -> (5, 19, 0)
            break
    return tuple(parts)


def check_versions(installed: Callable[[str], str] = metadata.version) -> None:
    """Raise :class:`UnsupportedLibrary` naming the first package outside :data:`SUPPORTED`."""
    for dist, (low, high) in SUPPORTED.items():
        try:
            version = installed(dist)
        except metadata.PackageNotFoundError:
            raise UnsupportedLibrary(f"control_plane.realtime needs {dist}, which is not installed") from None
        if not low <= _release(version) < high:
            wanted = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
            raise UnsupportedLibrary(
                f"control_plane.realtime was written for {dist}{wanted} but {dist} {version} is "
                f"installed; its use of {dist}'s internals (control_plane/realtime/_compat.py) is "
                "unverified there. Install the locked version (requirements/runtime.txt), or run "
                "tests/realtime against this one and widen _compat.SUPPORTED and pyproject.toml"
            )


check_versions()


# -- engine.io: the websocket driver ------------------------------------------------------------


def install_websocket_driver(eio_server: Any, driver: type) -> None:
    """Make an engine.io ``AsyncServer`` (aiohttp mode) upgrade connections with ``driver``.

    engine.io picks its websocket class from the private ``_async`` table of its async mode; it
    calls ``driver(handler, server)``, awaits ``driver_instance(environ)`` (which must return the
    aiohttp response) and, from ``handler``, ``send(str | bytes)``, ``wait()`` and ``close()``."""
    eio_server._async = {**eio_server._async, "websocket": driver}


def socket_of_handler(handler: Any) -> Any | None:
    """The engine.io socket a websocket driver was created for: engine.io passes the socket's
    bound ``_websocket_handler`` method as the handler."""
    sock = getattr(handler, "__self__", None)
    return sock if isinstance(sock, eio_async_socket.AsyncSocket) else None


def replace_poll(sock: Any, poll: Callable[[], Any]) -> None:
    """Make the socket's websocket writer wait for packets with ``poll`` (the writer looks up
    ``self.poll`` on every round, so an instance attribute replaces the method)."""
    sock.poll = poll


class FastPoll:
    """``AsyncSocket.poll`` without ``asyncio.wait_for``: engine.io's wraps every wait for the next
    packet in ``wait_for`` (a task, two futures and a timer each time the writer wakes, about once
    per event at high rates); this one takes queued packets without waiting, and waits under
    ``asyncio.timeout`` otherwise. Same contract: the packets queued, ``[]`` once closed (the close
    marker ``None`` stays queued), ``QueueEmpty`` after ping_interval + ping_timeout without one."""

    __slots__ = ("sock",)

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    async def __call__(self) -> list:
        sock = self.sock
        queue = sock.queue
        if queue.empty():
            try:
                async with asyncio.timeout(sock.server.ping_interval + sock.server.ping_timeout):
                    first = await queue.get()
            except (TimeoutError, asyncio.CancelledError):
                raise eio_exceptions.QueueEmpty() from None
        else:
            first = queue.get_nowait()
        queue.task_done()
        if first is None:
            return []
        packets = [first]
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets


# -- engine.io: a connection's send queue ----------------------------------------------------------

SENT, FULL, CLOSED = 0, 1, 2


def enqueue_message(sock: Any, text: str, limit: int) -> int:
    """Queue one engine.io MESSAGE packet (an encoded Socket.IO packet) for the socket's writer,
    without awaiting (the public ``AsyncServer.send`` awaits, checks pings and logs per packet).
    Returns :data:`SENT`, :data:`FULL` (``limit`` packets already waiting: nothing queued) or
    :data:`CLOSED`."""
    if sock.closed or sock.closing:
        return CLOSED
    queue = sock.queue
    if queue.qsize() >= limit:
        return FULL
    queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, text))
    return SENT


def backlog(sock: Any) -> int:
    """Packets waiting in the socket's send queue."""
    return sock.queue.qsize()


def engineio_socket(sio: Any, sid: str, namespace: str) -> Any | None:
    """The engine.io socket of a Socket.IO connection once its CONNECT packet is out (the manager
    marks it connected then), else None."""
    manager = sio.manager
    if not manager.is_connected(sid, namespace):
        return None
    eio_sid = manager.eio_sid_from_sid(sid, namespace)
    return sio.eio.sockets.get(eio_sid)


# -- engine.io: ping tasks -------------------------------------------------------------------------

_SEND_PING = eio_async_socket.AsyncSocket._send_ping
_ping_tasks: weakref.WeakKeyDictionary[Any, weakref.WeakSet[asyncio.Task]] = weakref.WeakKeyDictionary()


def track_ping_tasks(eio_server: Any) -> None:
    """Remember the ping task engine.io starts per connection (``AsyncSocket._send_ping``, through
    the server's public ``start_background_task``), which its ``shutdown()`` does not stop."""
    tasks: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()
    _ping_tasks[eio_server] = tasks
    start = eio_server.start_background_task

    def start_background_task(target: Any, *args: Any, **kwargs: Any) -> Any:
        task = start(target, *args, **kwargs)
        if getattr(target, "__func__", None) is _SEND_PING:
            tasks.add(task)
        return task

    eio_server.start_background_task = start_background_task


async def cancel_ping_tasks(eio_server: Any) -> None:
    """Cancel the server's pending ping tasks, so none outlives the app."""
    pending = [t for t in _ping_tasks.get(eio_server, ()) if not t.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


# -- aiohttp: backpressure on a websocket written to directly ----------------------------------------


async def drain(request: web.BaseRequest) -> None:
    """Wait until the connection's transport accepts writes again (aiohttp's protocol paused by
    asyncio's flow control), through the request's stream writer: ``BaseRequest.writer`` is
    undocumented, ``AbstractStreamWriter.drain`` is public."""
    await request.writer.drain()
