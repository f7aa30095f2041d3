"""The websocket under engine.io, tuned for many small events (mechanics only, no policy).

engine.io's writer sends each queued packet with its own ``ws.send``; aiohttp turns each into its
own ``send()`` system call, and compresses each one when the client offered permessage-deflate
(browsers and socket.io-client do). For ~300-byte JSON events both cost more than the event itself.
This wrapper (installed as engine.io's aiohttp websocket driver):
- does not negotiate permessage-deflate;
- frames text packets itself and writes every packet queued in one loop iteration in ONE transport
  write;
- keeps backpressure: past ``HIGH_WATER`` bytes unsent it waits for the socket to drain, so a slow
  client's packets stay in engine.io's queue, where the relay's bound sees them;
- gives the socket's writer a cheaper ``poll``: engine.io's wraps every wait for the next packet in
  ``asyncio.wait_for`` (a new task, two futures and a timer each time the writer wakes, about once
  per event at high rates); this one takes a queued packet without waiting, and waits under
  ``asyncio.timeout`` otherwise. Same contract: the packets queued, ``[]`` once closed, and
  ``QueueEmpty`` after ping_interval + ping_timeout without one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from engineio import exceptions as eio_exceptions
from engineio.async_drivers import aiohttp as eio_aiohttp

HIGH_WATER = 256 * 1024


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


class CoalescingWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """engine.io's aiohttp WebSocket wrapper, with coalesced writes and no compression."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._frames: list[bytes] = []
        self._flush_scheduled = False

    async def __call__(self, environ: dict) -> web.WebSocketResponse:
        sock = getattr(self.handler, "__self__", None)  # the engine.io socket being upgraded
        if sock is not None and hasattr(sock, "queue") and hasattr(sock, "server"):
            sock.poll = _FastPoll(sock)
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock

    def _transport(self) -> asyncio.Transport | None:
        writer = getattr(self._sock, "_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is None or transport.is_closing():
            return None
        return transport

    async def send(self, message: Any) -> None:
        transport = self._transport()
        if transport is None or not isinstance(message, str):
            self._flush()
            await super().send(message)
            return
        self._frames.append(text_frame(message.encode()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if transport.get_write_buffer_size() > HIGH_WATER:
            self._flush()
            await self._sock._writer.protocol._drain_helper()  # type: ignore[union-attr]

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._frames:
            return
        data = b"".join(self._frames)
        self._frames.clear()
        transport = self._transport()
        if transport is not None:
            transport.write(data)

    async def close(self) -> None:
        self._flush()
        await super().close()


class _FastPoll:
    """``AsyncSocket.poll`` without ``wait_for`` (see the module docstring)."""

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


def install(eio_server: Any) -> None:
    """Make an engine.io AsyncServer (aiohttp mode) use :class:`CoalescingWebSocket`."""
    eio_server._async = {**eio_server._async, "websocket": CoalescingWebSocket}
