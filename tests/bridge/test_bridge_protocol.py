"""control_plane.bridge.protocol on its own: framing, decoding, pending requests."""

from __future__ import annotations

import asyncio
import json

import pytest

from control_plane.bridge import protocol as p


def test_encode_command_is_one_json_line():
    line = p.encode_command(7, "send", {"to": "1555", "text": "é"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"id": 7, "cmd": "send", "args": {"to": "1555", "text": "é"}}
    assert json.loads(p.encode_command(1, "get_state", None))["args"] == {}


def test_decode_line():
    ev = p.decode_line(b'{"event":"qr","ts":5,"data":{"qr":"x","attempt":1}}\n')
    assert ev == p.BridgeEvent(name="qr", data={"qr": "x", "attempt": 1}, ts=5)
    ok = p.decode_line(b'{"id":3,"ok":true,"result":{"a":1}}')
    assert ok == p.Response(id=3, ok=True, result={"a": 1})
    err = p.decode_line(b'{"id":4,"ok":false,"error":{"code":"not_ready","message":"m"}}')
    assert (err.ok, err.error_code, err.error_message) == (False, "not_ready", "m")
    for garbage in (b"nope", b"[1]", b'{"x":1}', b"\xff\xfe", b'{"event":"qr"}', b'{"id":"a","ok":true}'):
        with pytest.raises(p.ProtocolError):
            p.decode_line(garbage)


async def connection(lines: list[bytes], **kw) -> tuple[p.BridgeConnection, list[p.BridgeEvent]]:
    reader = asyncio.StreamReader()
    for line in lines:
        reader.feed_data(line)
    reader.feed_eof()
    events: list[p.BridgeEvent] = []
    return p.BridgeConnection(reader, None, events.append, **kw), events


async def test_read_loop_skips_garbage_and_over_long_lines():
    big = b'{"event":"message","ts":1,"data":{"body":"' + b"x" * 5000 + b'"}}\n'
    conn, events = await connection(
        [
            b'{"event":"hello","ts":1,"data":{}}\n',
            b"garbage\n",
            big,
            b'{"event":"state","ts":2,"data":{"state":"qr"}}\n{"event":"heartbeat",',
            b'"ts":3,"data":{"seq":1}}\n',
            b"\n",
        ],
        max_line_bytes=1000,
    )
    await conn.read_loop()
    assert [e.name for e in events] == ["hello", "state", "heartbeat"]
    assert conn.closed


async def test_long_lines_within_the_limit_arrive_whole():
    body = "y" * (3 * p.READ_CHUNK_BYTES + 17)
    line = json.dumps({"event": "message", "ts": 1, "data": {"body": body}}).encode() + b"\n"
    conn, events = await connection([line[i : i + 1000] for i in range(0, len(line), 1000)])
    await conn.read_loop()
    assert events[0].data["body"] == body


async def test_request_without_writer_or_after_close_raises_closed():
    conn, _ = await connection([])
    with pytest.raises(p.BridgeClosed):
        await conn.request("get_state")
    await conn.read_loop()
    with pytest.raises(p.BridgeClosed):
        await conn.request("get_state")
