"""A lean HTTP/1.1 keep-alive client for the Cloud API's hot path (sends and read marks).

The dispatcher makes one small JSON POST per message, thousands a second across tenants. aiohttp's
client spends ~100 µs of CPU per request on machinery this path does not use (request/response
objects, cookie jar, tracing hooks, multidicts, payload classes, per-request timeouts as tasks);
here a request is one prebuilt ``bytes`` write on a pooled connection and a small incremental
parser on the answer. Everything else the client does (media, templates, account) stays on aiohttp.

Scope, on purpose: one origin per pool (http or https), HTTP/1.1 with keep-alive, requests with a
``bytes`` body, answers framed by Content-Length, chunked transfer coding, or the connection's close;
no redirects, no compression (we never send Accept-Encoding), no 1xx other than skipped 100s.

Failures, so the caller can tell whether the request may have reached the server:

    ConnectFailed       no connection (refused, unreachable, TLS handshake failed): never sent
    ConnectTimeout      no connection in time: never sent
    ResponseTimeout     sent (at least partly), no complete answer in time: may have been processed
    Disconnected        the connection closed before a complete answer: may have been processed
    ProtocolError       an answer we cannot parse: may have been processed (the connection is dropped)

A connection is reused only if it was idle less than ``idle_s`` (servers drop idle keep-alive
connections; a request written to one that is being closed would end as "may have been processed").
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


class HTTPError(Exception):
    maybe_sent = True


class ConnectFailed(HTTPError):
    maybe_sent = False


class ConnectTimeout(HTTPError):
    maybe_sent = False


class ResponseTimeout(HTTPError):
    pass


class Disconnected(HTTPError):
    pass


class ProtocolError(HTTPError):
    pass


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case names; a repeated header keeps its last value
        self.body = body


class _Conn(asyncio.Protocol):
    """One connection: at most one request at a time (no pipelining)."""

    def __init__(self, pool: HTTP1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.length: int | None = None  # Content-Length
        self.chunked = False
        self.until_close = False
        self.keep_alive = True
        self.chunks: list[bytes] = []  # chunked: decoded so far
        self.head_only = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self._abort()  # an answer nobody asked for: the connection is out of step
            return
        self.buf += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.until_close and self.head_done:
                waiter.set_result(Response(self.status, self.headers, bytes(self.buf)))
            else:
                waiter.set_exception(
                    Disconnected(
                        f"connection closed before a complete answer ({type(exc).__name__ if exc else 'EOF'})"
                    )
                )
        self.pool._forget(self)

    # -- parsing ---------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self.buf
        while not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ProtocolError("response head too large")
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            lines = head.split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise ProtocolError(f"bad status line {lines[0][:80]!r}")
            status = int(code)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ProtocolError(f"bad header line {line[:80]!r}")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:  # 100 Continue and friends: an answer follows
                continue
            self.status, self.headers, self.head_done = status, headers, True
            connection = headers.get("connection", "").lower()
            self.keep_alive = ("close" not in connection) and (
                version == "HTTP/1.1" or "keep-alive" in connection
            )
            if self.head_only or status in (204, 304):
                self.length = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self.chunked = True
            elif "content-length" in headers:
                try:
                    self.length = int(headers["content-length"])
                except ValueError:
                    raise ProtocolError("bad Content-Length") from None
                if self.length < 0 or self.length > _MAX_BODY:
                    raise ProtocolError("bad Content-Length")
            else:
                self.until_close, self.keep_alive = True, False
        if self.length is not None:
            if len(buf) < self.length:
                return
            if len(buf) > self.length:
                raise ProtocolError("more bytes than the answer's Content-Length")
            body = bytes(buf)
            buf.clear()
            self._done(body)
        elif self.chunked:
            self._parse_chunks()
        elif len(buf) > _MAX_BODY:
            raise ProtocolError("answer too large")

    def _parse_chunks(self) -> None:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            size_text = bytes(buf[:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            if size == 0:  # the last chunk; then trailer lines (usually none) and an empty line
                end = buf.find(b"\r\n\r\n", eol)
                if end < 0:
                    return
                if len(buf) > end + 4:
                    raise ProtocolError("bytes after the last chunk")
                buf.clear()
                self._done(b"".join(self.chunks))
                return
            if len(buf) < eol + 2 + size + 2:
                return
            start = eol + 2
            self.chunks.append(bytes(buf[start : start + size]))
            if buf[start + size : start + size + 2] != b"\r\n":
                raise ProtocolError("bad chunk framing")
            del buf[: start + size + 2]
            if sum(map(len, self.chunks)) > _MAX_BODY:
                raise ProtocolError("answer too large")

    def _done(self, body: bytes) -> None:
        waiter, self.waiter = self.waiter, None
        response = Response(self.status, self.headers, body)
        keep = self.keep_alive
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if keep:
            self.pool._release(self)
        else:
            self._abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._abort()

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class HTTP1Pool:
    """Keep-alive connections to one origin. ``await pool.request(...)`` -> :class:`Response`."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 100,
        connect_timeout_s: float = 5.0,
        idle_s: float = 10.0,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported base URL {base_url!r}")
        self.host = parts.hostname
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        default_port = 443 if self.https else 80
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != default_port:
            host_header += f":{self.port}"
        self.host_line = f"Host: {host_header}\r\n".encode("ascii")
        self.prefix = parts.path.rstrip("/")
        self._ssl = (ssl_context or ssl_module.create_default_context()) if self.https else None
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        self._idle: deque[_Conn] = deque()
        self._all: set[_Conn] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: bytes = b"",
        body: bytes | None = None,
        timeout_s: float = 30.0,
    ) -> Response:
        """``target``: the path (and query) after the base URL's own path. ``headers``: ready
        ``Name: value\\r\\n`` lines (Host, Content-Length and Connection are added here)."""
        if self._closed:
            raise ConnectFailed("the HTTP pool is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._slots:
            conn = await self._connection(loop, deadline)
            head = [
                method.encode("ascii"),
                b" ",
                (self.prefix + target).encode("ascii"),
                b" HTTP/1.1\r\n",
                self.host_line,
                headers,
            ]
            if body is not None:
                head.append(b"Content-Length: %d\r\n" % len(body))
            head.append(b"\r\n")
            if body:
                head.append(body)
            waiter = loop.create_future()
            conn.waiter = waiter
            conn.head_only = method == "HEAD"
            conn.transport.write(b"".join(head))  # type: ignore[union-attr]
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                return await waiter
            except asyncio.CancelledError:
                conn._abort()  # an answer may still come: never reuse this connection
                raise
            except ResponseTimeout:
                conn._abort()
                raise
            finally:
                timer.cancel()

    async def _connection(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the likeliest to be alive
            if not conn.closed and now - conn.idle_since < self.idle_s and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
            conn._abort()
        conn = _Conn(self)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.https else None,
                ),
                max(0.001, min(self.connect_timeout_s, deadline - loop.time())),
            )
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {self.host}:{self.port} in time") from None
        except (OSError, ssl_module.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._all.add(conn)
        return conn

    def _release(self, conn: _Conn) -> None:
        if self._closed or conn.closed:
            conn._abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        await asyncio.sleep(0)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(ResponseTimeout("no complete answer in time"))


__all__: list[Any] = [
    "ConnectFailed",
    "ConnectTimeout",
    "Disconnected",
    "HTTP1Pool",
    "HTTPError",
    "ProtocolError",
    "Response",
    "ResponseTimeout",
]
