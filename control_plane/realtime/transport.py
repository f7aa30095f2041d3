"""The websocket under engine.io, tuned for many small events (mechanics only, no policy).

engine.io's writer sends each queued packet with its own ``ws.send``; aiohttp turns each into its
own ``send()`` system call, and compresses each one when the client offered permessage-deflate
(browsers and socket.io-client do). For ~300-byte JSON events both cost more than the event itself.
:class:`CoalescingWebSocket`, installed as engine.io's websocket driver (it implements the driver
contract described in ``_compat.install_websocket_driver``):
- does not negotiate permessage-deflate;
- frames text packets itself (RFC 6455) and writes every packet queued in one loop iteration in ONE
  transport write (aiohttp writes its own frames, control frames and binary packets straight to
  the same transport, unbuffered: flushing ours first keeps the order);
- keeps backpressure: past ``HIGH_WATER`` bytes unsent it waits for the socket to drain, so a slow
  client's packets stay in engine.io's queue, where the relay's bound sees them;
- gives the socket's writer a cheaper ``poll`` (``_compat.FastPoll``).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiohttp import web

from control_plane.realtime import _compat

HIGH_WATER = 256 * 1024
# Each engine.io server's open websockets (closed together when the server shuts down).
_OPEN: weakref.WeakKeyDictionary[Any, set[CoalescingWebSocket]] = weakref.WeakKeyDictionary()

_FastPoll = _compat.FastPoll  # the name tests/realtime/test_publisher_pipeline.py imports


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final, uncompressed text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


class CoalescingWebSocket:
    """engine.io websocket driver on aiohttp, with coalesced writes and no compression."""

    def __init__(self, handler: Any, server: Any) -> None:
        self.handler = handler
        self.server = server
        self.environ: dict = {}
        self._ws: web.WebSocketResponse | None = None
        self._request: web.BaseRequest | None = None
        self._transport: asyncio.Transport | None = None
        self._frames: list[bytes] = []
        self._flush_scheduled = False

    async def __call__(self, environ: dict) -> web.WebSocketResponse:
        sock = _compat.socket_of_handler(self.handler)
        if sock is not None:
            _compat.replace_poll(sock, _compat.FastPoll(sock))
        request = environ["aiohttp.request"]
        ws = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await ws.prepare(request)
        self._ws, self._request, self._transport = ws, request, request.transport
        self.environ = environ
        open_here = _OPEN.setdefault(self.server, set())
        open_here.add(self)
        try:
            await self.handler(self)
        finally:
            open_here.discard(self)
        return ws

    def _open_transport(self) -> asyncio.Transport | None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        return transport

    async def send(self, message: str | bytes) -> None:
        transport = self._open_transport()
        if transport is None or not isinstance(message, str):
            self._flush()
            await self._send_by_aiohttp(message)
            return
        self._frames.append(text_frame(message.encode()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if transport.get_write_buffer_size() > HIGH_WATER:
            self._flush()
            assert self._request is not None
            await _compat.drain(self._request)

    async def _send_by_aiohttp(self, message: str | bytes) -> None:
        assert self._ws is not None
        if isinstance(message, bytes):
            await self._ws.send_bytes(message)
        else:
            await self._ws.send_str(message)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._frames:
            return
        data = b"".join(self._frames)
        self._frames.clear()
        transport = self._open_transport()
        if transport is not None:
            transport.write(data)

    async def wait(self) -> str | bytes:
        """The next message from the client; ``OSError`` once the connection is closed."""
        assert self._ws is not None
        data = (await self._ws.receive()).data
        if not isinstance(data, str | bytes):
            raise OSError()
        return data

    async def close(self) -> None:
        self._flush()
        if self._ws is not None:
            await self._ws.close()


async def close_all(eio_server: Any) -> int:
    """Closes every open websocket of ``eio_server`` with a close frame and no engine.io CLOSE packet:
    to the client the transport was lost, so it reconnects by itself (an engine.io CLOSE, or a
    Socket.IO disconnect, tells clients to stay away). Returns how many it closed."""
    sockets = list(_OPEN.get(eio_server, ()))
    if sockets:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return len(sockets)


def install(eio_server: Any) -> None:
    """Make an engine.io AsyncServer (aiohttp mode) use :class:`CoalescingWebSocket`."""
    _compat.install_websocket_driver(eio_server, CoalescingWebSocket)
