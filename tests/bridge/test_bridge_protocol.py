"""control_plane.bridge.protocol on its own: framing, decoding, pending requests."""

from __future__ import annotations

import asyncio
import json
import os

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


def fed(chunks: list[bytes], **kw) -> tuple[p.BridgeConnection, list[p.BridgeEvent]]:
    """A connection fed chunk by chunk (as BridgeStdoutProtocol does), recording its events."""
    events: list[p.BridgeEvent] = []
    conn = p.BridgeConnection(None, None, events.append, **kw)
    for chunk in chunks:
        conn.feed_data(chunk)
    return conn, events


STREAM = (
    b'{"event":"hello","ts":1,"data":{"pid":7}}\n'
    b'{"event":"heartbeat","ts":2,"data":{"uptime_ms":5,"rss_bytes":9,"seq":1,"state":"starting"}}\n'
    b"\n"
    b'{"event":"state","ts":3,"data":{"state":"qr"}}\n'
    b'{"event":"heartbeat","ts":4,"data":{"uptime_ms":6,"rss_bytes":9,"seq":2,"state":"qr"}}\n'
    b'{"event":"qr","ts":5,"data":{"qr":"x\\ny","attempt":1}}\n'
)


def test_feed_data_gives_the_same_events_wherever_the_chunks_split():
    _, whole = fed([STREAM])
    assert [(e.name, e.ts) for e in whole] == [
        ("hello", 1),
        ("heartbeat", 2),
        ("state", 3),
        ("heartbeat", 4),
        ("qr", 5),
    ]
    assert whole[4].data["qr"] == "x\ny" and whole[3].data["seq"] == 2
    for cut in range(1, len(STREAM)):
        _, events = fed([STREAM[:cut], STREAM[cut:]])
        assert events == whole, cut
    _, bytewise = fed([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert bytewise == whole


def test_heartbeats_go_to_on_heartbeat_undecoded_when_asked():
    events: list[p.BridgeEvent] = []
    beats: list[int] = []
    conn = p.BridgeConnection(None, None, events.append, on_heartbeat=lambda: beats.append(1))
    conn.feed_data(STREAM[:60])
    conn.feed_data(STREAM[60:])
    assert [e.name for e in events] == ["hello", "state", "qr"] and len(beats) == 2
    conn.feed_data(b'{"event":"heartbeat","ts":6,"data":{"seq":3}}\n')  # the idle case: one line, one chunk
    assert len(beats) == 3 and len(events) == 3
    # Only the exact prefix the bridge writes takes the fast path; anything else is decoded as before.
    conn.feed_data(b'{"ts":7,"event":"heartbeat","data":{}}\n{"event": "heartbeat", "ts": 8, "data": {}}\n')
    assert len(beats) == 3 and [e.ts for e in events[3:]] == [7, 8]


def test_feed_data_drops_over_long_lines_and_keeps_going():
    long_line = b'{"event":"message","ts":1,"data":{"body":"' + b"x" * 300 + b'"}}\n'
    ok = b'{"event":"state","ts":2,"data":{"state":"ready"}}\n'
    for chunks in (
        [long_line + ok],
        [long_line, ok],
        [long_line[:150], long_line[150:] + ok],
        [long_line[:-1], b"\n" + ok],
    ):
        _, events = fed(chunks, max_line_bytes=200)
        assert [e.name for e in events] == ["state"], chunks


async def test_responses_and_end_of_stream_through_the_pipe_protocol():
    """BridgeStdoutProtocol on a real pipe: answers resolve requests; the end of the pipe fails what is
    pending with one BridgeClosed and resolves ``closed``."""
    loop = asyncio.get_running_loop()
    cmd_r, cmd_w = os.pipe()
    out_r, out_w = os.pipe()
    events: list[p.BridgeEvent] = []
    beats: list[int] = []
    wt, wp = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(cmd_w, "wb"))
    conn = p.BridgeConnection(
        None, asyncio.StreamWriter(wt, wp, None, loop), events.append, on_heartbeat=lambda: beats.append(1)
    )
    _, proto = await loop.connect_read_pipe(lambda: p.BridgeStdoutProtocol(conn), os.fdopen(out_r, "rb"))
    try:
        first = asyncio.create_task(conn.request("get_state", timeout_s=5))
        second = asyncio.create_task(conn.request("get_state", timeout_s=5))
        await asyncio.sleep(0.05)
        sent = os.read(cmd_r, 4096).splitlines()
        assert [json.loads(line)["id"] for line in sent] == [1, 2]
        os.write(
            out_w,
            b'{"event":"heartbeat","ts":1,"data":{}}\n'
            b'{"id":1,"ok":true,"result":{"state":"qr"}}\n'
            b'{"event":"state","ts":2,"data":{"state":"qr"}}\n',
        )
        assert await asyncio.wait_for(first, 5) == {"state": "qr"}
        assert beats == [1] and [e.name for e in events] == ["state"]
        os.close(out_w)
        out_w = -1
        with pytest.raises(p.BridgeClosed):
            await asyncio.wait_for(second, 5)
        await asyncio.wait_for(proto.closed, 5)
        assert conn.closed and conn.pending_count == 0
        with pytest.raises(p.BridgeClosed):
            await conn.request("get_state")
    finally:
        wt.close()
        os.close(cmd_r)
        if out_w >= 0:
            os.close(out_w)
