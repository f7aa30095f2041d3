"""The lean HTTP/1.1 pool behind the Cloud API's sends: framing (Content-Length, chunked, close),
keep-alive reuse, and failures classed by whether the request may have reached the server."""

from __future__ import annotations

import asyncio
import socket

import pytest

from control_plane.providers import http1

pytestmark = pytest.mark.timeout(10)


class Server:
    """A scripted HTTP server on 127.0.0.1: ``answer(request_bytes) -> list of byte pieces`` (sent
    with a short pause between them), or None to close the connection without answering."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/base"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                pieces = self.answer(request)
                if pieces is None:
                    break
                for piece in pieces:
                    if piece == "close":
                        writer.close()
                        return
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                        continue
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> list[bytes]:
    return [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    ]


async def test_keep_alive_reuses_one_connection_and_frames_the_request():
    async with Server(lambda req: ok()) as srv:
        pool = http1.HTTP1Pool(srv.url)
        for i in range(5):
            resp = await pool.request(
                "POST", "/v23.0/1/messages", headers=b"Authorization: Bearer T\r\n", body=b'{"n":%d}' % i
            )
            assert resp.status == 200 and resp.body == b'{"ok":true}'
            assert resp.headers["content-type"] == "application/json"
        await pool.close()
    assert srv.connections == 1
    first = srv.requests[0]
    assert first.startswith(b"POST /base/v23.0/1/messages HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nAuthorization: Bearer T\r\n" in first
    assert b'\r\nContent-Length: 7\r\n\r\n{"n":0}' in first


async def test_answers_split_anywhere_chunked_and_100_continue():
    body = b'{"messages":[{"id":"wamid.X"}]}'
    whole = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"5;ext=1\r\n"
        + body[:5]
        + b"\r\n"
        + b"%x\r\n" % (len(body) - 5)
        + body[5:]
        + b"\r\n0\r\n\r\n"
    )
    async with Server(lambda req: [whole[i : i + 7] for i in range(0, len(whole), 7)]) as srv:
        pool = http1.HTTP1Pool(srv.url)
        for _ in range(2):  # and the connection is still good for the next request
            resp = await pool.request("POST", "/x", body=b"{}")
            assert resp.status == 200 and resp.body == body
        await pool.close()
    assert srv.connections == 1


async def test_connection_close_and_read_until_close():
    answers = iter(
        [
            [*ok(extra=b"Connection: close\r\n"), "close"],
            [b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n\r\nbusy", "close"],
            ok(),
        ]
    )
    async with Server(lambda req: next(answers)) as srv:
        pool = http1.HTTP1Pool(srv.url)
        assert (await pool.request("POST", "/a", body=b"{}")).status == 200
        resp = await pool.request("POST", "/b", body=b"{}")
        assert resp.status == 503 and resp.body == b"busy" and resp.headers["retry-after"] == "3"
        assert (await pool.request("POST", "/c", body=b"{}")).status == 200
        await pool.close()
    assert srv.connections == 3


async def test_failures_say_whether_the_request_may_have_been_processed():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    pool = http1.HTTP1Pool(f"http://127.0.0.1:{port}")
    with pytest.raises(http1.ConnectFailed) as refused:
        await pool.request("POST", "/x", body=b"{}")
    assert refused.value.maybe_sent is False

    async with Server(lambda req: None) as srv:  # reads the request, closes without an answer
        pool = http1.HTTP1Pool(srv.url)
        with pytest.raises(http1.Disconnected) as gone:
            await pool.request("POST", "/x", body=b"{}")
        assert gone.value.maybe_sent is True
    async with Server(lambda req: [5.0]) as srv:  # never answers
        pool = http1.HTTP1Pool(srv.url)
        with pytest.raises(http1.ResponseTimeout) as slow:
            await pool.request("POST", "/x", body=b"{}", timeout_s=0.2)
        assert slow.value.maybe_sent is True
        await pool.close()
    async with Server(lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}EXTRA"]) as srv:
        pool = http1.HTTP1Pool(srv.url)
        with pytest.raises(http1.ProtocolError):
            await pool.request("POST", "/x", body=b"{}")
        await pool.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused():
    answers = iter([[*ok(), 0.05, "close"], ok()])
    async with Server(lambda req: next(answers)) as srv:
        pool = http1.HTTP1Pool(srv.url)
        assert (await pool.request("POST", "/a", body=b"{}")).status == 200
        await asyncio.sleep(0.2)  # the server has closed the idle connection meanwhile
        assert (await pool.request("POST", "/b", body=b"{}")).status == 200
        await pool.close()
    assert srv.connections == 2


async def test_concurrent_requests_use_separate_connections_up_to_the_cap():
    async with Server(lambda req: [0.05, *ok()]) as srv:
        pool = http1.HTTP1Pool(srv.url, max_connections=3)
        results = await asyncio.gather(*(pool.request("POST", f"/{i}", body=b"{}") for i in range(9)))
        assert all(r.status == 200 for r in results)
        await pool.close()
    assert srv.connections == 3
